"""What ``skqk patterns info`` shows about a store: layout, sizes, bits per sample of each kind of site (two-piece
gates 1 bit per unit, three-piece gates 2, max-pool switches ceil(log2(window size)), 8 in a version 1 store), which
gate sites are kept only where a pool's switches read them, and each gate site's active fraction (of the states
kept)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from skqk.store import format as fmt

if TYPE_CHECKING:
    from skqk.store.pattern_store import PatternStore

_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)
# Per byte of a three-piece site: how many of its four 2-bit states are 1, the linear ("active") piece.
_LINEAR_PIECES = np.array([sum((b >> k) & 3 == 1 for k in (0, 2, 4, 6)) for b in range(256)], dtype=np.uint8)
_KIND_NAMES = {"gate": "two-piece gate", "piece": "three-piece gate", "switch": "max-pool switch"}


def store_info(store: PatternStore) -> dict[str, Any]:
    """The JSON-serialisable summary behind `PatternStore.info`."""
    active = active_fractions(store)
    sites = store.site_specs
    return {
        "path": str(store.path),
        "format_version": store.format_version,
        "fingerprint": store.fingerprint,
        "pooling": store.pooling,
        "data": store.data,
        "subset": store.subset,
        "samples": len(store),
        "chunks": store.chunk_count,
        "gate_bits_per_sample": sum(s.bits for s in sites if s.kind != "switch"),
        "switch_bits_per_sample": sum(s.bits for s in sites if s.kind == "switch"),
        "bits_per_sample_by_kind": {k: sum(s.bits for s in sites if s.kind == k) for k in fmt.BITS_PER_UNIT},
        "bytes_per_sample": store.bytes_per_sample,
        "nbytes_on_disk": store.nbytes_on_disk,
        "sites": [
            {
                "name": s.name,
                "kind": s.kind,
                "shape": list(s.shape),
                "bits_per_unit": s.width,
                "stored_units": s.units,
                "read_through": s.through,
                "bits_per_sample": s.bits,
                "active_fraction": active.get(s.name),
            }
            for s in sites
        ],
    }


def active_fractions(store: PatternStore) -> dict[str, float | None]:
    """Fraction of the stored units on the linear piece per gate site (set bits of a two-piece site, states equal to
    1 of a three-piece site), counted in bounded blocks of records (padding bits are zero)."""
    sites = store.site_specs
    gates = [(s, start) for s, start in zip(sites, fmt.site_offsets(tuple(sites))) if s.kind != "switch"]
    ones = dict.fromkeys((s.name for s, _ in gates), 0)
    block = max(1, fmt.STREAM_BYTES // store.bytes_per_sample)
    for k in range(store.chunk_count):
        records = store.chunk_records(k)
        for first in range(0, len(records), block):
            rows = records[first : first + block]
            for spec, start in gates:
                table = _POPCOUNT if spec.kind == "gate" else _LINEAR_PIECES
                ones[spec.name] += int(table[rows[:, start : start + spec.nbytes]].sum(dtype=np.int64))
    n = len(store)
    return {s.name: ones[s.name] / (n * s.units) if n else None for s, _ in gates}


def format_info(info: dict[str, Any]) -> str:
    """Human-readable summary of `PatternStore.info` for the command line.

    Args:
        info: the dict returned by `PatternStore.info`.

    Returns:
        A multi-line text: a header, then one table row per site.

    Example:
        >>> print(format_info(PatternStore.open("run/patterns").info()))
    """
    header = [
        f"pattern store {info['path']} (format {info['format_version']}, pooling {info['pooling']})",
        f"selector     {info['fingerprint']}",
        f"data         {info['data'] or 'not recorded'}",
        f"samples      {info['samples']:,} in {info['chunks']} chunk(s)",
        f"per sample   {info['gate_bits_per_sample']:,} gate bits + {info['switch_bits_per_sample']:,} switch "
        f"bits = {info['bytes_per_sample']:,} bytes",
        *(
            f"  {_KIND_NAMES[kind] + 's':<20}{bits:,} bits ({_widths(info, kind)} per unit)"
            for kind, bits in info["bits_per_sample_by_kind"].items()
            if bits
        ),
        f"on disk      {human_bytes(info['nbytes_on_disk'])}",
        "",
    ]
    rows = [["site", "kind", "shape", "kept", "bits/sample", "active"]]
    for site in info["sites"]:
        active = site["active_fraction"]
        rows.append(
            [
                site["name"],
                site["kind"],
                "x".join(map(str, site["shape"])),
                f"at {site['read_through']} switches" if site["read_through"] else "all",
                f"{site['bits_per_sample']:,}",
                "-" if active is None else f"{100 * active:.1f}%",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(header + table)


def _widths(info: dict[str, Any], kind: str) -> str:
    return "/".join(str(w) for w in sorted({s["bits_per_unit"] for s in info["sites"] if s["kind"] == kind}))


def human_bytes(n: int) -> str:
    size, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
