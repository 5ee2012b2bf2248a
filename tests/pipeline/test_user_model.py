"""`--model package.module:callable` with `--model-kwargs`: trained, then recorded, re-trained and evaluated from
the checkpoint with the same --model (its code runs only when the user names it; the kwargs come from the
checkpoint), with one-line errors when the import or the call fails."""

from pathlib import Path

import pytest
from pipeline_helpers import assert_one_line_error, data_args, main_in_process, make_dataset, snapshot

from skqk.pipeline.checkpoint import load_checkpoint

SGD = ["--epochs", "1", "--batch-size", "20", "--lr", "0.05"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_model")
    data_dir, cache_dir, _ = make_dataset(root)
    return root, data_args(data_dir, cache_dir)


def test_an_imported_model_runs_every_phase_when_the_user_names_it_again(setup, capsys):
    root, data = setup
    code, _, err = main_in_process(capsys, "train", "--model", "user_nets:build_net", "--model-kwargs",
                                   '{"width": 6}', "--samples", "60", *SGD, "--out", root / "pre", *data)  # fmt: skip
    assert code == 0, err
    ckpt = load_checkpoint(root / "pre/model.pt")  # weights_only: names and numbers, never code
    assert ckpt["model"] == "user_nets:build_net" and ckpt["model_kwargs"]["width"] == 6
    assert ckpt["state_dict"]["0.weight"].shape[0] == 6
    steps = [
        ["record", "--checkpoint", root / "pre/model.pt", "--samples", "80", "--store", root / "st"],
        ["retrain", "--checkpoint", root / "pre/model.pt", "--store", root / "st", "--samples", "80", *SGD,
         "--out", root / "qk"],
        ["evaluate", "--checkpoint", root / "qk/model.pt"],
        ["patterns", "info", root / "st"],
    ]  # fmt: skip
    for step in steps:
        if step[0] != "patterns":
            code, _, err = main_in_process(capsys, *step, *data)  # without --model: refused, nothing imported
            assert_one_line_error(code, err, "pass --model user_nets:build_net")
        trust = ["--model", "user_nets:build_net"] if step[0] != "patterns" else []
        code, out, err = main_in_process(capsys, *step, *trust, *(data if step[0] != "patterns" else []))
        assert code == 0, (step[0], err)
    assert "three-piece gate" in out  # the ReLU6 site, stored at 2 bits per unit
    qk = load_checkpoint(root / "qk/model.pt")
    assert (qk["model"], qk["model_kwargs"]) == (ckpt["model"], ckpt["model_kwargs"])


@pytest.mark.parametrize(
    "model, kwargs, fragments",
    [
        ("no_such_package.nets:build", None, ["cannot import 'no_such_package.nets'"]),
        ("user_nets:missing", None, ["has no callable 'missing'"]),
        ("user_nets:broken", None, ["user_nets:broken", "RuntimeError: this builder needs a GPU"]),
        ("user_nets:not_a_module", None, ["returned a str, not a torch.nn.Module"]),
        ("user_nets:build_net", "[1, 2]", ["--model-kwargs must be a JSON object"]),
        ("user_nets:build_net", "{width: 6}", ["--model-kwargs is not valid JSON"]),
        ("user_nets:build_net", '{"num_classes": 3}', ["cannot set num_classes: the data decides"]),
        ("user_nets:build_net", '{"depth": 3}', ["unexpected keyword argument 'depth'"]),
        ("lenet5", '{"width": 3}', ["zoo model 'lenet5' takes no model keyword arguments"]),
    ],
)
def test_a_failing_import_or_call_is_a_one_line_error_and_writes_nothing(setup, capsys, model, kwargs, fragments):
    root, data = setup
    before = snapshot(root)
    extra = ["--model-kwargs", kwargs] if kwargs is not None else []
    code, _, err = main_in_process(capsys, "train", "--model", model, *extra, "--samples", "60", *SGD,
                                   "--out", root / "bad", *data)  # fmt: skip
    assert_one_line_error(code, err, *fragments)
    assert not (root / "bad").exists() and snapshot(root) == before


def test_training_a_network_phase_2_would_refuse_warns_first_and_the_refusal_points_to_the_docs(setup, capsys):
    root, data = setup
    train = ["train", "--model", "user_nets:gelu_net", "--samples", "20", *SGD, "--out", root / "gelu", *data]

    code, _, err = main_in_process(capsys, *train)

    assert code == 0, err
    assert err.startswith("skqk: warning: user_nets:gelu_net cannot be decoupled") and len(err.splitlines()) == 1
    assert "retrain --method qk" in err and "(GELU)" in err
    code, _, err = main_in_process(capsys, "record", "--checkpoint", root / "gelu/model.pt", "--model",
                                   "user_nets:gelu_net", "--samples", "20", "--store", root / "gelu-store",
                                   *data)  # fmt: skip
    assert_one_line_error(code, err, "(GELU)", "docs/design.md, 'Supported activations'")
    design = (Path(__file__).resolve().parents[2] / "docs" / "design.md").read_text()
    assert "\n## Supported activations\n" in design
