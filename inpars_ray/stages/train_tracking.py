"""What the train stage records of its run beside the model: the per-step history (``history.json``), and,
when ``train.mlflow`` is on, MLflow logging through Ray's own integration.

The history is what the report draws as training curves (:mod:`inpars_ray.report_plots`): each step's loss,
learning rate and examples, and the dev set's nDCG@10 where one is scored (tune trials). MLflow logging
uses ``ray.air.integrations.mlflow.setup_mlflow`` inside the Ray Train worker (rank 0 only; the others get
Ray's no-op module), for the train stage and for every tune trial (a trial runs the train stage). The default
store is a local one under the run root, ``file:<run root>/mlruns``, so nothing leaves the machine unless a
tracking URI says so.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from inpars_ray.errors import ConfigError
from inpars_ray.io import storage
from inpars_ray.runtime.deps import require

logger = logging.getLogger(__name__)

HISTORY = "history.json"  #: the per-step history, beside the model in the train stage's folder
MLRUNS = "mlruns"  #: the default MLflow store's folder, under the run root
EXPERIMENT = "inpars-ray"  #: the default MLflow experiment
#: the per-step values logged as MLflow metrics, by their MLflow names (the dev measure only at the steps it is
#: scored; MLflow's metric names take no "@")
METRICS = {"loss": "loss", "lr": "lr", "examples_per_s": "examples_per_s", "dev_ndcg@10": "dev_ndcg_at_10"}


def write_history(out: storage.PathLike, history: list[dict[str, Any]]) -> str:
    """Write the per-step history as ``<out>/history.json`` (local or gs://); returns its URI."""
    where = storage.location(out).join(HISTORY)
    where.write_json(history)
    return where.uri


def default_tracking_uri(stage_dir: storage.PathLike) -> str:
    """``file:<run root>/mlruns`` for a stage folder directly under the run root (``train/``, ``tune/``).

    A ``gs://`` run root has no local folder for it: MLflow's file store is local only, so a tracking URI
    must be given (an MLflow server, or a ``sqlite:///`` or ``file:`` store)."""
    loc = storage.location(stage_dir)
    if not loc.is_local:
        raise ConfigError(f"train.mlflow with the run root {loc.parent.uri}: MLflow's file store is local only; set "
                          "train.mlflow_tracking_uri (an MLflow server, or a sqlite:/// or file: store)")
    return "file:" + str(loc.local_path().resolve().parent / MLRUNS)


def mlflow_settings(config, out: storage.PathLike, **overrides: Any) -> dict[str, Any] | None:
    """What the Train worker passes to ``setup_mlflow`` for a run writing to ``out``, or None when
    ``config.mlflow`` is off. ``overrides`` (a tune trial's experiment, run name, store) win."""
    if not config.mlflow:
        return None
    require("mlflow", "MLflow logging (train.mlflow)")
    loc = storage.location(out)
    settings = {"tracking_uri": config.mlflow_tracking_uri, "experiment_name": config.mlflow_experiment or EXPERIMENT,
                "run_name": loc.name, "tags": {"inpars_ray.stage": "train", "inpars_ray.out": loc.uri}}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings["tracking_uri"] is None:
        settings["tracking_uri"] = default_tracking_uri(out)
    return settings


class MlflowLog:
    """The MLflow run of one Train worker: opened with Ray's ``setup_mlflow`` (rank 0 logs; the other
    ranks get its no-op module), one ``log`` per step, ``close`` at the end. Without settings, nothing."""

    def __init__(self, settings: dict[str, Any] | None, params: Any) -> None:
        self._mlflow = None
        if settings is None:
            return
        from ray.air.integrations.mlflow import setup_mlflow

        if str(settings["tracking_uri"]).startswith("file:"):
            # MLflow 3 refuses its file store unless a process opts in; it is the one local store that needs
            # no database packages (mlflow-skinny declares none), so the default store opts in for this worker
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        is_instance = dataclasses.is_dataclass(params) and not isinstance(params, type)
        values = dataclasses.asdict(params) if is_instance else dict(params)
        self._mlflow = setup_mlflow(config={k: v for k, v in values.items() if v is not None},
                                    tracking_uri=settings["tracking_uri"],
                                    experiment_name=settings["experiment_name"], run_name=settings["run_name"],
                                    tags=settings.get("tags"), create_experiment_if_not_exists=True,
                                    rank_zero_only=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self._mlflow is not None:
            self._mlflow.log_metrics({name: float(metrics[k]) for k, name in METRICS.items()
                                      if metrics.get(k) is not None}, step=step)

    def close(self) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None


def trial_mlflow(config, sweep_dir: storage.PathLike, trial_id: str) -> dict[str, Any] | None:
    """A tune trial's MLflow settings (None when ``config.mlflow`` is off): the experiment ``inpars-ray tune
    <sweep folder>``, a run named after the trial, and the run root's store (a sweep lives in
    ``<run root>/tune/sweep-<key>``)."""
    if not config.mlflow:
        return None
    sweep = storage.location(sweep_dir)
    return {"experiment_name": config.mlflow_experiment or f"{EXPERIMENT} tune {sweep.name}", "run_name": trial_id,
            "tracking_uri": config.mlflow_tracking_uri or default_tracking_uri(sweep.parent),
            "tags": {"inpars_ray.stage": "tune", "inpars_ray.sweep": sweep.uri, "inpars_ray.trial": trial_id}}
