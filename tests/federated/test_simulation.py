"""A federated run on Flower's simulation engine: one round equals the sample-weighted average of what each
client's own local training gives with the same seeds, the SK is shipped once and never changes, and the
global model is a normal checkpoint. On the tiny colour images with lenet5 (the simulated clients run in other
processes, which see the real zoo only)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from pipeline_helpers import (
    assert_one_line_error,
    cli_env,
    data_args,
    main_in_process,
    make_dataset,
    read_metrics,
    wait_for_epochs,
    write_colour_tree,
)

from skqk.federated.config import FederatedConfig
from skqk.federated.replies import largest_magnitude
from skqk.federated.task import client_model, client_shard, local_train, prepare_start, round_seed
from skqk.pipeline.checkpoint import load_for_evaluation, load_model_checkpoint
from skqk.pipeline.config import TrainConfig
from skqk.pipeline.rundir import RunDirError
from skqk.pipeline.train import train


@pytest.fixture(scope="module")
def start(tmp_path_factory, flower):
    root = tmp_path_factory.mktemp("federated")
    data_dir, cache_dir, data = make_dataset(root)
    train(TrainConfig(model="lenet5", samples=60, epochs=2, batch_size=20, lr=0.05), data, root / "pre", progress=False)
    return {"data": data, "dirs": (data_dir, cache_dir), "pre": root / "pre" / "model.pt"}


def by_hand(cfg: FederatedConfig, start: dict) -> dict[str, torch.Tensor]:
    """One round without Flower: every client trains from the start with its round seed; sample-weighted mean."""
    data = start["data"]
    begin = prepare_start(start["pre"], cfg, data)
    states, sizes = [], []
    for client in range(cfg.clients):
        torch.manual_seed(round_seed(cfg.seed, client, 1))
        model = client_model(begin["model"], begin["model_kwargs"], cfg.method, "live", begin["qk"], begin["sk"])
        shard = client_shard(data, cfg, client)
        local_train(model, data, shard, cfg, 0, cfg.epochs)
        states.append(model.trainable.state_dict())
        for name, value in states[-1].items():  # honest replies lie far inside the server's bound (1000×)
            assert largest_magnitude(value.numpy()) < 2 * (1 + largest_magnitude(begin["qk"][name].numpy()))
        sizes.append(len(shard))
    return {k: sum(s[k].double() * n for s, n in zip(states, sizes)) / sum(sizes) for k in states[0]}


def test_one_round_is_fedavg_of_the_clients_local_training(start, tmp_path):
    from skqk.federated.simulation import run_federated

    cfg = FederatedConfig(samples=90, clients=2, rounds=1, batch_size=20, lr=0.05, partition="dirichlet", alpha=1.0)
    history = run_federated(cfg, start["pre"], tmp_path / "run", *start["dirs"], progress=False)

    ckpt = load_model_checkpoint(tmp_path / "run" / "model.pt")
    expected = by_hand(cfg, start)
    assert ckpt["state_dict"].keys() == expected.keys()
    for key, value in ckpt["state_dict"].items():
        torch.testing.assert_close(value.double(), expected[key], rtol=1e-6, atol=1e-7)
    pre = load_model_checkpoint(start["pre"])
    assert not all(torch.equal(ckpt["state_dict"][k], pre["state_dict"][k]) for k in pre["state_dict"])
    # the SK is the pre-trained network's, unchanged
    for key, value in pre["state_dict"].items():
        assert torch.equal(ckpt["selector_state"][key], value)
    assert ckpt["kind"] == "decoupled" and ckpt["samples"] == 90

    assert [row["round"] for row in history] == [0, 1]
    row = history[1]
    assert row["kept"] and row["failures"] == 0
    assert sorted(c["partition-id"] for c in row["clients"]) == [0, 1]
    assert sum(c["num-examples"] for c in row["clients"]) == 90
    # lenet5 has no BatchNorm: round 1 ships SK + QK down, QK up, to and from each of the two clients
    params = sum(v.numel() for v in pre["state_dict"].values())
    assert row["bytes_down"] == 2 * row["bytes_up"]
    assert 2 * 4 * params <= row["bytes_up"] < 2 * 4 * params * 1.05
    assert [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == history
    with pytest.raises(RunDirError, match="already holds a finished federated run"):
        run_federated(cfg, start["pre"], tmp_path / "run", *start["dirs"], progress=False)
    module, _ = load_for_evaluation(tmp_path / "run" / "model.pt")
    accuracy = module(start["data"].normalize(start["data"].test.images)).argmax(1) == start["data"].test.labels
    assert abs(accuracy.float().mean().item() - history[1]["val_accuracy"]) < 1e-6


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--model", "vgg8"], "does not hold a vgg8"),
        (["--samples", "30", "--clients", "4", "--partition", "dirichlet"], "10 samples each"),
        (["--clients", "0"], "clients must be positive"),
        (["--method", "traditional", "--strategy", "fedavg", "--alpha", "-1"], "alpha must be positive"),
        (["--threads", "0"], "threads must be at least 1"),
        (["--strategy", "fedadam", "--server-lr", "nan"], "server_lr must be positive and finite"),
        (["--strategy", "fedprox", "--proximal-mu", "-1"], "proximal_mu must be non-negative"),
    ],
)
def test_bad_runs_are_refused_in_one_line_before_anything_starts(start, tmp_path, capsys, options, fragment):
    code, _, err = main_in_process(
        capsys,
        "federated",
        "--checkpoint",
        start["pre"],
        "--out",
        tmp_path / "run",
        *options,
        *data_args(*start["dirs"]),
    )
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists()


def test_a_node_with_other_data_replies_with_an_error_instead_of_training(start, tmp_path):
    """The ClientApp itself, without the engine: the task names the run's data fingerprint; a node whose data-dir
    holds other images (same classes, same size) refuses, one whose data is the run's trains."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from skqk.federated.client_app import client_app

    other = write_colour_tree(tmp_path / "other", seed=1)
    cfg = FederatedConfig(samples=90, clients=2, rounds=1, batch_size=20, lr=0.05)
    begin = prepare_start(start["pre"], cfg, start["data"])
    task = {k: begin[k] for k in ("model", "model_kwargs", "pooling", "data")}
    content = RecordDict(
        {
            "arrays": ArrayRecord(begin["qk"]),
            "statistics": ArrayRecord({}),
            "sk": ArrayRecord(begin["sk"]),
            "config": ConfigRecord({"skqk": json.dumps({**task, "config": cfg.to_dict()}), "server-round": 1}),
        }
    )
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    try:
        app = client_app(*map(str, start["dirs"]))
        replies = {}
        for name, data_dir in (("other", other), ("own", start["dirs"][0])):
            node = {"partition-id": 0, "num-partitions": 2, "data-dir": str(data_dir)}
            context = Context(run_id=1, node_id=5, node_config=node, state=RecordDict(), run_config={})
            message = Message(content=content, dst_node_id=5, message_type="train")
            replies[name] = app(message, context)
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved
    assert replies["other"].has_error()
    assert "this node's data" in replies["other"].error.reason and "is not the run's" in replies["other"].error.reason
    assert not replies["own"].has_error() and replies["own"].content["metrics"]["num-examples"] > 0


@pytest.mark.slow
def test_one_ctrl_c_during_a_round_exits_130_and_the_command_runs_again(start, tmp_path):
    """Ctrl-C reaches the whole foreground process group (skqk and Ray's processes) in a terminal; the run ends
    with exit status 130 and a hint instead of waiting out the round, and the same --out is then taken again."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "skqk.cli", "-q", "federated", "--checkpoint", str(start["pre"]), "--out"]
    command += [str(out), "--samples", "90", "--clients", "2", "--batch-size", "20", *data_args(*start["dirs"])]
    proc = subprocess.Popen(
        [*command, "--rounds", "500"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        start_new_session=True,  # its own process group, as a terminal's foreground job has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # also when the tests run in the background
    )
    try:
        wait_for_epochs(out, 2, proc, timeout=300)  # rows of rounds 0 and 1: the run is in a later round
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "skqk: interrupted (a federated run does not resume: rerun the same command to start it over in the same --out)"
    )
    assert not (out / "model.pt").exists()

    rerun = subprocess.run([*command, "--rounds", "1"], capture_output=True, text=True, env=cli_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert [row["round"] for row in read_metrics(out)] == [0, 1]  # started over, the interrupted rows removed
