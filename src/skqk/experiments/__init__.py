"""The paper's experiments: one runner per figure (`fig4`, `fig5`, the QK-gap study), presets, plots from saved
data."""

from skqk.experiments.fig4 import run_fig4
from skqk.experiments.fig5 import run_fig5, run_qk_gap
from skqk.experiments.presets import PRESETS, Fig5Protocol, Preset, QKGapProtocol, Variant

__all__ = ["PRESETS", "Fig5Protocol", "Preset", "QKGapProtocol", "Variant", "run_fig4", "run_fig5", "run_qk_gap"]
