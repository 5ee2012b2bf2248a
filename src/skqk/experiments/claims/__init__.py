"""The paper's claims against the saved results: one function per claim computes its verdict and evidence from the
results.json files of a folder (the repository's docs/figures), and `claims_table` writes them as the tables of
README.md and docs/results.md (`skqk claims`), so that the tables cannot drift from the results.

**The verdict rule.** Methods are compared per seed: QK-only minus traditional re-training from the same pre-trained
network on the same samples (or a larger N minus a smaller one), one value per seed. A difference is *larger than
the seed spread* when its mean exceeds its sample std in size and every seed has the same sign; QK-only is then
*ahead* or *behind*, and otherwise the two are *level* (`compare`). Each claim's function says in its docstring how
it turns such comparisons into its verdict. A number that no saved result holds is marked "not generated".
"""

from __future__ import annotations

import re
from pathlib import Path

from skqk.atomic import atomic_write_text
from skqk.experiments.claims.ours import analytic, federated, qk_gap_closed
from skqk.experiments.claims.paper import (
    fig4_follow_up,
    fig4_settling,
    fig5_cce,
    fig5_comparable,
    fig5_improving,
    fig5_slower,
)
from skqk.experiments.claims.rule import Claim, Saved, compare

__all__ = ["CLAIMS", "Claim", "Saved", "claims", "claims_table", "compare", "update", "with_tables"]

CLAIMS = (
    fig4_settling,
    fig4_follow_up,
    fig5_improving,
    fig5_slower,
    fig5_comparable,
    fig5_cce,
    qk_gap_closed,
    federated,
    analytic,
)  # in the order of the tables


def claims(results: str | Path) -> list[Claim]:
    """Every claim's verdict and evidence from the saved results in the folder `results` (docs/figures)."""
    saved = Saved(results)
    return [claim(saved) for claim in CLAIMS]


STYLES = ("results", "readme")  # docs/results.md's table, README.md's


def claims_table(rows: list[Claim], style: str = "results") -> str:
    """The markdown table of `rows`: docs/results.md's (claim, verdict, evidence) or README's (claim, verdict,
    headline numbers, command)."""
    if style == "results":
        lines = [
            "| claim (paper) | verdict here | evidence (3 seeds unless said; QK − traditional paired by seed) |",
            "|---|---|---|",
        ]
        lines += [f"| {c.claim} | {c.verdict} | {c.evidence} |" for c in rows]
    elif style == "readme":
        lines = ["| paper's claim | verdict here | measured | command |", "|---|---|---|---|"]
        lines += [f"| {c.short_claim} | {c.verdict} | {c.summary} | {c.command} |" for c in rows]
    else:
        raise ValueError(f"unknown table style {style!r}; choose from {', '.join(STYLES)}")
    return "\n".join(lines)


MARKED = re.compile(r"(<!-- claims:begin (\w+) -->\n)(.*?)(<!-- claims:end -->)", re.S)


def with_tables(text: str, rows: list[Claim], where: str = "the text") -> str:
    """`text` with every table between ``<!-- claims:begin STYLE -->`` and ``<!-- claims:end -->`` generated anew."""
    if not MARKED.search(text):
        raise ValueError(
            f"{where} has no claims table to update: mark it with <!-- claims:begin results --> (or readme) and "
            "<!-- claims:end --> on lines of their own"
        )
    return MARKED.sub(lambda m: m[1] + claims_table(rows, m[2]) + "\n" + m[4], text)


def update(paths: list[str | Path], rows: list[Claim]) -> list[Path]:
    """Rewrite the marked tables of each file in place (atomically); returns the files that changed."""
    changed = []
    for path in map(Path, paths):
        text = path.read_text()
        new = with_tables(text, rows, str(path))
        if new != text:
            atomic_write_text(path, new)
            changed.append(path)
    return changed
