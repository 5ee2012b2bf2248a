"""The examples run as written, and the re-training loop on user data learns."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_retraining_loop_on_own_data_runs_and_both_methods_improve_on_the_pretrained_net(tmp_path):
    rmse = load("retrain_own_data").main(tmp_path, n=128, n_plus_m=512, epochs=4, progress=False)
    assert rmse["qk"] < rmse["pre-trained"] and rmse["traditional"] < rmse["pre-trained"]
