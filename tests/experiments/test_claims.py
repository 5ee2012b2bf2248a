"""The claims tables of README.md and docs/results.md are what `skqk claims` makes of the saved results (a changed
result without regenerated tables fails here), and the verdict rule decides as its docstring says. No training."""

import json
from pathlib import Path

import pytest

from skqk.cli import main
from skqk.experiments import claims as c
from skqk.experiments.claims.ours import one_round_lead

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "docs" / "figures"
DOCS = [ROOT / "README.md", ROOT / "docs" / "results.md"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_the_tables_are_generated_from_the_saved_results(path):
    text = path.read_text()
    assert "<!-- claims:begin" in text, f"{path.name} lost its claims table markers"
    assert c.with_tables(text, c.claims(FIGURES)) == text, (
        f"{path.name}'s claims table differs from docs/figures: run `skqk claims --update README.md docs/results.md`"
    )


def test_the_check_option_passes_on_the_repository_and_fails_on_a_stale_table(tmp_path, capsys):
    assert main(["claims", "--results", str(FIGURES), "--check", *map(str, DOCS)]) == 0
    stale = tmp_path / "stale.md"
    stale.write_text("<!-- claims:begin readme -->\n| old |\n<!-- claims:end -->\n")
    assert main(["claims", "--results", str(FIGURES), "--check", str(stale)]) == 1
    assert "--update" in capsys.readouterr().err


@pytest.mark.parametrize(
    "gaps, verdict",
    [
        ([2.0, 3.0, 2.5], "ahead"),  # mean 2.5 > std 0.5, every seed ahead
        ([-2.0, -3.0, -2.5], "behind"),
        ([1.0, -0.5, 2.0], "level"),  # the signs disagree
        ([0.5, 4.0, 0.2], "level"),  # one sign, but mean 1.57 < std 2.11: within the spread
        ([-1.0, 0.0, -2.0], "level"),  # a tie is no seed behind
    ],
)
def test_the_verdict_rule(gaps, verdict):
    assert c.compare(gaps) == verdict


GAPS = {"lenet5": [-2.0, -3.0, -2.5], "alexnet": [2.0, 3.0, 2.5], "vgg8": [1.0, -0.5, 2.0]}  # points, per seed


def synthetic_fig5(folder: Path) -> Path:
    """A Fig. 5 results folder: per net two SK sizes, N = n and 2n, 3 seeds; QK-only minus traditional is the net's
    GAPS at every cell, QK-only's accuracy rises by 5 points from N = n to 2n, and its validation CCE is higher for
    LeNet-5 only."""
    cells = []
    for model, gaps in GAPS.items():
        for n in (1024, 4096):
            for N in (n, 2 * n):
                for seed, g in enumerate(gaps):
                    base = 0.40 + 0.05 * (N > n) + 0.01 * seed
                    higher = 0.3 if model == "lenet5" else -0.1
                    for method, acc, loss in (("qk", base + g / 100, 1.5 + higher), ("traditional", base, 1.5)):
                        cell = {"model": model, "seed": seed, "n": n, "N": N, "method": method, "variant": "base"}
                        cells.append(cell | {"val_accuracy": acc, "val_loss": loss, "train_loss": 0.5, "epochs": 3})
    (folder / "fig5-results.json").write_text(json.dumps({"experiment": "fig5", "models": list(GAPS), "cells": cells}))
    paper = {"experiment": "fig5", "models": [], "cells": []}
    (folder / "fig5-paper-lenet5-results.json").write_text(json.dumps(paper))
    return folder


def test_verdicts_on_a_clearly_behind_a_clearly_ahead_and_a_within_spread_net(tmp_path):
    saved = c.Saved(synthetic_fig5(tmp_path))
    assert c.fig5_slower(saved).verdict == "**reproduced for LeNet-5 only**"  # behind on every seed: slower
    comparable = c.fig5_comparable(saved)
    assert comparable.verdict == "**reproduced for AlexNet and VGG8, not for LeNet-5**"  # ahead or level: comparable
    assert "**−2.50 ± 0.50**" in comparable.evidence  # the gap behind, in bold
    assert c.fig5_improving(saved).verdict == "**reproduced** (all three nets)"
    assert c.fig5_cce(saved).verdict == "**reproduced for AlexNet and VGG8, not for LeNet-5**"


def test_update_rewrites_only_the_marked_tables_atomically(tmp_path):
    rows = [c.Claim("a claim", "short", "**reproduced**", "evidence", "summary", "`cmd`")]
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n\n<!-- claims:begin readme -->\n| stale |\n<!-- claims:end -->\n\nafter\n")
    assert c.update([doc], rows) == [doc]
    assert doc.read_text() == (
        "intro\n\n<!-- claims:begin readme -->\n| paper's claim | verdict here | measured | command |\n"
        "|---|---|---|---|\n| short | **reproduced** | summary | `cmd` |\n<!-- claims:end -->\n\nafter\n"
    )
    assert c.update([doc], rows) == []  # up to date: not rewritten
    assert not list(tmp_path.glob(".*.part"))
    (tmp_path / "plain.md").write_text("no table\n")
    with pytest.raises(ValueError, match="claims:begin"):
        c.update([tmp_path / "plain.md"], rows)


def test_a_missing_result_file_names_the_option():
    with pytest.raises(FileNotFoundError, match="--results"):
        c.Saved(Path("/nonexistent"))["fig5"]


def test_the_one_round_lead_is_over_the_better_of_the_averaging_methods_in_strongly_non_iid_settings_only():
    def cell(method, partition, alpha, accuracy):
        return {"method": method, "clients": 4, "partition": partition, "alpha": alpha, "val_accuracy": accuracy}

    run = {
        "cells": [
            *(
                cell(m, "dirichlet", 0.01, a)
                for m, a in (("analytic", 0.40), ("qk-fedavg", 0.35), ("traditional-fedavg", 0.37))
            ),
            *(
                cell(m, "dirichlet", 1.0, a)
                for m, a in (("analytic", 0.40), ("qk-fedavg", 0.45), ("traditional-fedavg", 0.30))
            ),
            {"method": "analytic", "clients": 20, "partition": "dirichlet", "alpha": 0.01, "infeasible": "no split"},
        ]
    }
    moved = {
        "cells": [
            c | {"val_accuracy": 0.41} if c["method"] == "analytic" and c["alpha"] == 1.0 else c for c in run["cells"]
        ]
    }
    leads, partition_free = one_round_lead([run, moved])
    assert leads == pytest.approx([3.0, 3.0])  # α = 1 is not counted; the infeasible setting has no accuracy
    assert partition_free == 1  # the second run's analytic round scored two accuracies
