"""Imports cost what they should: ``import skqk`` and ``skqk --help`` load neither the benchmark nor matplotlib,
and ``skqk --help`` not even torch (the public names are imported on first use)."""

import subprocess
import sys
from pathlib import Path

import skqk

SRC = str(Path(skqk.__file__).parents[1])


def modules_loaded_by(code: str) -> set[str]:
    probe = f"import sys; sys.path.insert(0, {SRC!r}); {code}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_import_skqk_loads_no_benchmark_and_no_matplotlib():
    loaded = modules_loaded_by("import skqk")
    assert not {m for m in loaded if m.startswith(("skqk.bench", "matplotlib", "skqk.experiments"))}


def test_help_loads_no_torch_and_no_benchmark_run():
    code = "from contextlib import redirect_stdout; import io\nfrom skqk.cli import main\n"
    code += "with redirect_stdout(io.StringIO()):\n    try: main(['--help'])\n    except SystemExit: pass"
    loaded = modules_loaded_by("exec(" + repr(code) + ")")
    assert "skqk.cli" in loaded
    assert not {m for m in loaded if m == "torch" or m.startswith(("matplotlib", "skqk.bench.run", "skqk.bench.arms"))}


def test_public_names_resolve_lazily_and_match_all():
    for name in skqk.__all__:
        assert getattr(skqk, name) is not None, name
    assert set(skqk.__all__) <= set(dir(skqk))


def test_the_core_package_does_not_need_flower():
    """Flower is the optional `federated` extra: merging, the CLI and the client-side computations import without it."""
    loaded = modules_loaded_by("import skqk, skqk.cli, skqk.combine, skqk.federated.task, skqk.federated.partition")
    assert not {m for m in loaded if m.startswith(("flwr", "ray"))}
