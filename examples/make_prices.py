"""Write a small synthetic table of daily returns, to try skqk's tabular path: one row per (day, stock) with a
sector (categorical), two signals and the next day's return, which depends piecewise-linearly on them.

Run: ``python examples/make_prices.py prices.csv`` (or a ``.parquet`` name).
"""

import sys

import numpy as np
import pandas as pd


def prices(days: int = 250, stocks: int = 16, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = days * stocks
    frame = pd.DataFrame(
        {
            "day": np.repeat(np.arange(days), stocks),
            "sector": rng.choice(["energy", "finance", "tech"], rows),
            "momentum": rng.normal(size=rows),
            "volume": rng.lognormal(size=rows),
        }
    )
    drift = np.linspace(0, 1, rows)  # the relation changes slowly over time: re-training has something to do
    frame["ret"] = (
        np.maximum(frame.momentum, 0) * (1 - drift)
        - 0.5 * np.log(frame.volume)
        + np.where(frame.sector == "tech", drift, 0)
        + 0.2 * rng.normal(size=rows)
    )
    frame["up"] = np.where(frame.ret > 0, "up", "down")
    return frame


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "prices.csv"
    table = prices()
    table.to_parquet(path) if path.endswith((".parquet", ".pq")) else table.to_csv(path, index=False)
    print(f"{path}: {len(table)} rows, columns {', '.join(table.columns)}")
