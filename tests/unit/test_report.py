"""The report is rebuilt from a run's artifacts alone: measures, paired t-test, better/worse counts, plots."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from inpars_ray import cli
from inpars_ray.errors import ConfigError
from inpars_ray.report import build_report, collections_report, compare

MEASURES = ("nDCG@10", "RR@10")


def write_system(root: Path, folder: str, values: dict[str, list[float]]) -> dict:
    (root / folder).mkdir(parents=True, exist_ok=True)
    path = root / folder / "eval.test.per_query.tsv"
    with open(path, "w") as fh:
        fh.write("query_id\tmeasure\tvalue\n")
        for measure, vals in values.items():
            fh.writelines(f"q{i}\t{measure}\t{v:.6f}\n" for i, v in enumerate(vals))
    return {"name": folder, "run": f"{folder}/run.test.trec", "per_query": f"{folder}/eval.test.per_query.tsv"}


def make_run(root: Path) -> Path:
    base = [0.5, 0.5, 0.5, 0.5, 0.2]
    systems = [write_system(root, "bm25", {m: base for m in MEASURES}),
               # q0..q3 better by 0.1..0.4, q4 equal
               write_system(root, "rerank", {m: [0.6, 0.7, 0.8, 0.9, 0.2] for m in MEASURES}),
               # a third system, measured on fewer queries (q4 left out): compared on the common ones
               write_system(root, "zeroshot", {m: [0.4, 0.5, 0.6, 0.5] for m in MEASURES})]
    systems[0]["name"], systems[1]["name"], systems[2]["name"] = "BM25", "InPars", "zero-shot"
    for stage, folder, seconds in (("index", "index", 3.0), ("generate", "generate", 40.0), ("train", "train", 20.0)):
        (root / folder).mkdir(exist_ok=True)
        (root / folder / "manifest.json").write_text(json.dumps(
            {"stage": stage, "status": "complete", "timings": {"total": seconds}}))
    (root / "manifest.json").write_text(json.dumps({
        "stage": "pipeline", "status": "complete", "config": {"dataset": "bundled/tiny-science", "split": "test"},
        "timings": {"index": 0.1, "generate": 40.0, "train": 20.5, "evaluate_bm25": 0.4},
        "extra": {"systems": systems}}))
    return root


def test_report_from_artifacts(tmp_path: Path, capsys):
    root = make_run(tmp_path / "run")
    report = build_report(root)
    inpars, zero = report.data["systems"][1], report.data["systems"][2]
    c = inpars["vs_baseline"]["nDCG@10"]
    assert (c["better"], c["worse"], c["tied"], c["queries"]) == (4, 0, 1, 5)
    assert c["difference"] == pytest.approx(0.2)
    # differences 0.1, 0.2, 0.3, 0.4, 0: t = 0.2 / (0.158114 / sqrt 5) = 2.8284 with 4 degrees of freedom
    assert c["p_value"] == pytest.approx(0.04742, abs=1e-4)
    z = zero["vs_baseline"]["nDCG@10"]
    assert (z["queries"], z["better"], z["worse"], z["tied"]) == (4, 1, 1, 2)
    assert "| InPars | +0.2000 | 0.047 | 4 | 0 | 1 |" in report.markdown
    for name in ("report.md", "report.json", "report_per_query.png", "report_stage_times.png"):
        assert (root / name).stat().st_size > 0, name
    times = {row["stage"]: row for row in report.data["stage_seconds"]}
    assert times["index"]["earlier_run"] and not times["generate"]["earlier_run"]

    # the verb rebuilds the same report from the files alone
    (root / "report.md").unlink()
    assert cli.main(["report", str(root)]) == 0
    assert (root / "report.md").read_text() == report.markdown
    assert "| InPars | +0.2000" in capsys.readouterr().out


def test_report_errors_name_the_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="manifest.json does not exist"):
        build_report(tmp_path)
    root = make_run(tmp_path / "run")
    (root / "rerank" / "eval.test.per_query.tsv").unlink()
    with pytest.raises(ConfigError, match="per-query values of InPars"):
        build_report(root)


def test_identical_systems_and_collections_table(tmp_path: Path):
    same = compare({"a": 0.5, "b": 0.1}, {"a": 0.5, "b": 0.1})
    assert (same["p_value"], same["tied"], same["difference"]) == (1.0, 2, 0.0)
    runs = {"tiny": make_run(tmp_path / "tiny"), "broken": tmp_path / "nothing"}
    report = collections_report(runs, tmp_path / "all", published={"tiny": {"InPars-v2": 0.7}})
    assert "| tiny | 0.4400 | 0.6400 (+0.200, p=0.047) |" in report.markdown
    assert "| broken | missing" in report.markdown and (tmp_path / "all" / "report_collections.png").exists()
