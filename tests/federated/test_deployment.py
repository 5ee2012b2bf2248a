"""A real Flower deployment on 127.0.0.1: a SuperLink and two SuperNodes started as subprocesses (insecure local
mode), `flwr run` of federated-app/. One round gives the very checkpoint the simulation gives for the same
seeds; a SuperNode killed mid-round leaves a global model made of the surviving client's training only. Both
start several Flower processes and wait for them, so they are slow tests (run before stopping)."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import tomllib
import torch
from pipeline_helpers import REPO, cli_env, make_dataset

from skqk.federated.config import FederatedConfig
from skqk.federated.task import client_model, client_shard, local_train, prepare_start, round_seed
from skqk.pipeline.checkpoint import load_model_checkpoint
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.train import train

APP = REPO / "federated-app"
BIN = Path(sys.executable).parent


def test_app_lists_every_setting_with_its_default():
    config = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = FederatedConfig()
    expected = {
        ("local-epochs" if f.name == "epochs" else f.name.replace("_", "-")): getattr(defaults, f.name)
        for f in fields(FederatedConfig)
        # fixed for federated runs; ridge's default None (λ by GCV) has no TOML form, the file names the key
        if f.name not in ("precision", "layout", "class_incremental", "chunk_samples", "ridge")
    }
    paths_and_trust = ("checkpoint", "out", "data-dir", "cache-dir", "trust-model")
    assert {k: v for k, v in config.items() if k not in paths_and_trust} == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Federation:
    """SuperLink + SuperNodes on 127.0.0.1 as subprocesses, stopped (SIGTERM, then waited for) on exit."""

    def __init__(self, root: Path, clients: int, data: tuple[Path, Path]):
        self.root, self.clients, self.data = root, clients, data
        # one thread per ClientApp, as in the simulation's workers: the same float sums, so the same bits
        self.env = {
            **cli_env(),
            "FLWR_HOME": str(root / "flwr-home"),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "OMP_NUM_THREADS": "1",
        }
        self.port = free_port()
        self.nodes: list[subprocess.Popen] = []

    def start(self, program: str, *args: str, log: str) -> subprocess.Popen:
        out = open(self.root / log, "wb")  # noqa: SIM115  (closed with the process)
        return subprocess.Popen([str(BIN / program), *args], stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def __enter__(self):
        home = self.root / "flwr-home"
        home.mkdir(parents=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self.link = self.start(
            "flower-superlink",
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
            log="superlink.log",
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            time.sleep(0.2)
        data_dir, cache_dir = self.data
        for i in range(self.clients):
            self.nodes.append(
                self.start(
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={self.clients} data-dir='{data_dir}' cache-dir='{cache_dir}'",
                    log=f"supernode{i}.log",
                )
            )
        return self

    def run(self, run_config: dict, background: bool = False):
        """`flwr run federated-app/` on this federation: its result, or the running process (`background`)."""
        overrides = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in run_config.items())
        command = [str(BIN / "flwr"), "run", str(APP), "local-deployment", "--stream", "--run-config", overrides]
        if background:
            return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=600)

    def __exit__(self, *exc):
        for process in [*self.nodes, self.link]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.nodes, self.link]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return False


@pytest.fixture(scope="module")
def setup(tmp_path_factory, flower):
    root = tmp_path_factory.mktemp("deploy")
    data_dir, cache_dir, data = make_dataset(root)
    train(TrainConfig(model="lenet5", samples=60, epochs=2, batch_size=20, lr=0.05), data, root / "pre", progress=False)
    return {"data": data, "dirs": (data_dir, cache_dir), "pre": root / "pre" / "model.pt"}


def run_config(setup, out: Path, **extra) -> dict:
    data_dir, cache_dir = setup["dirs"]
    return {
        "checkpoint": str(setup["pre"]),
        "out": str(out),
        "data-dir": str(data_dir),
        "cache-dir": str(cache_dir),
        "samples": 90,
        "clients": 2,
        "rounds": 1,
        "batch-size": 20,
        "lr": 0.05,
        **extra,
    }


@pytest.mark.slow
def test_deployment_round_equals_the_simulation(setup, tmp_path):
    from skqk.federated.simulation import run_federated

    with Federation(tmp_path, 2, setup["dirs"]) as federation:
        done = federation.run(run_config(setup, tmp_path / "deployed"))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for process in [*federation.nodes, federation.link]:
        assert process.returncode is not None  # stopped
    cfg = FederatedConfig(samples=90, clients=2, rounds=1, batch_size=20, lr=0.05)
    run_federated(cfg, setup["pre"], tmp_path / "simulated", *setup["dirs"], progress=False)
    deployed = load_model_checkpoint(tmp_path / "deployed" / "model.pt")
    simulated = load_model_checkpoint(tmp_path / "simulated" / "model.pt")
    for key in ("state_dict", "selector_state"):
        assert deployed[key].keys() == simulated[key].keys()
        for name, value in deployed[key].items():
            assert torch.equal(value, simulated[key][name]), name
    assert deployed["history"][1]["bytes_down"] == simulated["history"][1]["bytes_down"]


@pytest.mark.slow
def test_a_supernode_killed_mid_round_does_not_corrupt_the_global_model(setup, tmp_path):
    out = tmp_path / "run"
    # the timeout must cover a ClientApp's start on a loaded machine; the dead node's reply never comes
    config = run_config(setup, out, rounds=2, **{"min-clients": 1, "round-timeout": 60.0})
    with Federation(tmp_path, 2, setup["dirs"]) as federation:
        runner = federation.run(config, background=True)
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").exists():  # round 0 (the start) evaluated: round 1 is starting
            assert time.monotonic() < deadline and runner.poll() is None
            time.sleep(0.05)
        victim = federation.nodes[1]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        assert runner.wait(timeout=600) == 0
    history = load_model_checkpoint(out / "model.pt")["history"]
    assert [row["round"] for row in history] == [0, 1, 2]
    for row in history[1:]:
        assert row["kept"] and [c["partition-id"] for c in row["clients"]] == [0], history
    # the global model is exactly client 0's own training, round after round
    cfg = FederatedConfig(samples=90, clients=2, rounds=2, batch_size=20, lr=0.05, min_clients=1)
    begin = prepare_start(setup["pre"], cfg, setup["data"])
    qk = begin["qk"]
    for server_round in (1, 2):
        torch.manual_seed(round_seed(cfg.seed, 0, server_round))
        model = client_model("lenet5", begin["model_kwargs"], "qk", "live", qk, begin["sk"])
        local_train(model, setup["data"], client_shard(setup["data"], cfg, 0), cfg, server_round - 1, 1)
        qk = model.trainable.state_dict()
    final = load_model_checkpoint(out / "model.pt")["state_dict"]
    for name, value in final.items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value, qk[name], rtol=1e-6, atol=1e-7)
