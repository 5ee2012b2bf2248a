"""QK-only vs traditional re-training benchmark: ``python benchmarks/bench.py --quick --json bench.json``.

A thin wrapper over `skqk.bench.run` (the same as ``skqk bench``); see docs/benchmarks.md.
"""

import sys

from skqk.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
