"""The pure parts of benchmarks/effectiveness.py: lever overlays merged over the base config, and the rows,
paired tests, summary and table built from a run's files (fake per-query files here; the engine is not run)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def eff():
    spec = importlib.util.spec_from_file_location("bench_effectiveness", ROOT / "benchmarks" / "effectiveness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_overlay_merges_mappings_and_replaces_the_rest_without_touching_its_inputs(eff):
    base = {"a": 1, "inpars": {"train": {"lr": 1e-5, "loss": "contrastive"}, "teacher": {"rankers": [{"m": 1}]}}}
    over = {"inpars": {"train": {"loss": "margin-mse"}, "teacher": None}, "b": [1, 2]}
    merged = eff.overlay(base, over, {"inpars": {"train": {"query_only": True}}})
    assert merged == {"a": 1, "b": [1, 2], "inpars": {"train": {"lr": 1e-5, "loss": "margin-mse", "query_only": True},
                                                      "teacher": None}}
    assert base["inpars"]["train"] == {"lr": 1e-5, "loss": "contrastive"}  # not modified
    merged["b"].append(3)
    assert over["b"] == [1, 2]  # deep copies


def test_levers_pin_their_keys_and_validate_against_the_engine_config(eff):
    from inpars_ray.config import PipelineConfig

    levers = eff.lever_overlays(eff.MPNET_TEACHER)
    assert list(levers)[:3] == ["hard-labels", "hard-labels+query-only", "hard-labels+wise"]  # mine changes once
    base = eff.load_base()
    assert base["inpars"]["generate"]["num_docs"] == 100 and base["inpars"]["rerank"]["depth"] == 20
    assert base["inpars"]["train"]["epochs"] == 4  # the recorded results' recipe, whatever the demo trains
    assert base["inpars"]["train"]["micro_batch_size"] == 8
    for name, lever in levers.items():
        config = eff.lever_config(base, lever, seed=2, out_dir="/tmp/x")
        resolved = PipelineConfig.from_dict(config)  # the engine accepts every lever
        ic = resolved.inpars
        assert ic.seed == 2 and resolved.out_dir == "/tmp/x" and ic.zero_shot == "start"
        assert ic.train.query_only == ("query-only" in name)
        assert ic.train.interpolate == (0.5 if "wise" in name else 1.0)
        assert (ic.mine.dense is not None) == ("dense" in name)
        assert ic.generate.queries_per_doc == (3 if "sampled" in name else 1)
        assert ic.generate.fewshot_sets == (4 if "fewshot-sets" in name else 1)
        assert ic.generate.titles == (False if "no-titles" in name else "auto" if "titles-auto" in name else True)
        assert ic.generate.untitled_retry == (("copies", "unfinished") if "untitled-retry" in name else ())
        if name.startswith("teacher"):
            assert ic.train.loss == "margin-mse" and ic.mine.negatives == 4
            assert ic.train.contrastive_weight == (0.01 if "+hard" in name else 0.0)
            assert "+hard" not in name or ic.train.in_batch == "batch"
            assert ic.teacher.rankers[0].model == "local:mpnet" and ic.teacher.rankers[0].max_length == 192
        else:
            assert ic.train.loss == "contrastive" and ic.teacher is None
            assert ic.mine.negatives == (4 if "dense" in name else 1)
            assert ic.train.in_batch == ("batch" if "whole-batch" in name else "micro-batch")
    assert eff.config_key(eff.lever_config(base, levers["teacher"], 1, "/o")) != \
        eff.config_key(eff.lever_config(base, levers["teacher"], 2, "/o"))


def _fake_run(folder: Path, zero_shot: dict[str, float], inpars: dict[str, float]) -> None:
    """A run's copied files as the engine writes them: manifest (extra.systems) and per-query TSVs."""
    systems = []
    for name, sub, values in (("zero-shot", "zero-shot", zero_shot), ("InPars", "rerank", inpars)):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "eval.test.per_query.tsv").write_text(
            "query_id\tmeasure\tvalue\n" + "".join(f"{q}\tnDCG@10\t{v:.6f}\n{q}\tRR@10\t{v / 2:.6f}\n"
                                                   for q, v in values.items()))
        mean = sum(values.values()) / len(values)
        systems.append({"name": name, "per_query": f"{sub}/eval.test.per_query.tsv", "queries": len(values),
                        "measures": {"nDCG@10": mean, "RR@10": mean / 2}})
    manifest = {"extra": {"systems": systems, "start_model": {"model": "local:minilm", "family": "bi-encoder"}},
                "timings": {"train": 3.0}, "versions": {"python": "3"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "run.json").write_text(json.dumps({"wall_seconds": 12.5, "reused_stages": ["generate", "mine"]}))


def test_rows_summary_and_table_from_fake_per_query_files(eff, tmp_path):
    from scipy import stats

    zs = {"q1": 0.5, "q2": 0.2, "q3": 0.8, "q4": 0.0}
    up1 = {"q1": 0.6, "q2": 0.3, "q3": 0.8, "q4": 0.1}   # better 3, tied 1
    up2 = {"q1": 0.7, "q2": 0.1, "q3": 0.9, "q4": 0.05}  # better 3, worse 1
    _fake_run(tmp_path / "a1", zs, up1)
    _fake_run(tmp_path / "a2", zs, up2)
    row1, pq1 = eff.run_row("lever-a", 1, tmp_path / "a1")
    row2, pq2 = eff.run_row("lever-a", 2, tmp_path / "a2")
    assert row1["delta"]["nDCG@10"] == pytest.approx(0.075)
    assert row1["delta"]["RR@10"] == pytest.approx(0.0375)
    t = row1["paired"]["nDCG@10"]
    assert (t["better"], t["worse"], t["tied"], t["queries"]) == (3, 0, 1, 4)
    assert t["p_value"] == pytest.approx(stats.ttest_rel([up1[q] for q in zs], list(zs.values())).pvalue)
    assert row1["wall_seconds"] == 12.5 and row1["reused_stages"] == ["generate", "mine"]

    summary = eff.summarize([row1, row2], {("lever-a", 1): pq1, ("lever-a", 2): pq2})["lever-a"]
    d1, d2 = 0.075, (0.2 - 0.1 + 0.1 + 0.05) / 4
    assert summary["delta_mean"]["nDCG@10"] == pytest.approx((d1 + d2) / 2)
    assert summary["delta_std"] == pytest.approx(abs(d1 - d2) / math.sqrt(2))
    assert (summary["delta_min"], summary["delta_max"]) == (pytest.approx(min(d1, d2)), pytest.approx(max(d1, d2)))
    pooled = summary["pooled"]
    assert pooled["queries"] == 8 and (pooled["better"], pooled["worse"], pooled["tied"]) == (6, 1, 1)
    both = [up1[q] for q in zs] + [up2[q] for q in zs]
    assert pooled["p_value"] == pytest.approx(stats.ttest_rel(both, list(zs.values()) * 2).pvalue)
    assert eff.best_lever({"lever-a": summary}) == "lever-a"

    result = {"dataset": "d", "rerank_depth": 20, "num_docs": 100, "seeds": [1, 2], "test_queries": 4,
              "start_model": "local:minilm", "summary": {"lever-a": summary}, "runs": [row1, row2]}
    table = eff.markdown(result)
    assert "| lever-a | 0.3750 |" in table and f"{(d1 + d2) / 2:+.4f}" in table and "6 / 1 / 1" in table
    assert "| lever-a | 1 | 0.3750 | 0.4500 | +0.0750 |" in table


def test_identical_systems_tie_with_p_one_and_missing_systems_are_named(eff, tmp_path):
    same = {"q1": 0.5, "q2": 0.2}
    assert eff.paired(same, dict(same)) == {"queries": 2, "difference": 0.0, "p_value": 1.0, "better": 0,
                                            "worse": 0, "tied": 2}
    (tmp_path / "manifest.json").write_text(json.dumps({"extra": {"systems": [{"name": "BM25"}]}}))
    with pytest.raises(ValueError, match="zero-shot"):
        eff.run_row("x", 1, tmp_path)


def test_reused_stages_are_read_from_the_stage_lines(eff):
    log = ("✓ index            already complete: documents=288\n"
           "✓ generate         already complete: documents=16, queries=16\n"
           "✓ train            steps=2\n")
    assert eff.reused_from_log(log) == ["index", "generate"]


def test_compare_runs_pools_finished_run_folders_with_the_benchmarks_own_test(tmp_path, capsys):
    from scipy import stats

    spec = importlib.util.spec_from_file_location("bench_compare_runs", ROOT / "benchmarks" / "compare_runs.py")
    compare_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_runs)
    zs = {"q1": 0.5, "q2": 0.2, "q3": 0.8}
    runs = {"s1": {"q1": 0.6, "q2": 0.2, "q3": 0.7}, "s2": {"q1": 0.9, "q2": 0.4, "q3": 0.8}}
    for name, values in runs.items():
        _fake_run(tmp_path / name, zs, values)
    assert compare_runs.main([str(tmp_path / "s1"), str(tmp_path / "s2"), "--json", str(tmp_path / "out.json")]) == 0
    pooled = json.loads((tmp_path / "out.json").read_text())["summary"]["pooled"]
    both = [runs["s1"][q] for q in zs] + [runs["s2"][q] for q in zs]
    assert pooled["queries"] == 6 and (pooled["better"], pooled["worse"], pooled["tied"]) == (3, 1, 2)
    assert pooled["p_value"] == pytest.approx(stats.ttest_rel(both, list(zs.values()) * 2).pvalue)
    out = capsys.readouterr().out
    assert "pooled: +0.1000 nDCG@10 over 6 queries" in out and "3 better / 1 worse / 2 tied" in out
