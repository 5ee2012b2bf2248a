"""Running on several processes or machines with PyTorch's own engine: ``torchrun`` and DistributedDataParallel.

``skqk record``, ``skqk retrain`` and ``skqk train`` run unchanged under ``torchrun --nproc-per-node N``: the
command line calls `setup`, which notices torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), joins the
process group (nccl on GPUs, gloo on CPUs) and picks the device. The library then asks `current` for the
`Context` (rank, world size, device) and

* Phase 3 (`skqk.pipeline.record.record`): each rank records its share of the missing samples into chunk files of the
  one store, rank 0 commits all chunks at once;
* SGD (`skqk.pipeline.loop.fit`): each rank computes its slice of every global batch of the single-process order, the
  gradients are averaged by DDP, so a step equals the single-process step on the whole batch; only rank 0
  writes the run folder.

Without torchrun (or without calling `setup`) everything runs in one process, exactly as before.

Example (a library script started by ``torchrun --nproc-per-node 2 script.py``):
    >>> from skqk.pipeline import distributed
    >>> ctx = distributed.setup("auto")        # cuda:LOCAL_RANK with nccl, else the CPU with gloo
    >>> skqk.pipeline.retrain.retrain(cfg, "runs/a/model.pt", dataset, "runs/b", store="runs/patterns")
    >>> distributed.teardown()
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from skqk.data.dataset import Dataset, Split
from skqk.data.sampling import batch_indices, mixed_seed

DEVICES = ("auto", "cpu", "cuda")
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world_size` processes and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank on this machine: the GPU index
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes run folders, commits stores and prints results."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def share(self, indices: Tensor) -> Tensor:
        """This rank's contiguous share of `indices` (sizes differ by at most one, possibly empty)."""
        return indices.tensor_split(self.world_size)[self.rank] if self.is_distributed else indices

    def batches(
        self, data: Split, dataset: Dataset, order: Tensor, batch_size: int
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, int]]:
        """This rank's share of every global batch of `order`, as ``(x, y, idx, global batch size)``.

        The global batches are the single-process ones (``batches(data, dataset, order, batch_size)``); a rank's
        share may be empty when a batch has fewer samples than there are ranks.
        """
        for batch in batch_indices(order, batch_size):
            idx = self.share(batch)
            yield dataset.inputs(data, idx), dataset.targets(data, idx), idx, len(batch)

    def sum_over_ranks(self, values: Tensor) -> Tensor:
        """`values` summed over all ranks (returned as a new tensor; `values` itself unchanged)."""
        total = values.detach().to(self.device, copy=True)
        if self.is_distributed:
            dist.all_reduce(total)
        return total

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank (picklable objects)."""
        if not self.is_distributed:
            return [obj]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def on_main(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run `fn` on rank 0 only and hand its result (or its exception, raised again) to every rank.

        It is also a synchronisation point: no rank returns before rank 0 has finished `fn`.
        """
        if not self.is_distributed:
            return fn(*args, **kwargs)
        outcome: list = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome[0] = (True, fn(*args, **kwargs))
            except Exception as e:
                error = e
                outcome[0] = (False, e if _picklable(e) else RuntimeError(str(e)))
        dist.broadcast_object_list(outcome, src=0)
        ok, value = outcome[0]
        if error is not None:
            raise error
        if not ok:
            raise value
        return value

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Distributed runs only: reseed this rank's RNG (dropout) from (seed, epoch, rank), so ranks draw
        different masks and a resumed run draws the same ones as an uninterrupted run."""
        torch.manual_seed(mixed_seed(seed, epoch, self.rank))


_context: Context | None = None
_owns_group = False
_wrapped: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its environment variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(requested: str = "auto", local_rank: int = 0, announce: bool = True) -> torch.device:
    """The device to compute on: "cpu", or "cuda"/"auto" = GPU number `local_rank` if CUDA is available.

    "cuda" without CUDA falls back to the CPU with a one-line message on stderr (when `announce`).
    """
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"process with LOCAL_RANK {local_rank} has no GPU of its own ({count} found): start at most "
                f"{count} processes per machine (torchrun --nproc-per-node {count}) or pass --device cpu"
            )
        return torch.device("cuda", local_rank)
    if requested == "cuda" and announce:
        print("skqk: CUDA is not available; running on the CPU", file=sys.stderr)
    return torch.device("cpu")


def setup(device: str = "auto") -> Context:
    """Pick the device and, under torchrun with more than one process, join the process group (once).

    The backend is nccl on GPUs and gloo on CPUs; the rendezvous is torchrun's (``env://``). A process group
    the caller initialised already is used as it is.

    Returns:
        The `Context` that `current` returns from now on.
    """
    global _context, _owns_group
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    elif launched_by_torchrun():
        rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    else:
        rank, world_size, local_rank = 0, 1, 0
    resolved = resolve_device(device, local_rank, announce=rank == 0)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
        _owns_group = True
    _context = Context(rank, world_size, local_rank, resolved)
    return _context


def teardown() -> None:
    """Leave the process group `setup` joined, and forget the context (back to one CPU process)."""
    global _context, _owns_group
    if _owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _context, _owns_group = None, False


def exit_process(code: int) -> NoReturn:
    """End a process of a distributed run after `teardown`: flush the output, then exit at once.

    Works around torch 2.13 on gloo: DistributedDataParallel's reducer keeps the process group alive after
    ``destroy_process_group``, so its worker threads may still free a finished collective's tensors while the
    interpreter shuts down, which aborts a process that has finished its work (SIGABRT, "terminate called
    without an active exception"). Exiting without interpreter shutdown avoids that; all files are written.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def current() -> Context:
    """The context set by `setup`; else that of a process group initialised elsewhere; else one CPU process."""
    if _context is not None:
        return _context
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        rank = dist.get_rank()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return Context(rank, dist.get_world_size(), local_rank, device or torch.device("cpu"))
    return Context()


def wrap(module: nn.Module) -> nn.Module:
    """Move the module to be trained to the context's device, and wrap it in DistributedDataParallel when there
    are several ranks (forward through the returned module, optimise the original's parameters).

    On GPUs its BatchNorm layers become SyncBatchNorm (in place, same parameters and state_dict keys), so they
    normalise with the statistics of the global batch as one process would; gloo has no SyncBatchNorm, so on
    CPUs each rank uses the statistics of its own share.
    """
    ctx = current()
    if ctx.device.type != "cpu":
        module.to(ctx.device)
    if not ctx.is_distributed:
        return module
    if ctx.device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(module)  # replaces the children; a BatchNorm root stays as is
    _wrapped.add(module)
    return DistributedDataParallel(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def is_wrapped(module: nn.Module) -> bool:
    """Whether `wrap` put `module` under DistributedDataParallel (fit refuses to train unsynchronised copies)."""
    return module in _wrapped


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """Let local rank 0 of each machine run the block first (e.g. decode the dataset into the cache), then the
    other ranks (which then find the cache)."""
    ctx = current()
    if ctx.is_distributed and ctx.local_rank != 0:
        dist.barrier()
    yield
    if ctx.is_distributed and ctx.local_rank == 0:
        dist.barrier()


def _picklable(obj) -> bool:
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:
        return False
    return True
