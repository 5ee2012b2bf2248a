"""Splitting the training samples among federated clients: IID, or non-IID by a Dirichlet prior over classes.

flwr-datasets has both partitioners but works on Hugging Face datasets; skqk's data is in-memory tensors, so
they are written here, following flwr-datasets' `DirichletPartitioner` (Hsu et al. 2019, "Measuring the
effects of non-identical data distribution"): for every class, the share each client gets is drawn from
Dir(α, ..., α); small α gives each client a few dominant classes, large α approaches IID.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def iid(indices: Tensor, clients: int, seed: int = 0) -> list[Tensor]:
    """`indices` shuffled with `seed` and cut into `clients` shards whose sizes differ by at most one."""
    check_clients(indices, clients)
    generator = torch.Generator().manual_seed(seed)
    shuffled = indices[torch.randperm(len(indices), generator=generator)]
    return [shard.sort().values for shard in shuffled.tensor_split(clients)]


def dirichlet(
    indices: Tensor, labels: Tensor, clients: int, alpha: float, seed: int = 0, min_samples: int = 10
) -> list[Tensor]:
    """Each class's samples among `indices` split among the clients by shares drawn from Dir(α).

    The draw is repeated (with the same seeded generator) until every client holds at least `min_samples`
    samples, as flwr-datasets' `min_partition_size` does; a clear error if that does not happen in 100 draws.

    Args:
        indices: int64 sample indices into the split (the federated run's N samples).
        labels: int64 labels of the whole split.
        clients: K.
        alpha: concentration, > 0 (0.1: strongly non-IID; 1.0: mildly; 1000: nearly IID).
        seed: the draw.
        min_samples: the smallest shard accepted.

    Returns:
        `clients` sorted, disjoint index tensors whose union is `indices`.
    """
    check_clients(indices, clients)
    if not alpha > 0:
        raise ValueError(f"the Dirichlet alpha must be positive, got {alpha}")
    if clients * min_samples > len(indices):
        raise ValueError(f"{len(indices)} samples cannot give {clients} clients {min_samples} samples each")
    rng = np.random.default_rng(seed)
    by_class = [indices[labels[indices] == c] for c in labels[indices].unique()]
    by_class = [members[torch.from_numpy(rng.permutation(len(members)))] for members in by_class]
    for _ in range(100):
        shards: list[list[Tensor]] = [[] for _ in range(clients)]
        for members in by_class:
            shares = rng.dirichlet([alpha] * clients)
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64).tolist()
            for shard, part in zip(shards, torch.tensor_split(members, cuts)):
                shard.append(part)
        result = [torch.cat(parts).sort().values for parts in shards]
        if min(len(r) for r in result) >= min_samples:
            return result
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split of {len(indices)} samples gave each of {clients} clients "
        f"{min_samples} samples in 100 draws; use more samples, fewer clients or a larger alpha"
    )


def partition(
    indices: Tensor, labels: Tensor, clients: int, kind: str, alpha: float = 0.1, seed: int = 0
) -> list[Tensor]:
    """`iid` or `dirichlet` by name (`kind`), the form a run configuration names them in."""
    if kind == "iid":
        return iid(indices, clients, seed)
    if kind == "dirichlet":
        return dirichlet(indices, labels, clients, alpha, seed)
    raise ValueError(f"partition must be 'iid' or 'dirichlet', got {kind!r}")


def check_clients(indices: Tensor, clients: int) -> None:
    if not 0 < clients <= len(indices):
        raise ValueError(f"cannot split {len(indices)} samples among {clients} clients")
