"""Phase 1 (initial training), Phase 4 (QK-only re-training) and the traditional baseline: one SGD loop.

The three differ only in what the paper says differs: which module is trained and where a batch's activation
pattern comes from. Same samples, same hyperparameters and the same batch order (`epoch_order`), so a QK run
and a traditional run from one checkpoint are a controlled comparison.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from skqk import __version__, distributed, models
from skqk.atomic import atomic_write_text
from skqk.checkpoint import (
    CheckpointError,
    build_network,
    decoupled_entry,
    load_checkpoint,
    load_model_checkpoint,
    model_kwargs,
    network_entry,
    save_checkpoint,
)
from skqk.config import RetrainConfig, SGDConfig, TrainConfig
from skqk.data import Dataset, batches, epoch_order, subset_indices
from skqk.decoupled import DecoupledModel
from skqk.estimator import build_estimator
from skqk.patterns import Pattern
from skqk.prune import active_units, dead_units_removed, removal_report
from skqk.selector import build_selector
from skqk.store import PatternStore

StepForward = Callable[[Tensor, Tensor], Tensor]  # (images, sample indices) -> logits
EpochHook = Callable[[int, nn.Module], dict]  # (epoch, trained module) -> extra metrics (Fig. 4: pattern flips)
EpochContext = Callable[[torch.optim.Optimizer], contextlib.AbstractContextManager]  # wraps an epoch's steps


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunDirError(ValueError):
    """The output folder cannot be used (unwritable, or holds a finished run)."""


@dataclass
class RunResult:
    module: nn.Module  # the trained network, or the DecoupledModel of a QK run
    history: list[dict]  # per-epoch metrics
    run_dir: Path


@torch.no_grad()
def evaluate(
    module: nn.Module, dataset: Dataset, limit: int = 0, batch_size: int = 1000, sharded: bool = False
) -> dict[str, float]:
    """Accuracy and categorical cross-entropy on the validation (test) split, in eval mode, on the module's device.

    With `limit`, on a fixed class-balanced subset of that many test samples (the split is stored by class).
    With `sharded` under torch.distributed, every rank evaluates its share and the sums are added up (every
    rank must call it).
    """
    was_training = module.training
    module.eval()
    device = next(module.parameters(), torch.empty(0)).device
    ctx = distributed.current() if sharded else distributed.Context()
    indices = validation_indices(dataset, limit)
    n = len(indices)
    correct, loss_sum = 0, 0.0
    for x, y, _ in batches(dataset.test, dataset, ctx.share(indices), batch_size):
        x, y = x.to(device), y.to(device)
        logits = module(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    module.train(was_training)
    if ctx.is_distributed:
        loss_sum, correct = ctx.sum_over_ranks(torch.tensor([loss_sum, correct], dtype=torch.float64)).tolist()
    return {"val_accuracy": correct / n, "val_loss": loss_sum / n}


def validation_indices(dataset: Dataset, limit: int = 0) -> Tensor:
    """All test samples, or a fixed class-balanced subset of `limit` of them."""
    if limit <= 0 or limit >= len(dataset.test):
        return torch.arange(len(dataset.test))
    return subset_indices(dataset.test.labels, limit, seed=0, balanced=True)


def train(
    cfg: TrainConfig,
    dataset: Dataset,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    on_epoch: EpochHook | None = None,
) -> RunResult:
    """Phase 1: train zoo network `cfg.model` from scratch on the first `cfg.samples` samples.

    Example:
        >>> from skqk.train import train
        >>> result = train(TrainConfig(model="lenet5", samples=1024, epochs=200), dataset, "runs/a")
        >>> result.history[-1]["val_accuracy"]
    """
    indices = subset_indices(dataset.train.labels, cfg.samples, cfg.subset_seed, cfg.balanced)
    run_dir = distributed.current().on_main(prepare_run_dir, out, resume, cfg)
    kwargs = model_kwargs(dataset)
    torch.manual_seed(cfg.seed)
    network = models.build(cfg.model, **kwargs).to(memory_format=memory_format(cfg.layout, cfg.model))
    return fit_network(run_dir, network, cfg.model, kwargs, dataset, indices, cfg, resume, progress, on_epoch)


def retrain(
    cfg: RetrainConfig,
    checkpoint: str | os.PathLike,
    dataset: Dataset,
    out: str | os.PathLike,
    store: str | os.PathLike | None = None,
    pooling: str = "live",
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    """Phase 4 (``cfg.method == "qk"``) or traditional re-training from `checkpoint` on `cfg.samples` samples.

    A QK run keeps the SK of the checkpoint's network in a frozen selector and trains only the estimator,
    reading each batch's patterns from the pattern `store` (or computing them on the fly); its final
    checkpoint is a decoupled one. A checkpoint of an earlier QK run continues with the same SK.
    """
    # everything that can refuse the inputs runs before the run folder is created
    kwargs = model_kwargs(dataset)
    ckpt = load_model_checkpoint(checkpoint, fits=kwargs)
    indices = subset_indices(dataset.train.labels, cfg.samples, cfg.subset_seed, cfg.balanced)
    source = {"checkpoint_sha256": file_sha256(checkpoint), "store": None}
    if cfg.method == "traditional":
        if ckpt["kind"] != "network":
            raise CheckpointError(
                f"{checkpoint} is a QK (decoupled) checkpoint; traditional re-training needs a network checkpoint"
            )
        network = build_network(ckpt, path=str(checkpoint)).to(memory_format=memory_format(cfg.layout, ckpt["model"]))
        run_dir = distributed.current().on_main(prepare_run_dir, out, resume, cfg, source)
        torch.manual_seed(cfg.seed)
        return fit_network(run_dir, network, ckpt["model"], kwargs, dataset, indices, cfg, resume, progress)

    sk_key = "selector_state" if ckpt["kind"] == "decoupled" else "state_dict"
    pooling = ckpt.get("pooling", pooling)
    if store is not None and cfg.patterns == "store":
        pooling = PatternStore.open(store, verify=False).pooling
    selector = build_selector(build_network(ckpt, sk_key, str(checkpoint)).eval(), pooling)
    layout = memory_format(cfg.layout, ckpt["model"])
    selector.to(memory_format=layout)
    estimator = build_estimator(build_network(ckpt, path=str(checkpoint)), pooling).to(memory_format=layout)
    decoupled = DecoupledModel(selector, estimator)
    model = distributed.wrap(estimator)
    selector.to(next(estimator.parameters()).device)
    if cfg.patterns == "store":
        read = patterns_from_store(selector, store, indices)
        device = next(estimator.parameters()).device
        step = lambda x, idx: model(x, in_layout(read(idx).to(device), layout))  # noqa: E731
    else:
        read = None
        step = lambda x, idx: model(x, selector(x))  # noqa: E731
    removal = dead_unit_removal(cfg, estimator, selector, read, dataset, indices)
    source["store"] = selector.fingerprint if cfg.patterns == "store" else None
    run_dir = distributed.current().on_main(
        prepare_run_dir, out, resume, cfg, source, removal and {"removed_units": removal.report}
    )
    torch.manual_seed(cfg.seed)
    selector_state = ckpt[sk_key]
    history = fit(
        run_dir,
        estimator,
        step,
        decoupled,
        dataset,
        indices,
        cfg,
        lambda: decoupled_entry(ckpt["model"], kwargs, selector_state, decoupled),
        resume,
        progress,
        removal and removal.metrics,
        removal and removal.epoch,
    )
    return RunResult(decoupled, history, run_dir)


@dataclass
class DeadUnitRemoval:
    """Phase 4 without the units the SK proves dead for every training sample (`skqk.prune`), per epoch."""

    estimator: nn.Module
    active: dict[str, Tensor]
    report: dict[str, dict[str, int]]  # per site: units, dead, removed

    def epoch(self, optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager:
        if not any(r["removed"] for r in self.report.values()):  # a trained LeNet-5 has no dead unit
            return contextlib.nullcontext()
        return dead_units_removed(self.estimator, self.active, optimizer)

    def metrics(self, epoch: int, trainable: nn.Module) -> dict:
        return {"removed_units": {site: r["removed"] for site, r in self.report.items() if r["removed"]}}


def dead_unit_removal(cfg, estimator, selector, read, dataset: Dataset, indices: Tensor) -> DeadUnitRemoval | None:
    """What `cfg.prune` removes: units inactive in the patterns of every sample of `indices` (from the store, or
    the selector's on the fly). Off under torch.distributed: DDP holds the full-size parameters."""
    if not cfg.prune or distributed.current().is_distributed:
        return None
    with torch.no_grad():
        if read is not None:
            patterns = (read(idx) for idx in indices.split(1024))
        else:
            device = next(estimator.parameters()).device
            patterns = (selector(x.to(device)) for x, _, _ in batches(dataset.train, dataset, indices, 1024))
        active = {site: a.cpu() for site, a in active_units(patterns).items()}
    return DeadUnitRemoval(estimator, active, removal_report(estimator, active))


def fit_network(
    run_dir: Path,
    network: nn.Module,
    name: str,
    kwargs: dict,
    dataset: Dataset,
    indices: Tensor,
    cfg: SGDConfig,
    resume: bool,
    progress: bool,
    on_epoch: EpochHook | None = None,
) -> RunResult:
    """Traditional training of the whole network, ReLUs live (Phase 1, and the re-training baseline)."""
    model = distributed.wrap(network)  # itself in one process; DDP under torchrun
    entry = lambda: network_entry(name, kwargs, network)  # noqa: E731
    history = fit(
        run_dir, network, lambda x, idx: model(x), network, dataset, indices, cfg, entry, resume, progress, on_epoch
    )
    return RunResult(network, history, run_dir)


def patterns_from_store(selector, store, indices: Tensor) -> Callable[[Tensor], Pattern]:
    """The reader of each batch's patterns from the store recorded by this very selector (Phase 3)."""
    if store is None:
        raise ValueError("QK re-training from a pattern store needs --store (or use on-the-fly patterns)")
    opened = PatternStore.open(store, selector)
    missing = (~torch.isin(indices, opened.indices)).sum().item()
    if missing:
        raise ValueError(
            f"pattern store {store} lacks {missing} of the {len(indices)} samples: run `skqk record` "
            f"with the same checkpoint and --samples {len(indices)} first"
        )
    return opened.read


def fit(
    run_dir: Path,
    trainable: nn.Module,
    step_forward: StepForward,
    eval_module: nn.Module,
    dataset: Dataset,
    indices: Tensor,
    cfg: SGDConfig,
    entry: Callable[[], dict],
    resume: bool,
    progress: bool,
    on_epoch: EpochHook | None = None,
    epoch_context: EpochContext | None = None,
) -> list[dict]:
    """SGD over `indices` for `cfg.epochs`, checkpointing atomically after every epoch so a killed run resumes
    to bit-identical weights; writes ``model.pt`` (the final checkpoint) and ``metrics.jsonl``.

    `epoch_context(optimizer)` wraps the training steps of every epoch (dead-unit removal: `skqk.prune`), so
    evaluation, checkpoints and resume see the full-size module. With ``cfg.patience`` the run stops after that
    many epochs without a better validation accuracy, and ``model.pt`` holds the best epoch (``best.pt``).

    Under torch.distributed (`skqk.distributed`), every rank computes its share of each global batch through
    the DDP wrapper of `trainable` that `step_forward` calls, so each step is the single-process step on the
    same global batch; only rank 0 writes the run folder, and on resume it hands its saved state to all ranks.
    """
    ctx = distributed.current()
    if ctx.is_distributed and not distributed.is_wrapped(trainable):
        raise ValueError("distributed training needs the trained module wrapped by skqk.distributed.wrap")
    opt = sgd(trainable.parameters(), cfg)
    layout = memory_format_of(trainable)
    history: list[dict] = []
    patience = getattr(cfg, "patience", 0)
    state_path = run_dir / "resume.pt"
    state = ctx.on_main(lambda: load_checkpoint(state_path) if resume and state_path.exists() else None)
    if state is not None:
        trainable.load_state_dict(state["trainable"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], ctx.device)
        history = state["history"]
    autocast = (
        torch.autocast(ctx.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
    )
    epochs = tqdm(
        range(len(history), cfg.epochs),
        desc=run_dir.name,
        disable=not progress or not ctx.is_main,
        unit="epoch",
        initial=len(history),
        total=cfg.epochs,
    )
    for epoch in epochs:
        if patience and epochs_since_best(history) >= patience:
            break
        start = time.perf_counter()
        trainable.train()
        loss_sum, correct = 0.0, 0
        order = epoch_order(indices, cfg.seed, epoch)
        if ctx.is_distributed:
            ctx.seed_epoch(cfg.seed, epoch)
        with epoch_context(opt) if epoch_context is not None else contextlib.nullcontext():
            for x, y, idx, global_size in ctx.batches(dataset.train, dataset, order, cfg.batch_size):
                if ctx.device.type != "cpu":
                    x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                x = x.contiguous(memory_format=layout) if x.dim() == 4 else x
                with autocast:
                    logits = step_forward(x, idx)
                if ctx.is_distributed:
                    loss, batch_loss, batch_correct = sharded_loss(ctx, logits.float(), y, global_size)
                else:
                    loss = batch_loss = F.cross_entropy(logits.float(), y)
                if not torch.isfinite(batch_loss):
                    raise diverged(batch_loss.item(), epoch, cfg, state_path)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += batch_loss.item() * global_size
                correct += batch_correct if ctx.is_distributed else (logits.argmax(1) == y).sum().item()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / len(indices),
            "train_accuracy": correct / len(indices),
            **evaluate(eval_module, dataset, cfg.eval_samples, sharded=True),
            "seconds": time.perf_counter() - start,
        }
        if not math.isfinite(metrics["val_loss"]):  # never save a state whose outputs are already NaN/inf
            raise diverged(metrics["val_loss"], epoch, cfg, state_path)
        if on_epoch is not None:
            metrics.update(on_epoch(epoch + 1, trainable))
        history.append(metrics)
        epochs.set_postfix(loss=f"{metrics['train_loss']:.3f}", val_acc=f"{metrics['val_accuracy']:.3f}")
        if patience and epochs_since_best(history) == 0:  # before resume.pt: a resumed run never lacks it
            ctx.on_main(save_checkpoint, run_dir / "best.pt", {**entry(), "epoch": epoch + 1})
        state = {
            "trainable": trainable.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
        }
        if ctx.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(ctx.device)
        ctx.on_main(write_epoch, run_dir, history, state)
    final_entry = (lambda: load_checkpoint(run_dir / "best.pt")) if patience else entry
    # resume.pt stays: resuming a finished run then reloads its final state instead of retraining
    ctx.on_main(
        lambda: save_checkpoint(run_dir / "model.pt", {**final_entry(), "config": cfg.to_dict(), "history": history})
    )
    return history


CHANNELS_LAST_PAYS = {"lenet5", "vgg8"}  # layout="auto": measured in docs/benchmarks.md (not for AlexNet)


def memory_format(layout: str, model: str) -> torch.memory_format:
    """The activation layout of a run: channels-last (NHWC) where `layout` asks for it, or for "auto" where the
    benchmark shows it pays on that zoo model; an exact lever (fp32, same sums up to rounding)."""
    if layout == "channels_last" or (layout == "auto" and model in CHANNELS_LAST_PAYS):
        return torch.channels_last
    return torch.contiguous_format


def memory_format_of(module: nn.Module) -> torch.memory_format:
    """channels_last if `module`'s convolution weights were put in it, so its inputs follow."""
    for p in module.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format


def in_layout(pattern: Pattern, layout: torch.memory_format) -> Pattern:
    """`pattern` with its per-position states in `layout`, so a gate multiplies tensors of one layout."""
    if layout == torch.contiguous_format:
        return pattern
    return Pattern({s: t.contiguous(memory_format=layout) if t.dim() == 4 else t for s, t in pattern.items()})


def sgd(params, cfg: SGDConfig) -> torch.optim.SGD:
    """The optimiser of every training phase: plain SGD, the fused kernel (one pass over each parameter, its
    gradient and momentum instead of three; fp32 throughout, same update up to rounding)."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)


def epochs_since_best(history: list[dict]) -> int:
    """Epochs after the first one with the best validation accuracy (early stopping)."""
    accuracies = [m["val_accuracy"] for m in history]
    return len(accuracies) - 1 - accuracies.index(max(accuracies)) if accuracies else 0


def diverged(loss: float, epoch: int, cfg: SGDConfig, state_path: Path) -> TrainingDiverged:
    kept = (
        f"the last good checkpoint is kept in {state_path}"
        if state_path.exists()
        else "nothing was saved (it diverged in the first epoch)"
    )
    return TrainingDiverged(
        f"loss became {loss} in epoch {epoch + 1}; try a lower learning rate (--lr, now {cfg.lr}); {kept}"
    )


def write_epoch(run_dir: Path, history: list[dict], state: dict) -> None:
    """The metrics so far and the resume state, each replaced atomically (rank 0 only in distributed runs)."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
    save_checkpoint(run_dir / "resume.pt", state)


def sharded_loss(ctx: distributed.Context, logits: Tensor, y: Tensor, global_size: int) -> tuple[Tensor, Tensor, int]:
    """This rank's loss for DDP, and the global batch's mean loss and number of correct predictions.

    DDP averages the ranks' gradients; weighting each rank's summed loss by ``world_size / global_size`` makes
    that average the gradient of the mean loss over the whole global batch, also when the shares are unequal
    (a last batch not divisible by the number of ranks) or empty.
    """
    loss = F.cross_entropy(logits, y, reduction="sum") * (ctx.world_size / global_size)
    totals = ctx.sum_over_ranks(torch.stack([loss.detach().double(), (logits.argmax(1) == y).sum().double()]))
    return loss, totals[0] / ctx.world_size, int(totals[1])


def prepare_run_dir(
    out: str | os.PathLike, resume: bool, cfg: SGDConfig, source: dict | None = None, extra: dict | None = None
) -> Path:
    """Create the run folder, check it is writable, and record the resolved config, what the run starts from
    (`source`: checkpoint and store identity), the code version and `extra` facts of the run (units removed);
    `--resume` must match config and source."""
    run_dir = Path(out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot write to output folder {run_dir}: {e.strerror}") from None
    if not resume and ((run_dir / "model.pt").exists() or (run_dir / "resume.pt").exists()):
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and (run_dir / "config.json").exists():
        saved = json.loads((run_dir / "config.json").read_text())
        if saved["config"] != cfg.to_dict():
            raise RunDirError(f"--resume with a different configuration than the run in {run_dir} was started with")
        if saved.get("source") != source:
            raise RunDirError(f"--resume from another checkpoint or store than the run in {run_dir} started from")
    record = {"config": cfg.to_dict(), "kind": type(cfg).__name__, "source": source, "code_version": code_version()}
    record.update(extra or {})
    atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2))
    return run_dir


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """Package version plus the git commit when run from a checkout, saved beside every result."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
