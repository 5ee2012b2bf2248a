"""The SGD loop shared by Phase 1 (initial training), Phase 4 (QK-only re-training) and the traditional baseline.

The three differ only in what the paper says differs: which module is trained and where a batch's activation
pattern comes from (`StepForward`). Same samples, same hyperparameters and the same batch order (`epoch_order`),
so a QK run and a traditional run from one checkpoint are a controlled comparison.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from skqk.atomic import atomic_write_text
from skqk.data import Dataset, batches, epoch_order, subset_indices
from skqk.pipeline import distributed
from skqk.pipeline.checkpoint import load_checkpoint, save_checkpoint
from skqk.pipeline.config import SGDConfig
from skqk.pipeline.prefetch import prefetched

# (images, sample indices) -> logits; with `fit`'s read_ahead, (images, what it read for the batch) -> logits
StepForward = Callable[[Tensor, Any], Tensor]
ReadAhead = Callable[[Tensor], Any]  # a batch's sample indices -> what its step needs (a QK step's masks)
# (epoch, trained module) -> extra metrics (Fig. 4: pattern flips); a hook with state_dict()/load_state_dict()
# (SK refresh: the SK in use) has that state saved in, and restored from, the run's resume state
EpochHook = Callable[[int, nn.Module], dict]
StepHook = Callable[[int, nn.Module], dict | None]  # (SGD steps so far, trained module) -> metrics at that step
EpochContext = Callable[[torch.optim.Optimizer], contextlib.AbstractContextManager]  # wraps an epoch's steps


# what the progress bar of a run calls it (default: its folder's name); an experiment names its cells, e.g.
# "lenet5 seed=0 n=1024 N=4096 qk", so a reproduction's bars say where it is
PROGRESS_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("progress_label", default=None)


@contextlib.contextmanager
def progress_label(label: str):
    """Runs inside this block name their progress bars `label`."""
    token = PROGRESS_LABEL.set(label)
    try:
        yield
    finally:
        PROGRESS_LABEL.reset(token)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    module: nn.Module  # the trained network, or the DecoupledModel of a QK run, after its last epoch
    history: list[dict]  # per-epoch metrics
    run_dir: Path
    patience: int = 0  # the run's early stopping: model.pt then holds its best epoch

    @property
    def saved(self) -> dict:
        """The metrics of the epoch ``model.pt`` holds: the best one with patience, else the last."""
        return self.history[-1 - epochs_since_best(self.history)] if self.patience else self.history[-1]


@torch.no_grad()
def evaluate(
    module: nn.Module,
    dataset: Dataset,
    limit: int = 0,
    batch_size: int = 1000,
    sharded: bool = False,
    indices: Tensor | None = None,
    progress: bool = False,
    forward: StepForward | None = None,
) -> dict[str, float]:
    """Validation metrics on the test split, in eval mode, on the module's device: accuracy and categorical
    cross-entropy (``val_accuracy``, ``val_loss``), or for regression the MSE of the standardised targets
    (``val_loss``, what training minimises) and RMSE, MAE and R² in the targets' own units.

    With `limit`, on a fixed subset of that many test samples (class-balanced for classification); with `indices`,
    on those test samples (e.g. one chunk's, for the accuracy matrix of incremental training). With `sharded`
    under torch.distributed, every rank evaluates its share and the sums are added up (every rank must call it).
    With `forward`, a batch's outputs are ``forward(images, test sample indices)`` (a QK run's estimator with the
    recorded validation patterns, `skqk.pipeline.validation`) instead of ``module(images)``.
    """
    was_training = module.training
    module.eval()
    device = next(module.parameters(), torch.empty(0)).device
    ctx = distributed.current() if sharded else distributed.Context()
    indices = validation_indices(dataset, limit) if indices is None else indices
    n = len(indices)
    regression = dataset.task == "regression"
    sums = torch.zeros(5, dtype=torch.float64)  # loss, correct | loss, squared error, absolute error, y, y²
    shown = tqdm(
        batches(dataset.test, dataset, ctx.share(indices), batch_size),
        desc="evaluating",
        total=math.ceil(len(ctx.share(indices)) / batch_size),
        disable=not progress,
        unit="batch",
        leave=False,
    )
    for x, y, idx in shown:
        x, y = x.to(device), y.to(device)
        outputs = (module(x) if forward is None else forward(x, idx)).float()
        sums += batch_sums(outputs, y, dataset).cpu() if regression else classification_sums(outputs, y).cpu()
    module.train(was_training)
    if ctx.is_distributed:
        sums = ctx.sum_over_ranks(sums).cpu()
    if not regression:
        return {"val_accuracy": sums[1].item() / n, "val_loss": sums[0].item() / n}
    return regression_metrics(sums, n)


def classification_sums(logits: Tensor, y: Tensor) -> Tensor:
    loss = F.cross_entropy(logits, y, reduction="sum").double()
    return torch.stack([loss, (logits.argmax(1) == y).sum().double(), *torch.zeros(3, dtype=torch.float64)])


def batch_sums(outputs: Tensor, z: Tensor, dataset: Dataset) -> Tensor:
    """A regression batch's sums: loss on the standardised targets `z`, errors and targets in their own units."""
    prediction = regression_output(outputs, z).double()
    z = z.double()
    scale, shift = dataset.target_std, dataset.target_mean
    error, y = (prediction - z) * scale, z * scale + shift
    return torch.stack(
        [(prediction - z).square().sum(), error.square().sum(), error.abs().sum(), y.sum(), y.square().sum()]
    )


def regression_metrics(sums: Tensor, n: int) -> dict[str, float]:
    loss, squared, absolute, y_sum, y_square = sums.tolist()
    total = y_square - y_sum**2 / n  # the targets' sum of squares about their mean
    r2 = 1 - squared / total if total > 0 else float("nan")
    return {"val_loss": loss / n, "val_rmse": math.sqrt(squared / n), "val_mae": absolute / n, "val_r2": r2}


def regression_output(outputs: Tensor, y: Tensor) -> Tensor:
    """A regression network's one output per sample, (B,); any other shape is refused in one line."""
    if outputs.shape not in ((len(y), 1), (len(y),)):
        raise ValueError(
            f"a regression network needs one output per sample, got outputs of shape {list(outputs.shape)}"
        )
    return outputs.reshape(len(y))


def task_loss(outputs: Tensor, y: Tensor, regression: bool, reduction: str = "mean") -> Tensor:
    """What training minimises: cross-entropy of the class logits, or the MSE of the standardised targets."""
    if regression:
        return F.mse_loss(regression_output(outputs, y), y, reduction=reduction)
    return F.cross_entropy(outputs, y, reduction=reduction)


def score(metrics: dict) -> float:
    """Higher is better: validation accuracy, or minus the validation loss for regression (early stopping)."""
    return metrics["val_accuracy"] if "val_accuracy" in metrics else -metrics["val_loss"]


def validation_indices(dataset: Dataset, limit: int = 0) -> Tensor:
    """All test samples, or a fixed subset of `limit` of them (class-balanced for classification)."""
    if limit <= 0 or limit >= len(dataset.test):
        return torch.arange(len(dataset.test))
    return subset_indices(dataset.test.labels, limit, seed=0, balanced=dataset.task == "classification")


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
    on_step: StepHook | None = None,
    epoch_context: EpochContext | None = None,
    read_ahead: ReadAhead | None = None,
    validate: Callable[[], dict] | None = None,
) -> list[dict]:
    """SGD over `indices` for `cfg.epochs`, checkpointing atomically after every epoch so a killed run resumes
    to bit-identical weights; writes ``model.pt`` (the final checkpoint) and ``metrics.jsonl``.

    `on_epoch` adds its metrics to the epoch's (and replaces ``val_accuracy`` and ``val_loss`` when it changed what
    `eval_module` computes); what `on_step` returns after an SGD step (numbered from 1 over the
    whole run) is kept, with the step number, in the epoch's ``steps`` (Fig. 4's "every k steps").
    `epoch_context(optimizer)` wraps the training steps of every epoch (dead-unit removal: `skqk.pipeline.prune`),
    so evaluation, checkpoints and resume see the full-size module. With `read_ahead`, what it returns for a
    batch's sample indices is read in a background thread while the step before trains (`skqk.pipeline.prefetch`)
    and handed to `step_forward` in place of the indices. `validate()` gives the epoch's validation metrics
    (default: `evaluate` of `eval_module`; a QK run's estimator alone: `skqk.pipeline.validation`). Inputs
    follow the layout the trainable's convolutions were put in (`memory_format_of`). With ``cfg.patience`` the
    run stops after that many epochs without a better validation accuracy, and ``model.pt`` holds the best epoch
    (``best.pt``).

    Under torch.distributed (`skqk.pipeline.distributed`), every rank computes its share of each global batch through
    the DDP wrapper of `trainable` that `step_forward` calls, so each step is the single-process step on the
    same global batch; only rank 0 writes the run folder, and on resume it hands its saved state to all ranks.
    """
    ctx = distributed.current()
    if ctx.is_distributed and not distributed.is_wrapped(trainable):
        raise ValueError("distributed training needs the trained module wrapped by skqk.pipeline.distributed.wrap")
    opt = make_optimizer(trainable, cfg)
    layout = memory_format_of(trainable)
    history: list[dict] = []
    patience = getattr(cfg, "patience", 0)
    steps_per_epoch = math.ceil(len(indices) / cfg.batch_size)
    state_path = run_dir / "resume.pt"
    state = ctx.on_main(lambda: load_checkpoint(state_path) if resume and state_path.exists() else None)
    if state is not None:
        trainable.load_state_dict(state["trainable"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], ctx.device)
        history = state["history"]
        if hasattr(on_epoch, "load_state_dict"):
            on_epoch.load_state_dict(state.get("hook", {}))
    autocast = precision_context(cfg.precision, ctx.device.type)
    regression = dataset.task == "regression"
    epochs = tqdm(
        range(len(history), cfg.epochs),
        desc=PROGRESS_LABEL.get() or run_dir.name,
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
        loss_sum, correct, steps = 0.0, 0, []
        order = epoch_order(indices, cfg.seed, epoch)
        if ctx.is_distributed:
            ctx.seed_epoch(cfg.seed, epoch)
        batch_list = ctx.batches(dataset.train, dataset, order, cfg.batch_size)
        with contextlib.ExitStack() as within:
            if epoch_context is not None:
                within.enter_context(epoch_context(opt))
            if read_ahead is not None:
                batch_list = within.enter_context(prefetched(lambda b: (*b[:2], read_ahead(b[2]), b[3]), batch_list))
            for step, (x, y, idx, global_size) in enumerate(batch_list, epoch * steps_per_epoch + 1):
                if ctx.device.type != "cpu":
                    x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                x = x.contiguous(memory_format=layout) if x.dim() == 4 else x
                with autocast:
                    logits = step_forward(x, idx)
                if ctx.is_distributed:
                    loss, batch_loss, batch_correct = sharded_loss(ctx, logits.float(), y, global_size, regression)
                else:
                    loss = batch_loss = task_loss(logits.float(), y, regression)
                if not torch.isfinite(batch_loss):
                    raise diverged(batch_loss.item(), epoch, cfg, state_path)
                sgd_step(opt, loss)
                if on_step is not None and (extra := on_step(step, trainable)):
                    steps.append({"step": step, **extra})
                loss_sum += batch_loss.item() * global_size
                if not regression:
                    correct += batch_correct if ctx.is_distributed else (logits.argmax(1) == y).sum().item()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / len(indices),
            **({} if regression else {"train_accuracy": correct / len(indices)}),
            **(validate() if validate is not None else evaluate(eval_module, dataset, cfg.eval_samples, sharded=True)),
            "seconds": time.perf_counter() - start,
            **({"steps": steps} if on_step is not None else {}),
        }
        check_finite(metrics, epoch, cfg, state_path)
        if on_epoch is not None:  # it may change what is saved (an SK refresh) and then measures it again
            metrics.update(on_epoch(epoch + 1, trainable))
            check_finite(metrics, epoch, cfg, state_path)
        history.append(metrics)
        shown = {"val_rmse": metrics["val_rmse"]} if regression else {"val_acc": metrics["val_accuracy"]}
        epochs.set_postfix(loss=f"{metrics['train_loss']:.3f}", **{k: f"{v:.3f}" for k, v in shown.items()})
        if patience and epochs_since_best(history) == 0:  # before resume.pt: a resumed run never lacks it
            ctx.on_main(save_checkpoint, run_dir / "best.pt", {**entry(), "epoch": epoch + 1})
        state = {
            "trainable": trainable.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
        }
        if hasattr(on_epoch, "state_dict"):
            state["hook"] = on_epoch.state_dict()
        if ctx.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(ctx.device)
        ctx.on_main(write_epoch, run_dir, history, state)
    final_entry = (lambda: load_checkpoint(run_dir / "best.pt")) if patience else entry
    # resume.pt stays: resuming a finished run then reloads its final state instead of retraining
    ctx.on_main(
        lambda: save_checkpoint(run_dir / "model.pt", {**final_entry(), "config": cfg.to_dict(), "history": history})
    )
    return history


def epochs_since_best(history: list[dict]) -> int:
    """Epochs after the first one with the best validation `score` (early stopping)."""
    scores = [score(m) for m in history]
    return len(scores) - 1 - scores.index(max(scores)) if scores else 0


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


def make_optimizer(trainable: nn.Module, cfg: SGDConfig, fused: bool = True) -> torch.optim.SGD:
    """Plain SGD, as in the paper, with the run's learning rate, momentum and weight decay; the fused kernel (one
    pass over each parameter, its gradient and momentum instead of three; fp32 throughout, the same update up to
    rounding), unless `fused` is False (torch's for-loop SGD on the CPU, measured as a benchmark lever)."""
    return torch.optim.SGD(
        trainable.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused or None
    )


def precision_context(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """Where a step's forward runs: bf16 autocast (the master weights stay fp32), or nothing for fp32."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def sgd_step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    """One optimiser step on `loss`: gradients set to None first, so nothing accumulates across steps."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def diverged(loss: float, epoch: int, cfg: SGDConfig, state_path: Path) -> TrainingDiverged:
    kept = (
        f"the last good checkpoint is kept in {state_path}"
        if state_path.exists()
        else "nothing was saved (it diverged in the first epoch)"
    )
    return TrainingDiverged(
        f"loss became {loss} in epoch {epoch + 1}; try a lower learning rate (--lr, now {cfg.lr}); {kept}"
    )


def check_finite(metrics: dict, epoch: int, cfg: SGDConfig, state_path: Path) -> None:
    """Never save a state whose outputs are already NaN/inf."""
    if not math.isfinite(metrics["val_loss"]):
        raise diverged(metrics["val_loss"], epoch, cfg, state_path)


def write_epoch(run_dir: Path, history: list[dict], state: dict) -> None:
    """The metrics so far and the resume state, each replaced atomically (rank 0 only in distributed runs)."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
    save_checkpoint(run_dir / "resume.pt", state)


def sharded_loss(
    ctx: distributed.Context, logits: Tensor, y: Tensor, global_size: int, regression: bool = False
) -> tuple[Tensor, Tensor, int]:
    """This rank's loss for DDP, and the global batch's mean loss and number of correct predictions.

    DDP averages the ranks' gradients; weighting each rank's summed loss by ``world_size / global_size`` makes
    that average the gradient of the mean loss over the whole global batch, also when the shares are unequal
    (a last batch not divisible by the number of ranks) or empty.
    """
    loss = task_loss(logits, y, regression, reduction="sum") * (ctx.world_size / global_size)
    correct = torch.zeros((), dtype=torch.float64) if regression else (logits.argmax(1) == y).sum().double()
    totals = ctx.sum_over_ranks(torch.stack([loss.detach().double(), correct.to(loss.device)]))
    return loss, totals[0] / ctx.world_size, int(totals[1])
