"""Pattern-store bytes per sample of the zoo nets, in format version 1 (every gate state, a byte per switch) and
version 2 (switches in ceil(log2(window)) bits, a gate only a frozen max-pool reads kept at its switches).

Usage: ``python benchmarks/store_bytes.py [--image-sizes 32,224]``; prints the markdown table of docs/benchmarks.md.
"""

import argparse

import torch

from skqk import decouple, models
from skqk.store.format import record_bytes, site_specs


def bytes_per_sample(name: str, pooling: str, image_size: int) -> tuple[int, int]:
    selector = decouple(models.build(name, image_size=image_size).eval(), pooling)[0]
    example = selector(torch.randn(1, 3, image_size, image_size))
    v1, v2 = (record_bytes(site_specs(example, selector.windows, selector.read_through, v)) for v in (1, 2))
    return v1, v2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-sizes", default="32,224", help="comma-separated input sizes (default 32,224)")
    sizes = [int(s) for s in parser.parse_args().image_sizes.split(",")]
    print("| model | input | pooling | version 1 bytes/sample | version 2 bytes/sample | saved | v1 / v2 |")
    print("|---|---|---|---|---|---|---|")
    for size in sizes:
        for name in models.list_models():
            for pooling in ("live", "frozen"):
                v1, v2 = bytes_per_sample(name, pooling, size)
                print(f"| {name} | {size}² | {pooling} | {v1:,} | {v2:,} | {v1 - v2:,} | {v1 / v2:.2f} |")


if __name__ == "__main__":
    main()
