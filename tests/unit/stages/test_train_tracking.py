"""The train stage's MLflow settings, decided on the driver: off by default, a local store under the run root,
a gs:// run root refused without a tracking URI (MLflow's file store is local only)."""
from __future__ import annotations

import pytest

from inpars_ray.errors import ConfigError
from inpars_ray.stages.train_config import TrainConfig
from inpars_ray.stages.train_tracking import MlflowLog, mlflow_settings, trial_mlflow


def test_off_by_default_and_then_nothing_is_opened(tmp_path):
    config = TrainConfig(base_model="x")
    assert not config.mlflow and mlflow_settings(config, tmp_path / "train") is None
    assert trial_mlflow(config, tmp_path / "tune" / "sweep-k", "t1") is None
    log = MlflowLog(None, config)
    log.log({"loss": 1.0}, 1)  # a no-op, no mlflow import
    log.close()


def test_the_default_store_is_under_the_run_root_for_train_and_tune(tmp_path):
    pytest.importorskip("mlflow")
    config = TrainConfig(base_model="x", mlflow=True)
    train = mlflow_settings(config, tmp_path / "run" / "train")
    assert train["tracking_uri"] == f"file:{tmp_path / 'run' / 'mlruns'}"
    assert (train["experiment_name"], train["run_name"]) == ("inpars-ray", "train")
    trial = trial_mlflow(config, tmp_path / "run" / "tune" / "sweep-abc", "t1")
    assert trial["tracking_uri"] == train["tracking_uri"]  # one store per run root
    assert (trial["experiment_name"], trial["run_name"]) == ("inpars-ray tune sweep-abc", "t1")
    given = TrainConfig(base_model="x", mlflow=True, mlflow_tracking_uri="sqlite:///m.db", mlflow_experiment="e")
    assert mlflow_settings(given, "gs://bucket/run/train")["tracking_uri"] == "sqlite:///m.db"
    assert trial_mlflow(given, "gs://bucket/run/tune/sweep-abc", "t2")["experiment_name"] == "e"


def test_a_gs_run_root_needs_a_tracking_uri():
    pytest.importorskip("mlflow")
    config = TrainConfig(base_model="x", mlflow=True)
    with pytest.raises(ConfigError, match="mlflow_tracking_uri"):
        mlflow_settings(config, "gs://bucket/run/train")
    with pytest.raises(ConfigError, match="mlflow_tracking_uri"):
        trial_mlflow(config, "gs://bucket/run/tune/sweep-abc", "t1")


def test_mlflow_settings_do_not_change_the_training_key():
    from inpars_ray.stages.train import _hash_payload

    plain, logged = TrainConfig(base_model="x"), TrainConfig(base_model="x", mlflow=True, mlflow_experiment="e")
    assert _hash_payload("k", plain) == _hash_payload("k", logged)


def test_in_batch_is_part_of_the_training_key_only_for_the_loss_that_reads_it():
    from inpars_ray.io.manifest import config_hash
    from inpars_ray.stages.train import _hash_payload

    def key(**kw):
        return config_hash(_hash_payload("k", TrainConfig(base_model="x", family="bi-encoder", **kw)))

    assert key(loss="contrastive") != key(loss="contrastive", in_batch="micro-batch")
    # the distillation losses never read it: their runs keep the keys they had before the setting existed
    assert key(loss="margin-mse") == key(loss="margin-mse", in_batch="micro-batch")
    assert "in_batch" not in _hash_payload("k", TrainConfig(base_model="x", family="bi-encoder", loss="kl"))["config"]
    # hard labels beside the teacher read it too; a weight of 0 keeps the keys of runs before the setting
    weighted = dict(loss="margin-mse", contrastive_weight=0.01)
    assert key(**weighted) != key(**weighted, in_batch="micro-batch") != key(loss="margin-mse")
    assert "contrastive_weight" not in _hash_payload("k", TrainConfig(base_model="x", family="bi-encoder",
                                                                      loss="margin-mse"))["config"]
