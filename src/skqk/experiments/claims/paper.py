"""The paper's claims: Fig. 4 (the patterns settle early, on two yardsticks) and Fig. 5 (QK-only re-training against
traditional re-training), one function each, its verdict rule in its docstring."""

from __future__ import annotations

from skqk.experiments.claims.rule import (
    FIG4_MODELS,
    NAMES,
    Claim,
    Saved,
    ahead,
    compare,
    every_seed,
    gap,
    listing,
    paired,
    per_net,
    percent,
    qk_accuracy,
    retrain_epochs,
    settings,
    sk_sizes,
    spread,
)
from skqk.experiments.report import mean_std

FOLLOW_UP_FACTOR = 3.85  # the follow-up literature's "patterns settle ~3.85x earlier"

FIG4_COMMAND = (
    "`skqk reproduce fig4 --preset cpu --models lenet5 --seeds 0,1,2 --epochs 60 --every-steps 4`; "
    "`… --models vgg8 --epochs 40 --every-steps 4`; `… --models alexnet --epochs 50 --every-steps 8`"
)
FIG5_COMMAND = "`skqk reproduce fig5 --preset cpu --models lenet5,alexnet,vgg8 --seeds 0,1,2`"


def fig4_settling(saved: Saved) -> Claim:
    """§5.1, Fig. 4: patterns settle before the validation loss stabilises. Per run, ratio = epoch of the validation
    loss's minimum / epoch from which the flips stay below the threshold (a run that never settles: at most the
    minimum's epoch / epochs run). Reproduced for a net when the ratio is above 1 on every seed."""
    evidence, summary, results = [], [], {}
    for model in FIG4_MODELS:
        runs = saved[f"fig4-{model}"]["runs"]
        s = [r["stabilisation"] for r in runs]
        epochs = len(runs[0]["epochs"])
        minimum = [x["val_loss_min_epoch"] for x in s]
        settle = [x["settle_epoch"] for x in s]
        ratios = [x["ratio"] if x["ratio"] is not None else m / epochs for x, m in zip(s, minimum)]
        results[model] = all(r > 1 for r in ratios)
        below = f"flips < {percent(s[0]['flip_threshold'])}"
        name = NAMES[model]
        if None not in settle:
            factor = mean_std(settle)[0] / mean_std(minimum)[0]
            order = f"~{factor:.1f}× *later*" if factor > 1 else f"~{1 / factor:.1f}× *earlier*"
            evidence.append(
                f"{name}: patterns settle ({below} per {s[0]['measured_every']} for good) at epoch {spread(settle)}, "
                f"the validation loss is lowest at {spread(minimum)}, ratio {spread(ratios, 2)} ({order})"
            )
            summary.append(f"{name} {order} (epoch {spread(settle)} vs {spread(minimum)})")
            continue
        at_minimum = [
            next(e["flips"] for e in r["epochs"] if e["epoch"] == m) for r, m in zip(runs, minimum)
        ]  # share of the gate states that changed in the epoch of the minimum
        flipping = f"{100 * min(at_minimum):.1f}–{100 * max(at_minimum):.1f}%"
        never = "no" if all(x is None for x in settle) else f"on {settle.count(None)} of {len(settle)} seeds no"
        evidence.append(
            f"{name}: validation loss lowest at epoch {spread(minimum)} while {flipping} of gate states change per "
            f"epoch, {never} settling below {percent(s[0]['flip_threshold'])} within {epochs} epochs (ratio < "
            f"{max(ratios):.2f})"
        )
        summary.append(
            f"{name}'s never settle in {epochs} epochs (minimum at epoch {spread(minimum)}, {flipping} of gates "
            "still flipping per epoch)"
        )
    return Claim(
        claim='§5.1, Fig. 4: the activation pattern stabilises "much earlier than the validation loss" (follow-up '
        "literature: ~3.85× earlier)",
        short_claim="Fig. 4: activation patterns stabilise much earlier than the validation loss",
        verdict=per_net(results),
        evidence="; ".join(evidence) + " — [Fig. 4](#fig-4--sk-stabilisation-with-a-stated-criterion)",
        summary=f"patterns settle ({below}) relative to the validation-loss minimum: " + "; ".join(summary),
        command=FIG4_COMMAND,
    )


def fig4_follow_up(saved: Saved) -> Claim:
    """Fig. 4 on the follow-up's yardstick: per run, ratio = epoch from which the weight updates stay below 10% of
    their first-epoch mean / the same epoch of the pattern flips. Reproduced for a net when the ratio is at least
    half the follow-up's ~3.85x on every seed; a run where either series never decays has no ratio (not reproduced).
    """
    level = "0.1"
    decaying, evidence, results, ratios_all = [], [], {}, []
    for model in FIG4_MODELS:
        runs = saved[f"fig4-{model}"]["runs"]
        decay = [r["stabilisation"]["decay"] for r in runs]
        ratios = [d["ratio"][level] for d in decay]
        results[model] = None not in ratios and all(r >= FOLLOW_UP_FACTOR / 2 for r in ratios)
        if None not in ratios:
            decaying.append((NAMES[model], ratios))
            ratios_all += ratios
            continue
        never = [d[kind]["decay_epoch"][level] is None for d in decay for kind in ("patterns", "weights")]
        what = "neither decays" if all(never) else f"no ratio on {ratios.count(None)} of {len(ratios)} seeds"
        evidence.append(f"{NAMES[model]}: {what} in {len(runs[0]['epochs'])} epochs")
    below = f"below {percent(float(level))} of their first-epoch level"
    each = listing([f"{spread(r, 2)}× ({name})" for name, r in decaying])
    return Claim(
        claim="§5.1, Fig. 4 on the follow-up's yardstick: pattern changes decay ~3.85× earlier than weight updates",
        short_claim="Fig. 4 on the authors' follow-up yardstick: pattern changes decay ~3.85× earlier than weight "
        "updates",
        verdict=per_net(results),
        evidence=f"patterns fall {below} {each} earlier than the weight updates; "
        + "; ".join(evidence)
        + " — [both yardsticks](#both-yardsticks-this-sessions-runs-issue-23-lenet-5-vgg8-alexnet-3-seeds-each)",
        summary=f"patterns fall {below} only {mean_std(ratios_all)[0]:.2f}× earlier than the weight updates ("
        + ", ".join(f"{name} {spread(r, 2)}" for name, r in decaying)
        + "); "
        + "; ".join(evidence),
        command="same commands",
    )


def fig5_improving(saved: Saved) -> Claim:
    """§5.2, Fig. 5: QK-only keeps improving as samples are added, SK fixed. Per net and SK size n, QK-only's
    accuracy at the largest N minus at the smallest, paired by seed; reproduced for a net when that gain is ahead
    (larger than the seed spread) with its smallest SK."""
    cells = saved["fig5"]["cells"]
    gaps = paired(cells)
    accuracy, grid = qk_accuracy(cells), settings(gaps)
    results, first, larger = {}, [], []
    for model, ns in sk_sizes(gaps).items():
        for n in ns:
            Ns = grid[(model, n)]
            start, end = accuracy[(model, n, Ns[0])], accuracy[(model, n, Ns[-1])]
            gains = [100 * (end[s] - start[s]) for s in start]
            text = f"{NAMES[model]} {mean_std(list(start.values()))[0]:.3f} → {mean_std(list(end.values()))[0]:.3f}"
            if n == ns[0]:
                results[model] = len(Ns) > 1 and compare(gains) == "ahead"
                first.append((text, n, Ns))
            elif len(Ns) == 1:
                larger.append((n, f"{NAMES[model]} one N only"))
            else:
                within = "" if compare(gains) == "ahead" else f" ({gap(gains)} points: within the seed spread)"
                larger.append((n, text + within))
    everyone = "all three nets" if len(results) == 3 and all(results.values()) else ""
    evidence = ", ".join(f"{text} (SK from {n:,}, N = {Ns[0]:,} → {Ns[-1]:,})" for text, n, Ns in first)
    if larger:
        sizes = listing([f"{n:,}" for n in sorted({n for n, _ in larger})])
        evidence += f"; with the SK from {sizes} samples " + ", ".join(text for _, text in larger)
    text, n, Ns = first[0]
    return Claim(
        claim="§5.2, Fig. 5: QK-only re-training keeps improving as samples are added, SK fixed",
        short_claim="Fig. 5: QK-only keeps improving as samples are added, SK fixed",
        verdict=per_net(results, everyone),
        evidence=evidence + " — [Fig. 5](#fig-5--qk-only-vs-traditional-re-training-three-nets-three-seeds)",
        summary=f"{text} (N = {Ns[0]:,} → {Ns[-1]:,}), " + ", ".join(t for t, _, _ in first[1:]),
        command=FIG5_COMMAND,
    )


def with_paper_protocol(saved: Saved, model: str, n: int, N: int) -> tuple[list[float], int] | None:
    """The same cell's per-seed gaps with the paper's protocol, and its re-training epochs (None if not run)."""
    cells = saved["fig5-paper"]["cells"]
    gaps = paired(cells).get((model, n, N, "base"))
    return (gaps, retrain_epochs(cells)[model]) if gaps else None


def fig5_slower(saved: Saved) -> Claim:
    """§5.2: with an SK from few samples QK-only improves "at a slightly slower rate" than traditional SGD. With each
    net's smallest SK, reproduced when QK-only is behind on every seed at the largest N (a *slightly* slower rate
    need not be larger than the seed spread); ahead or level there, not reproduced."""
    cells = saved["fig5"]["cells"]
    gaps, epochs = paired(cells), retrain_epochs(cells)
    grid, results, parts, summary = settings(gaps), {}, {}, {}
    for model, ns in sk_sizes(gaps).items():
        n = ns[0]
        Ns = [N for N in grid[(model, n)] if N > n]
        last = gaps[(model, n, Ns[-1], "base")]
        last_side = every_seed(last)  # "ahead", "behind" or None
        results[model] = last_side == "behind"
        name, text = NAMES[model], []
        behind = 0
        while behind < len(Ns) and compare(gaps[(model, n, Ns[-1 - behind], "base")]) == "behind":
            behind += 1
        if behind >= 2:
            text.append(f"behind from N = {Ns[-behind]:,} on")
        earlier = [N for N in Ns[:-1] if compare(gaps[(model, n, N, "base")]) == "ahead"]
        if earlier and last_side != "ahead":  # ahead with few samples, then not
            text.append(f"ahead at N = {earlier[0]:,} ({gap(gaps[(model, n, earlier[0], 'base')])})")
        notes = [ahead(last), f"{epochs[model]} re-training epochs"]
        paper = with_paper_protocol(saved, model, n, Ns[-1])
        if paper:
            notes.append(f"the paper's {paper[1]}-epoch protocol, {len(paper[0])} seeds: {gap(paper[0])}")
        side = {"behind": "behind", "ahead": "*ahead*"}.get(last_side, "level")
        at = f"at N = {Ns[-1]:,}" if behind >= 2 else f"{side} at N = {Ns[-1]:,}"  # "behind from … on" said it
        text.append(f"{at}: {gap(last)} points ({'; '.join(notes)})")
        parts[model] = f"{name} (SK from {n:,}) " + ", ".join(text)
        summary[model] = f"{name} {gap(last)}" + ("" if results[model] else f" *{side.strip('*')}*") + f" at {Ns[-1]:,}"
    order = [m for m in results if results[m]] + [m for m in results if not results[m]]
    behind_all = [summary[m] for m in order if results[m]]
    return Claim(
        claim='§5.2: with an SK from 1,024 samples (VGG8: 512) QK-only improves "at a slightly slower rate" than '
        "traditional SGD",
        short_claim="Fig. 5: with an SK from 1,024 (VGG8: 512) samples, slightly slower than traditional",
        verdict=per_net(results),
        evidence="; ".join(parts[m] for m in order),
        summary=", ".join(behind_all)
        + (" (behind on every seed)" if behind_all else "")
        + "".join(f"; {summary[m]}" for m in order if not results[m]),
        command="same",
    )


def fig5_comparable(saved: Saved) -> Claim:
    """§5.2: with an SK from 4,096 samples QK-only is "comparable to that of the traditional SGD". With each net's
    largest SK, every cell with N > n (or N = n where there is none larger): reproduced when no cell is behind (by
    the seed-spread rule)."""
    cells = saved["fig5"]["cells"]
    gaps = paired(cells)
    grid, results, parts, summary = settings(gaps), {}, {}, {}
    for model, ns in sk_sizes(gaps).items():
        if len(ns) < 2:
            continue
        n = ns[-1]
        Ns = [N for N in grid[(model, n)] if N > n] or [n]
        values = [gaps[(model, n, N, "base")] for N in Ns]
        results[model] = all(compare(v) != "behind" for v in values)
        texts = [gap(v) for v in values]
        if compare(values[-1]) == "behind":
            texts[-1] = f"**{texts[-1]}**"
        counts = {ahead(v) for v in values}
        where = f"N = {', '.join(f'{N:,}' for N in Ns)}" + (f"; {counts.pop()}" if len(counts) == 1 else "")
        parts[model] = f"{NAMES[model]} {', '.join(texts)} ({where})"
        summary[model] = f"{NAMES[model]} {gap(values[-1])} ({'N = ' if not summary else ''}{Ns[-1]:,})"
        paper = with_paper_protocol(saved, model, n, Ns[-1])
        if paper:
            parts[model] += (
                f"; with the paper's {paper[1]} re-training epochs ({len(paper[0])} seeds) {gap(paper[0])} at "
                f"N = {Ns[-1]:,}"
            )
            pretrain = {c["epochs"] for c in saved["fig5-paper"]["cells"] if c["method"] == "pretrain"}
            summary[model] += (
                f", and {gap(paper[0])} with the paper's own {'/'.join(map(str, sorted(pretrain)))}/{paper[1]}-epoch "
                f"protocol ({len(paper[0])} seeds)"
            )
    order = [m for m in results if results[m]] + [m for m in results if not results[m]]
    return Claim(
        claim='§5.2: with an SK from 4,096 samples QK-only is "comparable to that of the traditional SGD"',
        short_claim="Fig. 5: with an SK from 4,096 samples, comparable to traditional",
        verdict=per_net(results),
        evidence="; ".join(parts[m] for m in order),
        summary=", ".join(summary[m] for m in order if results[m])
        + "".join(f"; {summary[m]}" for m in order if not results[m]),
        command="same; `skqk reproduce fig5 --preset paper --models lenet5 --seeds 0,1`",
    )


def cells_phrase(chosen: list[tuple[int, int]], every: list[tuple[int, int]], name: str) -> str:
    """Which of a net's (n, N) cells `chosen` is: "every LeNet-5 cell", "every LeNet-5 cell from N = X", "LeNet-5
    with the SK from n samples" or a list."""
    if chosen == every:
        return f"every {name} cell"
    for X in sorted({N for _, N in every}):
        if chosen == [c for c in every if c[1] >= X]:
            return f"every {name} cell from N = {X:,}"
    ns = sorted({n for n, _ in chosen})
    if chosen == [c for c in every if c[0] in ns]:
        return f"{name} with the SK from {listing([f'{n:,}' for n in ns])} samples"
    return f"{name} at " + ", ".join(f"N = {N:,} (SK from {n:,})" for n, N in chosen)


def fig5_cce(saved: Saved) -> Claim:
    """§5.2: similar CCE curves for both methods. Every cell with N > n, QK-only minus traditional validation CCE
    per seed: reproduced for a net when in no cell QK-only's validation CCE is higher on every seed."""
    cells = saved["fig5"]["cells"]
    val, train = paired(cells, "val_loss", 1.0), paired(cells, "train_loss", 1.0)
    loss = {}
    for c in cells:
        if c.get("variant", "base") == "base":
            loss.setdefault((c["model"], c["n"], c["N"], c["method"]), []).append(c["val_loss"])
    grid = settings(val)
    results, higher, lower, fitted, total = {}, [], [], 0, 0
    for model in sk_sizes(val):
        every = [(n, N) for (m, n), Ns in grid.items() if m == model for N in Ns if N > n]
        up = [(n, N) for n, N in every if every_seed(val[(model, n, N, "base")]) == "ahead"]
        down = [(n, N) for n, N in every if every_seed(val[(model, n, N, "base")]) == "behind"]
        fitted += sum(every_seed(train[(model, n, N, "base")]) == "behind" for n, N in every)
        total += len(every)
        results[model] = not up
        name = NAMES[model]
        if up:
            largest = [(n, max(N for n2, N in up if n2 == n)) for n in sorted({n for n, _ in up})]
            at = " and ".join(
                f"{mean_std(loss[(model, n, N, 'qk')])[0]:.2f} vs {mean_std(loss[(model, n, N, 'traditional')])[0]:.2f}"
                for n, N in largest
            )
            Ns = {N for _, N in largest}
            where = f"N = {Ns.pop():,}" if len(Ns) == 1 else "the largest N"
            higher.append(f"{cells_phrase(up, every, name)} ({where}: {at})")
        if down:
            lower.append(cells_phrase(down, every, name))
    trained = "always" if fitted == total else f"in {fitted} of {total} cells"
    evidence = (
        f"QK-only's validation CCE is higher in {listing(higher)}"
        if higher
        else "QK-only's validation CCE is never higher"
    )
    if lower:
        evidence += f", lower for {listing(lower)}"
    evidence += f"; QK-only {trained} reaches the lower *training* CCE"
    worse = [NAMES[m] for m in results if not results[m]]
    return Claim(
        claim="§5.2: similar CCE curves for both methods",
        short_claim="Fig. 5: similar CCE curves",
        verdict=per_net(results),
        evidence=evidence,
        summary=f"QK-only {trained} fits the training samples faster (lower training CCE, {fitted} of {total} cells)"
        + (f" and generalises worse for {listing(worse)} (higher validation CCE)" if worse else ""),
        command="same",
    )
