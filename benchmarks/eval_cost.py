"""The evaluation a re-training runs after every epoch, timed side by side: the traditional network, QK with the
live selector (before issue 21) and QK from the recorded validation patterns (`skqk.pipeline.validation`, what
`skqk retrain --method qk` runs now), in interleaved rounds of a rotating order; ratios to the traditional one.

Usage: ``python benchmarks/eval_cost.py --checkpoint RUN/model.pt [--eval-samples 0] [--rounds 5]``.
"""

import argparse
import statistics
import time

import torch

from skqk.data import load_dataset
from skqk.decoupled import DecoupledModel
from skqk.estimator import mask_sites
from skqk.fuse import relu_gates_in_place
from skqk.pipeline.checkpoint import build_network, load_estimator, load_model_checkpoint, load_selector, model_kwargs
from skqk.pipeline.loop import evaluate, memory_format
from skqk.pipeline.retrain import for_step
from skqk.pipeline.validation import RecordedValidation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model.pt of a pre-trained network run")
    parser.add_argument("--eval-samples", type=int, default=0, help="validation samples (default 0: all)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args()
    dataset = load_dataset(progress=False)
    ckpt = load_model_checkpoint(args.checkpoint, fits=model_kwargs(dataset))
    layout = memory_format("auto", ckpt["model"])  # as retrain
    network = build_network(ckpt, path=args.checkpoint).to(memory_format=layout)
    selector = load_selector(ckpt, "live", args.checkpoint).to(memory_format=layout)
    estimator = load_estimator(ckpt, "live", args.checkpoint).to(memory_format=layout)
    relu_gates_in_place(estimator.net)
    decoupled = DecoupledModel(selector, estimator)
    masks = mask_sites(estimator)
    recorded = RecordedValidation(
        decoupled, dataset, args.eval_samples, lambda p: for_step(p, masks, torch.float32, layout)
    )
    start = time.perf_counter()
    first = recorded()  # records the patterns, once
    print(f"first evaluation from recorded patterns (recording included): {time.perf_counter() - start:.2f} s")
    assert first == evaluate(decoupled, dataset, args.eval_samples), "recorded patterns gave other metrics"
    arms = {
        "traditional": lambda: evaluate(network, dataset, args.eval_samples),
        "qk_live_selector": lambda: evaluate(decoupled, dataset, args.eval_samples),
        "qk_recorded": recorded,
    }
    names, times = list(arms), {name: [] for name in arms}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - start)
    for name in names:
        ratios = [a / b for a, b in zip(times[name], times["traditional"])]
        print(
            f"{name}: median {statistics.median(times[name]):.3f} s, / traditional {statistics.median(ratios):.3f} "
            f"[{min(ratios):.3f}–{max(ratios):.3f}]"
        )


if __name__ == "__main__":
    main()
