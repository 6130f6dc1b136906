"""The report is rebuilt from a run's artifacts alone: measures, paired t-test, better/worse counts, plots,
and one sentence saying whether InPars beats the start model (the same model untrained)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from inpars_ray import cli
from inpars_ray.errors import ConfigError
from inpars_ray.report import build_report, collections_report, compare, terminal_table
from inpars_ray.report_stats import holm

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
    # two systems against BM25: Holm's p beside the uncorrected one (zero-shot's p = 1 keeps the larger at 1)
    assert (c["p_holm"], z["p_holm"], c["holm_comparisons"]) == (pytest.approx(2 * c["p_value"]), 1.0, 2)
    assert "| nDCG@10 vs BM25 | Δ | p (uncorrected) | p (Holm) | better | worse | tied |" in report.markdown
    assert "| InPars | +0.2000 | 0.047 | 0.095 | 4 | 0 | 1 |" in report.markdown
    # one system against the start model: no correction, one p column
    assert "p_holm" not in inpars["vs_start_model"]["nDCG@10"]
    assert "| nDCG@10 vs start model (zero-shot) | Δ | p | better | worse | tied |" in report.markdown
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
    # Holm over the table's three comparisons (InPars and zero-shot vs BM25, InPars vs the start model):
    # p 0.0154 x 3 = 0.046, 0.0474 x 2 = 0.095, then 1.0
    assert "| tiny | 0.4400 | 0.6400 (+0.200, p=0.047, Holm p=0.095) | 0.5000 (+0.000, p=1.000, Holm p=1.000) | " \
           "+0.250 (p=0.015, Holm p=0.046) |" in report.markdown
    assert report.data["correction"].startswith("Holm's step-down")
    assert "| broken | missing" in report.markdown and (tmp_path / "all" / "report_collections.png").exists()


# --- the start model: every trained system compared with the untrained model it started from -------------
START = {"system": "zero-shot", "model": "all-MiniLM-L6-v2", "family": "bi-encoder"}
ZERO = [0.50, 0.40, 0.60, 0.30, 0.50, 0.70, 0.20, 0.45]


def shifted(diffs: list[float]) -> list[float]:
    return [round(z + d, 6) for z, d in zip(ZERO, diffs)]


def make_start_run(root: Path, systems: dict[str, list[float]], start_model: dict | None = START,
                   config: dict | None = None) -> Path:
    """A run folder with ``systems`` (name -> per-query nDCG@10; RR@10 is the same values halved), BM25
    first, and ``extra.start_model`` as the pipeline writes it (None: left out)."""
    listed = []
    for name, vals in systems.items():
        entry = write_system(root, name.replace(" ", "_").replace("(", "").replace(")", ""),
                             {"nDCG@10": vals, "RR@10": [v / 2 for v in vals]})
        entry["name"] = name
        listed.append(entry)
    extra: dict = {"systems": listed}
    if start_model is not None:
        extra["start_model"] = start_model
    (root / "manifest.json").write_text(json.dumps({
        "stage": "pipeline", "status": "complete",
        "config": {"dataset": "bundled/tiny-science", "split": "test", "measures": ["nDCG@10", "RR@10"],
                   **(config or {})},
        "timings": {}, "extra": extra}))
    return root


BM25 = [0.30, 0.20, 0.40, 0.10, 0.30, 0.50, 0.10, 0.30]
GAIN = [0.10, 0.12, 0.09, 0.11, 0.10, 0.13, 0.08, 0.10]      # clearly better on every query
SMALL = [0.10, -0.10, 0.05, -0.02, 0.00, 0.01, -0.03, 0.04]  # +0.00625 on average, p ~ 0.8
LOSS = [-0.05, -0.07, -0.04, -0.06, -0.05, -0.08, -0.04, -0.05]


def test_vs_start_model_is_a_paired_t_test_by_hand(tmp_path: Path):
    stats = pytest.importorskip("scipy.stats")
    teacher = shifted([0.2] * 4 + [0.25] * 4)
    root = make_start_run(tmp_path / "run", {"BM25": BM25, "zero-shot": ZERO, "teacher": teacher,
                                             "InPars": shifted(SMALL)})
    report = build_report(root)
    data = json.loads((root / "report.json").read_text())
    assert data["start_model"] == START
    by_name = {s["name"]: s for s in data["systems"]}
    assert [by_name[n]["role"] for n in ("BM25", "zero-shot", "teacher", "InPars")] == \
        ["baseline", "start model", "teacher", "trained"]
    # the start model's own row and the baseline are not compared with the start model; the teacher is
    assert "vs_start_model" not in by_name["BM25"] and "vs_start_model" not in by_name["zero-shot"]
    assert "vs_baseline" in by_name["zero-shot"] and "vs_start_model" in by_name["teacher"]
    inpars = by_name["InPars"]
    for measure, scale in (("nDCG@10", 1.0), ("RR@10", 0.5)):
        a = [round(z * scale, 6) for z in ZERO]
        b = [round(v * scale, 6) for v in shifted(SMALL)]
        diffs = [y - x for x, y in zip(a, b)]
        c = inpars["vs_start_model"][measure]
        assert c["queries"] == 8
        assert c["difference"] == pytest.approx(sum(diffs) / 8, abs=1e-9)
        assert c["p_value"] == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-6)
        assert (c["better"], c["worse"], c["tied"]) == (sum(d > 1e-6 for d in diffs), sum(d < -1e-6 for d in diffs),
                                                        sum(abs(d) <= 1e-6 for d in diffs))
    assert (inpars["vs_start_model"]["nDCG@10"]["better"], inpars["vs_start_model"]["nDCG@10"]["worse"]) == (4, 3)
    # vs BM25 stays as it was
    assert inpars["vs_baseline"]["nDCG@10"]["difference"] == pytest.approx(0.18125 + sum(SMALL) / 8)
    c = inpars["vs_start_model"]["nDCG@10"]
    # the teacher's p (< 0.001) is the smaller of the two: x 2; InPars' is the larger: x 1, kept
    assert c["p_holm"] == pytest.approx(c["p_value"]) and c["holm_comparisons"] == 2
    t = by_name["teacher"]["vs_start_model"]["nDCG@10"]
    assert t["p_holm"] == pytest.approx(2 * t["p_value"])
    assert f"| InPars | {c['difference']:+.4f} | {c['p_value']:.3f} | {c['p_value']:.3f} | 4 | 3 | 1 |" in report.markdown
    assert "| nDCG@10 vs start model (zero-shot) |" in report.markdown
    assert "| teacher (for information) | +0.2250 |" in report.markdown
    assert "uncorrected" in report.markdown
    # the teacher, far above the start model, is not what the headline speaks of
    assert data["headline"].startswith("InPars does not beat the start model (all-MiniLM-L6-v2, bi-encoder): "
                                       "+0.0063 nDCG@10 on 8 queries, p = ")
    assert "teacher" not in data["headline"] and [d["system"] for d in data["headline_detail"]] == ["InPars"]


def headline(tmp_path: Path, systems: dict[str, list[float]], **kw) -> str:
    report = build_report(make_start_run(tmp_path / "run", systems, **kw), plots=False)
    first = report.markdown.splitlines()[0]
    assert first == report.data["headline"] and terminal_table(report).splitlines()[0] == first
    return first


def test_headline_significant_gain(tmp_path: Path):
    stats = pytest.importorskip("scipy.stats")
    p = stats.ttest_rel(shifted(GAIN), ZERO).pvalue
    assert p < 0.001
    text = headline(tmp_path, {"BM25": BM25, "zero-shot": ZERO, "InPars": shifted(GAIN)})
    assert text == ("InPars beats the start model (all-MiniLM-L6-v2, bi-encoder) by +0.1037 nDCG@10 on 8 queries "
                    "(paired t-test p < 0.001).")


def test_headline_not_significant(tmp_path: Path):
    stats = pytest.importorskip("scipy.stats")
    p = stats.ttest_rel(shifted(SMALL), ZERO).pvalue
    assert p > 0.05
    text = headline(tmp_path, {"BM25": BM25, "zero-shot": ZERO, "InPars": shifted(SMALL)})
    assert text == ("InPars does not beat the start model (all-MiniLM-L6-v2, bi-encoder): +0.0063 nDCG@10 on 8 "
                    f"queries, p = {p:.3f} (not significant at 0.05).")


def test_headline_loss_and_tuned_second_sentence(tmp_path: Path):
    stats = pytest.importorskip("scipy.stats")
    p_loss = stats.ttest_rel(shifted(LOSS), ZERO).pvalue
    p_gain = stats.ttest_rel(shifted(GAIN), ZERO).pvalue
    assert p_loss < 0.001 and p_gain < 0.001
    text = headline(tmp_path, {"BM25": BM25, "zero-shot": ZERO, "InPars": shifted(LOSS),
                               "InPars (tuned)": shifted(GAIN)})
    assert text == ("InPars is below the start model (all-MiniLM-L6-v2, bi-encoder) by -0.0550 nDCG@10 on 8 queries "
                    "(paired t-test p < 0.001). InPars (tuned) beats the start model (all-MiniLM-L6-v2, bi-encoder) "
                    "by +0.1037 nDCG@10 on 8 queries (paired t-test p < 0.001).")
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [(d["system"], d["verdict"]) for d in data["headline_detail"]] == [("InPars", "below"),
                                                                              ("InPars (tuned)", "beats")]


def test_headline_without_start_model(tmp_path: Path):
    text = headline(tmp_path, {"BM25": BM25, "InPars": shifted(GAIN)}, start_model=None)
    assert text.startswith("This run has no start-model comparison (no zero-shot row: set inpars.zero_shot")
    assert "InPars vs BM25: +0.2850 nDCG@10 on 8 queries (paired t-test p < 0.001)." in text
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    assert data["start_model"] is None and all("vs_start_model" not in s for s in data["systems"])
    assert "vs start model" not in (tmp_path / "run" / "report.md").read_text()


def test_start_model_named_by_the_manifest_or_found_by_name(tmp_path: Path):
    # a row of another name, declared as the start model
    text = headline(tmp_path / "a", {"BM25": BM25, "untrained": ZERO, "InPars": shifted(GAIN)},
                    start_model={"system": "untrained", "model": "/cache/models/monot5-small", "family": "monot5"})
    assert text.startswith("InPars beats the start model (monot5-small, monot5) by +0.1037")
    # an older manifest: no extra.start_model, a zero-shot row, its model in config.inpars.zero_shot
    text = headline(tmp_path / "b", {"BM25": BM25, "zero-shot": ZERO, "InPars": shifted(GAIN)}, start_model=None,
                    config={"inpars": {"zero_shot": "local:minilm"}})
    assert text.startswith("InPars beats the start model (local:minilm) by +0.1037")
    # a declared start model that was never evaluated is no comparison
    text = headline(tmp_path / "c", {"BM25": BM25, "InPars": shifted(GAIN)}, start_model=START)
    assert text.startswith("This run has no start-model comparison")


def test_collections_table_shows_the_difference_from_the_start_model(tmp_path: Path):
    runs = {"with": make_start_run(tmp_path / "with", {"BM25": BM25, "zero-shot": ZERO, "InPars": shifted(GAIN)}),
            "without": make_start_run(tmp_path / "without", {"BM25": BM25, "InPars": shifted(GAIN)},
                                      start_model=None)}
    report = collections_report(runs, tmp_path / "all")
    assert "| collection | BM25 | zero-shot | InPars | InPars − start model |" in report.markdown
    assert "| 0.5600 (+0.285, p<0.001, Holm p<0.001) | +0.104 (p<0.001, Holm p<0.001) |" in \
        report.markdown.split("| with |")[1].split("\n")[0]
    assert "| without | 0.2750 | – | 0.5600 (+0.285, p<0.001, Holm p<0.001) | – |" in report.markdown
    rows = {r["collection"]: r for r in report.data["collections"]}
    assert rows["with"]["systems"]["InPars"]["vs_start_model"]["difference"] == pytest.approx(0.10375)
    assert rows["with"]["headline"].startswith("InPars beats") and rows["without"]["start_model"] is None


# --- Holm's correction when a table compares several systems with one reference ------------------------------
def test_holm_matches_the_textbook_example():
    """Holm (1979)'s procedure on four p-values (the Wikipedia "Holm-Bonferroni method" example): sorted
    0.005, 0.01, 0.03, 0.04 are multiplied by 4, 3, 2, 1 and kept non-decreasing: 0.02, 0.03, 0.06, 0.06
    (0.04 x 1 = 0.04 rises to 0.06), so at 0.05 H1 and H4 are rejected, H2 and H3 not."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p < 0.05 for p in adjusted] == [True, False, False, True]
    # capped at 1; a missing test stays missing and does not count in m
    assert holm([0.6, None, 0.2]) == [pytest.approx(0.6), None, pytest.approx(0.4)]
    assert holm([0.9, 0.8]) == [1.0, 1.0] and holm([]) == []


def test_holm_agrees_with_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    ps = [0.001, 0.2, 0.013, 0.04, 0.04, 0.5, 0.0004]
    assert holm(ps) == pytest.approx(list(multitest.multipletests(ps, method="holm")[1]))


# --- BEIR's identical-id convention, as the evaluation summaries recorded it --------------------------------------
def _with_summaries(root: Path, summaries: dict[str, dict]) -> Path:
    manifest = json.loads((root / "manifest.json").read_text())
    for system in manifest["extra"]["systems"]:
        if system["name"] in summaries:
            system["summary"] = system["per_query"].replace(".per_query.tsv", ".json")
            (root / system["summary"]).write_text(json.dumps(summaries[system["name"]]))
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_report_says_which_identical_id_hits_were_dropped(tmp_path: Path):
    on = {"ignore_identical_ids": True}
    root = _with_summaries(make_run(tmp_path / "run"), {"BM25": {**on, "identical_ids_dropped": 3},
                                                        "InPars": {**on, "identical_ids_dropped": 2},
                                                        "zero-shot": {**on, "identical_ids_dropped": 0}})
    report = build_report(root, plots=False)
    assert report.data["evaluation"] == {"ignore_identical_ids": True,
                                         "identical_ids_dropped": {"BM25": 3, "InPars": 2, "zero-shot": 0}}
    assert ("a hit whose document id equals its query id was dropped before measuring (hits dropped: BM25 3, "
            "InPars 2, zero-shot 0)") in report.markdown
    assert "ignore_identical_ids" in terminal_table(report)

    off = _with_summaries(make_run(tmp_path / "off"), {n: {"ignore_identical_ids": False, "identical_ids_dropped": 0}
                                                       for n in ("BM25", "InPars", "zero-shot")})
    assert "Hits whose document id equals the query id were kept" in build_report(off, plots=False).markdown
    mixed = _with_summaries(make_run(tmp_path / "mixed"), {"BM25": {**on, "identical_ids_dropped": 1},
                                                           "InPars": {"ignore_identical_ids": False}})
    data = build_report(mixed, plots=False).data["evaluation"]
    assert data["ignore_identical_ids"] is None and data["identical_ids_dropped"] == {"BM25": 1, "InPars": 0}
    # a run evaluated before the setting existed says nothing about it
    old = build_report(make_run(tmp_path / "old"), plots=False)
    assert "evaluation" not in old.data and "identical" not in old.markdown


# --- training curves: train/history.json, else the train manifest's history (older runs), else none -------------
def test_training_curves_from_the_history_file_or_an_old_runs_manifest(tmp_path: Path):
    from inpars_ray.report import read_training

    history = [{"step": s, "loss": 2.0 / s, "lr": 1e-3, "examples": 8, **({"dev_ndcg@10": 0.1 * s} if s % 2 == 0
                                                                          else {})} for s in range(1, 7)]
    root = make_run(tmp_path / "run")
    (root / "train" / "history.json").write_text(json.dumps(history))
    report = build_report(root)
    assert read_training(root) == [("train", history)]
    assert (root / "report_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![report_training](report_training.png)" in report.markdown

    # a run from before the file existed: the curve comes from the train stage's manifest
    old = make_run(tmp_path / "old")
    (old / "train" / "manifest.json").write_text(json.dumps(
        {"stage": "train", "status": "complete", "timings": {"total": 20.0}, "extra": {"history": history}}))
    assert read_training(old) == [("train", history)]
    assert "report_training.png" in build_report(old).markdown

    # no history anywhere: no curve, the rest of the report as before
    bare = build_report(make_run(tmp_path / "bare"))
    assert "report_training" not in bare.markdown and not (tmp_path / "bare" / "report_training.png").exists()
    assert len(bare.plots) == 2


def test_stage_times_leave_out_a_teacher_folder_the_run_skipped(tmp_path: Path):
    from inpars_ray.report import stage_times

    root = make_run(tmp_path / "run")
    (root / "teacher").mkdir()
    (root / "teacher" / "manifest.json").write_text(json.dumps(  # an earlier run's teacher stage
        {"stage": "teacher", "status": "complete", "timings": {"total": 12.0}}))
    assert "teacher" in [row[0] for row in stage_times(root)]
    run = json.loads((root / "manifest.json").read_text())
    run["extra"]["teacher_skipped"] = "train.loss contrastive trains on hard labels"
    (root / "manifest.json").write_text(json.dumps(run))
    assert "teacher" not in [row[0] for row in stage_times(root)]
