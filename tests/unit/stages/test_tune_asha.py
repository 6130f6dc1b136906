"""The sweep's ASHA scheduler keeps its rungs across a killed driver through Ray's public save/restore."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from inpars_ray.stages.tune import ASHA_STATE, METRIC, STOP_FILE, SweepConfig, _make_scheduler

pytest.importorskip("ray.tune")


def _scheduler(trials_root):
    from ray.tune.schedulers import TrialScheduler

    config = SweepConfig(grace_period=2, reduction_factor=2)
    scheduler = _make_scheduler(config, max_t=8, trials_root=str(trials_root))
    scheduler.set_search_properties(METRIC, "max")
    return scheduler, TrialScheduler


def _report(scheduler, trial_id: str, step: int, value: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id)
    return scheduler.on_trial_result(None, trial, {"step": step, METRIC: value})


def test_a_restored_scheduler_judges_new_trials_against_the_saved_rungs(tmp_path):
    root = tmp_path / "sweep" / "trials"
    first, actions = _scheduler(root)
    for tid, value in (("a", 0.9), ("b", 0.8)):
        first.on_trial_add(None, SimpleNamespace(trial_id=tid))
        assert _report(first, tid, 2, value) == actions.CONTINUE
        first.on_trial_complete(None, SimpleNamespace(trial_id=tid), {"step": 2, METRIC: value})
    assert (tmp_path / "sweep" / ASHA_STATE).is_file()

    # a new driver (Tuner.restore builds the scheduler again): a weak trial at the first rung is stopped
    # (cooperatively: CONTINUE to Tune, a STOP file for the training loop) because the rungs came back
    resumed, _ = _scheduler(root)
    resumed.on_trial_add(None, SimpleNamespace(trial_id="c"))
    assert _report(resumed, "c", 2, 0.1) == actions.CONTINUE
    assert (root / "c" / STOP_FILE).read_text() == "2"
    assert (root / "c" / "decided-2").read_text() == actions.STOP

    # without the saved state the same result passes the rung: the restore is what stopped it
    (tmp_path / "sweep" / ASHA_STATE).unlink()
    fresh, _ = _scheduler(tmp_path / "other" / "trials")
    fresh.on_trial_add(None, SimpleNamespace(trial_id="c"))
    _report(fresh, "c", 2, 0.1)
    assert not (tmp_path / "other" / "trials" / "c" / STOP_FILE).exists()
