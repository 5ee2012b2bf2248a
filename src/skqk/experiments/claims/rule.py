"""What every claim is built from: the saved results of a folder, the verdict rule over seeds (`compare`), the
pairing of QK-only with traditional re-training, and the words numbers are written in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from skqk.experiments.report import mean_std, qk_gaps

FIG4_MODELS = ("lenet5", "vgg8", "alexnet")
FILES = {  # what each claim reads, relative to the results folder
    "fig5": "fig5-results.json",
    "fig5-paper": "fig5-paper-lenet5-results.json",
    "qkgap": "qkgap-results.json",
    "federated": "federated-results.json",
    "analytic-fig5": "analytic/fig5-results.json",
    "analytic-incremental": "analytic/incremental-results.json",
    "analytic-federated": "analytic/federated-results.json",  # seed 0, beside the Fig. 5 cell of its central solve
    **{f"analytic-federated-seed{s}": f"analytic/federated-seed{s}-results.json" for s in (1, 2)},
    **{f"fig4-{m}": f"fig4-{m}-results.json" for m in FIG4_MODELS},
}
NAMES = {"lenet5": "LeNet-5", "alexnet": "AlexNet", "vgg8": "VGG8"}


@dataclass(frozen=True)
class Claim:
    """One row of both tables."""

    claim: str  # the claim as docs/results.md words it, with the paper's section
    short_claim: str  # README's wording
    verdict: str  # markdown, the same in both tables
    evidence: str  # docs/results.md: the numbers behind the verdict
    summary: str  # README: the headline numbers
    command: str  # README: the commands that made the saved results


class Saved:
    """The saved results.json files of a folder, read when a claim first asks for one."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.loaded: dict[str, dict] = {}

    def __getitem__(self, name: str) -> dict:
        if name not in self.loaded:
            path = self.folder / FILES[name]
            if not path.is_file():
                raise FileNotFoundError(f"no saved results {path}: --results names the folder of the saved results")
            self.loaded[name] = json.loads(path.read_text())
        return self.loaded[name]


# comparisons over seeds


def compare(values: list[float]) -> str:
    """ "ahead", "behind" or "level": per-seed differences (QK-only minus traditional, higher is better) are ahead
    or behind when larger than the seed spread (|mean| > std and every seed the same sign), else level.

    Example:
        >>> compare([2.0, 3.0, 2.5]), compare([-1.0, -2.0, -1.5]), compare([1.0, -0.5, 2.0])
        ('ahead', 'behind', 'level')
    """
    side, (mean, std) = every_seed(values), mean_std(values)
    return side if side is not None and abs(mean) > std else "level"


def every_seed(values: list[float]) -> str | None:
    """ "ahead" or "behind" when every seed has that sign (a weaker test than `compare`), else None."""
    if all(v > 0 for v in values):
        return "ahead"
    if all(v < 0 for v in values):
        return "behind"
    return None


def paired(cells: list[dict], metric: str = "val_accuracy", scale: float = 100.0) -> dict[tuple, list[float]]:
    """(model, n, N, variant) of each QK-only row -> `metric` of QK-only minus traditional re-training, times
    `scale` (accuracy in points), one value per seed, paired by seed as the reports pair them (`qk_gaps`)."""
    return {(model, n, N, variant): g for (model, n, N, _, variant), g in qk_gaps(cells, metric, scale).items()}


def qk_accuracy(cells: list[dict]) -> dict[tuple, dict[int, float]]:
    """(model, n, N) -> seed -> QK-only's validation accuracy (base variant)."""
    out: dict[tuple, dict[int, float]] = {}
    for c in cells:
        if c["method"] == "qk" and c.get("variant", "base") == "base":
            out.setdefault((c["model"], c["n"], c["N"]), {})[c.get("seed", 0)] = c["val_accuracy"]
    return out


def settings(gaps: dict[tuple, list[float]]) -> dict[tuple, list[int]]:
    """(model, n) -> its N in increasing order, of the base QK-only rows of `paired`'s result."""
    out: dict[tuple, list[int]] = {}
    for model, n, N, variant in gaps:
        if variant == "base":
            out.setdefault((model, n), []).append(N)
    return {key: sorted(Ns) for key, Ns in out.items()}


def retrain_epochs(cells: list[dict]) -> dict[str, int]:
    return {c["model"]: c["epochs"] for c in cells if c["method"] == "qk"}


# text


def signed(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


def gap(values: list[float]) -> str:
    """ "−2.70 ± 0.97": mean ± std over seeds."""
    mean, std = mean_std(values)
    return f"{signed(mean)} ± {std:.2f}"


def ahead(values: list[float]) -> str:
    """ "2/3 ahead", with ties counted: "0/3 ahead, 1 tied"."""
    tied = sum(v == 0 for v in values)
    return f"{sum(v > 0 for v in values)}/{len(values)} ahead" + (f", {tied} tied" if tied else "")


def spread(values: list[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def per_net(results: dict[str, bool], everyone: str = "") -> str:
    """The verdict from each net's: "**reproduced** (…)", "**not reproduced** (…)", "**reproduced for A, not for
    B**" or "**reproduced for A only**"."""
    yes = [NAMES[m] for m, ok in results.items() if ok]
    no = [NAMES[m] for m, ok in results.items() if not ok]
    nets = everyone or ", ".join(yes or no)
    if not no:
        return f"**reproduced** ({nets})"
    if len(yes) == 1 and len(no) > 1:
        return f"**reproduced for {yes[0]} only**"
    if not yes:
        return f"**not reproduced** ({nets})"
    return f"**reproduced for {listing(yes)}, not for {listing(no)}**"


def percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def sk_sizes(gaps: dict[tuple, list[float]]) -> dict[str, list[int]]:
    """Each net's SK sizes n, smallest first, in the order the results list the nets."""
    out: dict[str, list[int]] = {}
    for model, n in settings(gaps):
        out.setdefault(model, []).append(n)
    return {model: sorted(ns) for model, ns in out.items()}
