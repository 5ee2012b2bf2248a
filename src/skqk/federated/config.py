"""The configuration of a federated re-training run: one dataclass, the CLI overrides its fields.

Local training uses the same SGD settings as `skqk retrain` (`SGDConfig`); `epochs` is the number of local
epochs per round (E). The defaults of the federated fields are ours (the paper has no federated experiment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from skqk.pipeline.config import SGDConfig

STRATEGIES = ("fedavg", "fedprox", "fedadam")


@dataclass
class FederatedConfig(SGDConfig):
    """K clients re-train copies of one pre-trained network on their own shards for R rounds of E epochs."""

    epochs: int = 1  # E: local epochs per round
    samples: int = 8192  # N: the first N samples of the seeded permutation, split among the clients
    clients: int = 4  # K
    rounds: int = 20  # R
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.1  # Dirichlet concentration (partition "dirichlet"): 0.1 strongly non-IID, 1.0 mildly
    partition_seed: int = 0  # which split of the N samples
    method: Literal["qk", "traditional"] = "qk"  # qk: shared frozen SK, clients train the QK; traditional: FedAvg
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"  # Flower's strategy aggregating the parameters
    proximal_mu: float = 0.01  # FedProx's proximal term weight
    server_lr: float = 0.1  # FedAdam's server learning rate (Flower's default eta)
    min_clients: int = 0  # clients a round needs (0 = all K); fewer replies than this and the round is kept out
    round_timeout: float = 600.0  # seconds the server waits for a round's replies

    def __post_init__(self):
        super().__post_init__()
        for name in ("samples", "clients", "rounds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.partition not in ("iid", "dirichlet"):
            raise ValueError(f"partition must be 'iid' or 'dirichlet', got {self.partition!r}")
        if not 0 < self.alpha < math.inf:  # comparisons with NaN are false, so NaN is refused too
            raise ValueError(f"alpha must be positive and finite, got {self.alpha}")
        if self.method not in ("qk", "traditional"):
            raise ValueError(f"method must be 'qk' or 'traditional', got {self.method!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not 0 <= self.proximal_mu < math.inf:
            raise ValueError(f"proximal_mu must be non-negative and finite, got {self.proximal_mu}")
        if not 0 < self.server_lr < math.inf:
            raise ValueError(f"server_lr must be positive and finite, got {self.server_lr}")
        if not 0 <= self.min_clients <= self.clients:
            raise ValueError(f"min_clients must lie in [0, clients={self.clients}], got {self.min_clients}")
        if self.class_incremental:
            raise ValueError(
                "federated clients split the random sample order (the class-incremental one is not supported)"
            )
        if self.precision != "fp32":
            raise ValueError("federated clients train in fp32 (precision bf16 is not supported here)")
        if self.layout != "auto":
            raise ValueError("federated clients train in the contiguous layout (--layout is not supported here)")
        if not 0 < self.round_timeout < math.inf:
            raise ValueError(f"round_timeout must be positive and finite, got {self.round_timeout}")

    @classmethod
    def from_dict(cls, given: dict) -> FederatedConfig:
        """The configuration a message or a run config carries (other keys, e.g. paths, are not fields)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in given.items() if k in names})

    @property
    def required_clients(self) -> int:
        return self.min_clients or self.clients
