"""The paper's experiments: one runner per figure (`fig4`, `fig5`), presets, plots from saved data."""

from skqk.experiments.fig4 import run_fig4
from skqk.experiments.fig5 import run_fig5
from skqk.experiments.presets import PRESETS, Fig5Protocol, Preset

__all__ = ["PRESETS", "Fig5Protocol", "Preset", "run_fig4", "run_fig5"]
