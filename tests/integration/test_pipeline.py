"""The main job end to end on the bundled collection with tiny local models; a rerun redoes nothing."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from inpars_ray.io.manifest import read_manifest
from inpars_ray.pipeline import PipelineConfig, run_pipeline
from inpars_ray.report import build_report
from tests.conftest import BUNDLED

STAGE_MANIFESTS = ["index/manifest.json", "bm25/run.test.trec.manifest.json", "generate/manifest.json",
                   "filter/manifest.json", "mine/manifest.json", "train/manifest.json",
                   "rerank/run.test.trec.manifest.json"]


def test_full_pipeline_runs_and_resumes(ray_session, tmp_path: Path):
    config = PipelineConfig(dataset=str(BUNDLED), out_dir=str(tmp_path / "run"))
    summary = run_pipeline(config)
    root = tmp_path / "run"
    for rel in STAGE_MANIFESTS:
        manifest = json.loads((root / rel).read_text())
        assert manifest["status"] == "complete", rel
    counts = read_manifest(root)["counts"]
    assert counts["generate_sampled"] == config.inpars.generate.num_docs
    # every sampled document ends with a query or an error row, and the filter accounts for each row
    assert counts["generate_rows"] == counts["generate_sampled"]
    assert counts["filter_kept"] + sum(v for k, v in counts.items() if k.startswith("filter_dropped_")) \
        == counts["generate_rows"]
    assert counts["train_steps"] >= 1 and (root / "train" / "model" / "config.json").exists()
    assert set(summary["inpars"]) == set(summary["bm25"]) and 0.0 <= summary["inpars"]["nDCG@10"] <= 1.0
    # the report is built from the run's files: both systems, compared on the same queries
    report = build_report(root)
    # BM25, the start model untrained (inpars.zero_shot defaults to it), and the trained model
    assert [s["name"] for s in report.data["systems"]] == ["BM25", "zero-shot", "InPars"]
    assert report.data["systems"][2]["means"]["nDCG@10"] == pytest.approx(summary["inpars"]["nDCG@10"], abs=1e-5)
    start = read_manifest(root)["extra"]["start_model"]
    assert start["system"] == "zero-shot" and start["family"] == "monot5"
    assert all(p.exists() for p in report.plots)
    assert sorted(p.name for p in report.plots) == ["report_per_query.png", "report_stage_times.png", "report_training.png"]

    before = {rel: (root / rel).stat().st_mtime_ns for rel in STAGE_MANIFESTS}
    again = run_pipeline(config)
    assert again["bm25"] == summary["bm25"] and again["inpars"] == summary["inpars"]
    assert {rel: (root / rel).stat().st_mtime_ns for rel in STAGE_MANIFESTS} == before  # nothing was redone

    # more negatives: mine, then train (new triples) and rerank (a retrained model: same files, same sizes,
    # another training key in its manifest) rerun; nothing upstream does
    inpars = config.inpars
    more = dataclasses.replace(config, inpars=dataclasses.replace(
        inpars, mine=dataclasses.replace(inpars.mine, negatives=inpars.mine.negatives + 2)))
    run_pipeline(more)
    after = {rel: (root / rel).stat().st_mtime_ns for rel in STAGE_MANIFESTS}
    assert {rel for rel in STAGE_MANIFESTS if after[rel] != before[rel]} == {
        "mine/manifest.json", "train/manifest.json", "rerank/run.test.trec.manifest.json"}
    assert read_manifest(root / "train" / "model")["trained_from"] == read_manifest(root / "train")["config_hash"]


@pytest.mark.slow
def test_consistency_strategy_trains_on_the_candidates_then_mines_only_consistent_queries(ray_session, tmp_path):
    from inpars_ray.config import merge
    from inpars_ray.io.manifest import config_hash

    root = tmp_path / "run"
    config = merge(PipelineConfig(dataset=str(BUNDLED), out_dir=str(root)),
                   {"inpars": {"filter": {"strategy": "consistency", "consistency_k": 10, "consistency_depth": 10}}},
                   "test")
    run_pipeline(config)
    filt, check, mine = (read_manifest(root / d) for d in ("filter", "consistency", "mine"))
    # InPars-light: a ranker trained on every candidate, then the check, then the final mine on the kept ones
    # (k = depth: the tiny random ranker keeps each query whose source BM25 retrieves at all)
    assert (root / "candidates-ranker" / "train" / "model" / "config.json").exists()
    assert check["status"] == "complete" and check["config"]["consistency"]["k"] == 10
    assert check["counts"]["candidates"] == filt["counts"]["kept"]
    assert check["counts"]["kept"] + check["counts"]["dropped_inconsistent"] == check["counts"]["candidates"]
    assert mine["config"]["queries"] == config_hash(check)  # mine read the consistency stage's output
    assert mine["counts"]["queries"] == check["counts"]["kept"]
