"""jobs/full_beir.py follows BEIR's conventions: beir/cqadupstack runs as its 12 forums and is reported as their
mean; the licensed collections are listed as needing a local copy, with how to point at one. The pipelines
are replaced by a stand-in that records what it was asked to run (the real ones: test_full_beir.py)."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
import full_beir  # noqa: E402

from inpars_ray.io.catalog import CQADUPSTACK_FORUMS, LICENSED  # noqa: E402

#: the stand-in's nDCG@10 per forum: 0.30, 0.31, ... so the mean is known
FIGURES = {f"beir/cqadupstack/{forum}": round(0.30 + i / 100, 2) for i, forum in enumerate(CQADUPSTACK_FORUMS)}


@pytest.fixture()
def ran(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """Replaces the pipelines: each collection completes with its FIGURES value, except those listed in
    ``ran["fail"]``; returns what each run was given."""
    given: dict[str, dict] = {"fail": {}}
    lock = threading.Lock()

    def run_one(outcome: full_beir.Outcome, data: dict) -> full_beir.Outcome:
        with lock:
            given[outcome.dataset] = data
        if outcome.dataset in given["fail"]:
            outcome.status, outcome.error = "failed", "DownloadError: boom"
        else:
            outcome.status, outcome.bm25_ndcg10, outcome.started, outcome.finished = \
                "complete", FIGURES.get(outcome.dataset, 0.5), 1.0, 3.0
        return outcome

    monkeypatch.setattr(full_beir, "run_one", run_one)
    monkeypatch.setattr(full_beir, "ensure_ray", lambda address: None)
    return given


def summary(runs: Path) -> tuple[dict[str, dict], str]:
    rows = {r["dataset"]: r for r in json.loads((runs / "summary.json").read_text())}
    return rows, (runs / "summary.md").read_text()


def test_cqadupstack_runs_as_its_forums_and_is_reported_as_their_mean(ran: dict, tmp_path: Path):
    runs = tmp_path / "runs"
    assert full_beir.main(["--datasets", "beir/scifact,beir/cqadupstack", "--out-dir", str(runs), "--bm25-only"]) == 0
    forums = [f"beir/cqadupstack/{f}" for f in CQADUPSTACK_FORUMS]
    assert set(ran) - {"fail"} == {"beir/scifact", *forums}
    assert {ran[f]["out_dir"] for f in forums} == {str(runs / f"cqadupstack-{f}") for f in CQADUPSTACK_FORUMS}
    assert ran["beir/cqadupstack/gis"]["index"] == {"prebuilt": "auto"}  # pyserini has an index per forum
    rows, md = summary(runs)
    group = rows["beir/cqadupstack"]
    assert group["status"] == "mean of 12 forums"
    assert group["bm25_ndcg@10"] == pytest.approx(sum(FIGURES.values()) / 12, abs=1e-4) == pytest.approx(0.355)
    assert group["seconds"] == 24.0
    assert all(rows[f]["status"] == "complete" for f in forums)
    assert "| beir/cqadupstack | mean of 12 forums | 0.3550 |" in md


def test_a_mean_over_some_forums_is_not_reported(ran: dict, tmp_path: Path):
    ran["fail"]["beir/cqadupstack/tex"] = True
    runs = tmp_path / "runs"
    assert full_beir.main(["--datasets", "beir/cqadupstack", "--out-dir", str(runs), "--bm25-only"]) == 1
    rows, md = summary(runs)
    assert rows["beir/cqadupstack"]["status"] == "11 of 12 forums complete"
    assert rows["beir/cqadupstack"]["bm25_ndcg@10"] is None
    assert "- beir/cqadupstack/tex: DownloadError: boom" in md


def test_licensed_collections_are_listed_with_how_to_run_them(ran: dict, tmp_path: Path):
    local = tmp_path / "robust04"  # a local copy, run as a folder spec, is not listed as missing
    local.mkdir()
    runs = tmp_path / "runs"
    assert full_beir.main(["--datasets", f"beir/scifact,{local}", "--out-dir", str(runs), "--bm25-only"]) == 0
    rows, md = summary(runs)
    missing = [f"beir/{n}" for n in LICENSED if n != "robust04"]
    assert [d for d, r in rows.items() if r["status"] == full_beir.NEEDS_LOCAL_COPY] == missing
    assert "## Needs a local copy" in md
    for name in ("bioasq", "signal1m", "trec-news"):
        assert f"- beir/{name}: no public download (a licence is needed)" in md
        assert f"--datasets /data/{name}" in md
    assert rows[str(local)]["status"] == "complete"


def test_a_licensed_collection_asked_for_by_name_is_not_run_and_says_how(ran: dict, tmp_path: Path):
    runs = tmp_path / "runs"
    assert full_beir.main(["--datasets", "beir/scifact,beir/robust04", "--out-dir", str(runs), "--bm25-only"]) == 1
    assert "beir/robust04" not in ran
    rows, _ = summary(runs)
    assert rows["beir/robust04"]["status"] == full_beir.NEEDS_LOCAL_COPY
    assert "--datasets /data/robust04" in rows["beir/robust04"]["error"]
    assert list(rows).count("beir/robust04") == 1 and rows["beir/scifact"]["status"] == "complete"


def test_a_run_outside_beir_lists_no_beir_collections(ran: dict, tmp_path: Path):
    local = tmp_path / "mine"
    local.mkdir()
    runs = tmp_path / "runs"
    assert full_beir.main(["--datasets", f"bundled/tiny-science,{local}", "--out-dir", str(runs), "--bm25-only"]) == 0
    rows, md = summary(runs)
    assert set(rows) == {"bundled/tiny-science", str(local)} and "Needs a local copy" not in md
