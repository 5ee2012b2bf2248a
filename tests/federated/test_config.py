"""A federated run's settings are refused up front, in one line each, when no run could use them: a NaN or
non-positive FedAdam server learning rate, a negative or NaN FedProx weight, zero simulated clients at a time
(Ray would wait forever for a CPU); the simulation's Ray listens on 127.0.0.1 only; after a Ctrl-C the
server stops waiting and the same command can be run again."""

import json
import math
import subprocess
import sys
import threading
import time

import pytest
from pipeline_helpers import cli_env

from skqk.federated.config import FederatedConfig
from skqk.federated.simulation import RunStopped, backend_config, stop_with
from skqk.federated.task import prepare_federated_dir
from skqk.pipeline.rundir import RunDirError


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


def test_an_interrupted_run_is_started_over_and_a_finished_one_refused(tmp_path):
    """A federated run does not resume: the folder of an interrupted one (config.json and metrics.jsonl, no
    model.pt) is taken and its rows removed, so the interrupted command can be run again as it was."""
    cfg = FederatedConfig()
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"round": 0}\n')
    assert prepare_federated_dir(out, cfg, {}, "live") == out
    assert not (out / "metrics.jsonl").exists()
    assert json.loads((out / "config.json").read_text())["config"] == cfg.to_dict()
    (out / "model.pt").write_bytes(b"finished")
    with pytest.raises(RunDirError, match="already holds a finished federated run"):
        prepare_federated_dir(out, cfg, {}, "live")
    assert (out / "model.pt").read_bytes() == b"finished"


class PollingGrid:
    """Flower's in-memory grid in small: it waits for replies by polling `pull_messages` until the timeout."""

    def get_node_ids(self):
        return [1]

    def push_messages(self, messages):
        return [1]

    def pull_messages(self, ids):
        return []

    def send_and_receive(self, messages, *, timeout=None):
        ids = self.push_messages(messages)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.pull_messages(ids)
            time.sleep(0.01)
        return []


def test_a_stopped_simulation_ends_the_servers_wait_for_replies():
    """After a Ctrl-C the ServerApp's thread, which the process waits for before it exits, stops waiting at once
    instead of at the end of the round timeout."""
    grid, stop = PollingGrid(), threading.Event()
    stop_with(grid, stop)
    assert grid.get_node_ids() == [1]
    threading.Timer(0.2, stop.set).start()
    began = time.monotonic()
    with pytest.raises(RunStopped):
        grid.send_and_receive([], timeout=600)
    assert time.monotonic() - began < 30
    with pytest.raises(RunStopped):
        grid.get_node_ids()  # FedAvg's wait for nodes to connect ends too
