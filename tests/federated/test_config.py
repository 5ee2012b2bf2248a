"""A federated run's settings are refused up front, in one line each, when no run could use them: a NaN or
non-positive FedAdam server learning rate, a negative or NaN FedProx weight, zero simulated clients at a time
(Ray would wait forever for a CPU), and the simulation's Ray listens on 127.0.0.1 only."""

import math
import subprocess
import sys

import pytest
from pipeline_helpers import cli_env

from skqk.federated.config import FederatedConfig
from skqk.federated.simulation import backend_config


@pytest.mark.parametrize(
    "field, value",
    [
        ("server_lr", math.nan),
        ("server_lr", 0.0),
        ("server_lr", -0.1),
        ("server_lr", math.inf),
        ("proximal_mu", -0.01),
        ("proximal_mu", math.nan),
        ("proximal_mu", math.inf),
        ("alpha", math.inf),
        ("round_timeout", math.inf),
    ],
)
def test_settings_no_run_can_use_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        FederatedConfig(**{field: value})


def test_the_paper_free_defaults_and_a_zero_proximal_weight_are_accepted():
    FederatedConfig(proximal_mu=0.0)  # FedProx with mu 0 is FedAvg: allowed


@pytest.mark.parametrize("threads", [0, -1])
def test_zero_threads_is_refused_before_ray_starts(threads):
    with pytest.raises(ValueError, match="threads must be at least 1"):
        backend_config(threads, progress=False)


def fresh_python(code: str) -> subprocess.CompletedProcess:
    """`code` in a new interpreter whose environment does not hold the switch already (an earlier run here sets it)."""
    env = {k: v for k, v in cli_env().items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_ray_listens_on_loopback(flower):
    """Ray's node address (the one every one of its servers listens on) is 127.0.0.1 once the simulation has set
    Ray up, also on a machine with a LAN address; checked in a fresh process, since Ray reads it at import."""
    probe = (
        "from skqk.federated.simulation import bind_ray_to_loopback; bind_ray_to_loopback(); "
        "from ray._private import services; print(services.get_node_ip_address())"
    )
    out = fresh_python(probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "127.0.0.1"


def test_a_ray_imported_before_cannot_be_rebound_and_says_so(flower):
    out = fresh_python("import ray; from skqk.federated.simulation import bind_ray_to_loopback; bind_ray_to_loopback()")
    assert out.returncode != 0 and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in out.stderr
