"""The slow integration tier is opt-in: tests marked ``slow`` here run with ``INPARS_RAY_WITH_SLOW=1``.

They are the Tune sweeps (two, one killed and resumed), the consistency-strategy pipeline and the reranker
families beyond monoT5 in the PyTerrier comparison: about six minutes of a 2-core machine, which a default
run (and CI) leaves out to stay near 30 minutes (README, "Tests"). ``pytest -m slow`` also runs them.
"""
from __future__ import annotations

import os

import pytest

SWITCH = "INPARS_RAY_WITH_SLOW"


def _wanted(config: pytest.Config) -> bool:
    return os.environ.get(SWITCH, "0") == "1" or "slow" in (config.getoption("markexpr", "") or "")


def pytest_runtest_setup(item: pytest.Item) -> None:
    # runs before the test's fixtures are set up, so a skipped test starts nothing
    if item.get_closest_marker("slow") is not None and not _wanted(item.config):
        pytest.skip(f"slow integration tier (about 6 minutes in all): set {SWITCH}=1 or select -m slow")
