"""Under ``-q`` Flower's and Ray's warnings are silent, errors still show, and their logger levels are restored."""

import logging
import warnings

import pytest

from skqk.federated.simulation import engine_output


@pytest.mark.parametrize(("progress", "shown"), [(True, {"INFO", "WARNING", "ERROR"}), (False, {"ERROR"})])
def test_engine_log_lines_and_warnings_follow_progress(caplog, progress, shown):
    before = logging.getLogger("flwr").level
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with engine_output(progress):
            for level in ("INFO", "WARNING", "ERROR"):
                logging.getLogger("flwr").log(getattr(logging, level), "flwr says %s", level)
                logging.getLogger("ray").log(getattr(logging, level), "ray says %s", level)
            warnings.warn("flwr is deprecating something", DeprecationWarning, stacklevel=1)
    assert {r.levelname for r in caplog.records if r.name in ("flwr", "ray")} == shown
    assert bool(caught) == progress
    assert logging.getLogger("flwr").level == before
