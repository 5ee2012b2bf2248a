"""Everything around the paper's objects that turns them into runs: configuration, checkpoints, run folders and
their provenance, the SGD loop, Phase 1 (`train`), Phase 3 (`record`), Phase 4 and its baseline (`retrain`),
torch.distributed, and the re-training levers (`prune`: exact dead-unit removal, `prefetch`: background pattern
reads)."""
