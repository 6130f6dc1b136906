"""Training curves: the train stage writes its per-step history beside the model and, with ``train.mlflow``,
logs every step to a real MLflow store (offline, a local file store under the run root) through Ray's
``setup_mlflow`` inside the Train worker; the report draws the curve."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inpars_ray import schema as S
from inpars_ray.io import artifacts
from inpars_ray.report_plots import plot_training
from inpars_ray.stages.train import train
from inpars_ray.stages.train_config import TrainConfig
from inpars_ray.testing.tiny_t5 import build_tiny_monot5, build_tiny_triples

pytestmark = pytest.mark.usefixtures("ray_session")


def _dev_set(triples: Path, out: Path) -> dict[str, str]:
    """A small dev set from the triples: each query's positive (relevant) and negative, with their texts."""
    table = pq.read_table(triples).slice(0, 12)
    pairs = pa.table({S.QUERY_ID: table[S.QUERY_ID].to_pylist() * 2, S.QUERY: table[S.QUERY].to_pylist() * 2,
                      S.DOC_ID: table[S.POS_DOC_ID].to_pylist() + table[S.NEG_DOC_ID].to_pylist(),
                      S.TEXT: table[S.POS_TEXT].to_pylist() + table[S.NEG_TEXT].to_pylist()})
    qrels = pa.table({S.QUERY_ID: table[S.QUERY_ID].to_pylist(), S.DOC_ID: table[S.POS_DOC_ID].to_pylist(),
                      S.RELEVANCE: [1] * table.num_rows}, schema=S.QRELS)
    out.mkdir(parents=True)
    pq.write_table(pairs, out / "dev_pairs.parquet", **artifacts.PARQUET_WRITE)
    pq.write_table(qrels, out / "dev_qrels.parquet", **artifacts.PARQUET_WRITE)
    return {"pairs": str(out / "dev_pairs.parquet"), "qrels": str(out / "dev_qrels.parquet")}


def test_history_beside_the_model_and_every_step_in_mlflow(tmp_path: Path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this process reads the store the worker wrote
    model = build_tiny_monot5(tmp_path / "tiny-monot5")
    triples = build_tiny_triples(tmp_path / "triples", files=1, limit=48)
    run_root = tmp_path / "run"
    cfg = TrainConfig(base_model=str(model), batch_size=16, micro_batch_size=8, max_length=96, lr=3e-3,
                      max_steps=6, validate_every=3, checkpoint_every=100, mlflow=True)
    manifest = train(triples, run_root / "train", cfg, dev=_dev_set(triples, tmp_path / "dev"))

    # the history beside the model, the same as the manifest's (whose counts stay)
    history = json.loads((run_root / "train" / "history.json").read_text())
    assert history == manifest["extra"]["history"] and [h["step"] for h in history] == list(range(1, 7))
    assert manifest["counts"]["steps"] == 6 and manifest["extra"]["history_file"].endswith("train/history.json")
    assert [h["step"] for h in history if "dev_ndcg@10" in h] == [3, 6]

    # every step in the local store under the run root, as Ray's setup_mlflow opened it in the worker
    store = f"file:{run_root / 'mlruns'}"
    assert manifest["extra"]["mlflow"] == {"tracking_uri": store, "experiment_name": "inpars-ray", "run_name": "train"}
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("inpars-ray")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "train" and run.info.status == "FINISHED"
    assert float(run.data.params["lr"]) == pytest.approx(3e-3) and run.data.params["family"] == "monot5"
    assert run.data.tags["inpars_ray.stage"] == "train"
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert losses == [(h["step"], pytest.approx(h["loss"])) for h in history]
    dev = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "dev_ndcg_at_10"))
    assert dev == [(h["step"], pytest.approx(h["dev_ndcg@10"])) for h in history if "dev_ndcg@10" in h]

    # the report's curve from this history
    png = plot_training([("train", history)], tmp_path / "curve.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_mlflow_nothing_is_logged_but_the_history_is_written(tmp_path: Path):
    model = build_tiny_monot5(tmp_path / "tiny-monot5")
    triples = build_tiny_triples(tmp_path / "triples", files=1, limit=16)
    cfg = TrainConfig(base_model=str(model), batch_size=16, micro_batch_size=8, max_length=96, max_steps=2)
    manifest = train(triples, tmp_path / "run" / "train", cfg)
    assert json.loads((tmp_path / "run" / "train" / "history.json").read_text()) == manifest["extra"]["history"]
    assert "mlflow" not in manifest["extra"] and not (tmp_path / "run" / "mlruns").exists()
