"""jobs/full_beir.py runs collections concurrently; a failed one is listed while the others complete; a rerun
resumes each one where it stopped."""
from __future__ import annotations

import calendar
import json
import shutil
import sys
import time
from pathlib import Path

from tests.conftest import BUNDLED

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs"))
import full_beir  # noqa: E402


def interval(manifest_path: Path) -> tuple[float, float]:
    """(start, end) of a stage in epoch seconds, from its manifest's finish time and total duration."""
    m = json.loads(manifest_path.read_text())
    end = calendar.timegm(time.strptime(m["finished_at"], "%Y-%m-%dT%H:%M:%SZ"))
    return end - m["timings"]["total"], end


def test_collections_run_concurrently_failures_are_isolated_and_reruns_resume(ray_session, tmp_path: Path):
    copy, broken = tmp_path / "tiny-copy", tmp_path / "tiny-broken"
    shutil.copytree(BUNDLED, copy)
    shutil.copytree(BUNDLED, broken)
    corpus = broken / "corpus.jsonl"
    good_corpus = corpus.read_bytes()
    lines = good_corpus.splitlines(keepends=True)
    lines[4] = b'{"_id": "d0005", "text": oops}\n'
    corpus.write_bytes(b"".join(lines))
    runs = tmp_path / "runs"
    argv = ["--datasets", f"bundled/tiny-science,{copy},{broken}", "--out-dir", str(runs), "--bm25-only",
            "--max-concurrent", "3"]

    assert full_beir.main(argv) == 1  # one collection failed
    rows = {r["dataset"]: r for r in json.loads((runs / "summary.json").read_text())}
    assert rows[str(broken)]["status"] == "failed"
    assert "corpus.jsonl:5: malformed JSON" in rows[str(broken)]["error"]
    done = [rows["bundled/tiny-science"], rows[str(copy)]]
    assert [r["status"] for r in done] == ["complete", "complete"]
    assert 0 < done[0]["bm25_ndcg@10"] == done[1]["bm25_ndcg@10"] <= 1  # same documents, same figures
    markdown = (runs / "summary.md").read_text()
    assert "| bundled/tiny-science | complete |" in markdown and f"- {broken}: FormatError" in markdown

    # the collections ran at the same time: their pipelines' intervals (from the manifests) overlap, and
    # one collection's index was being built while the other's pipeline ran
    a, b = interval(runs / "tiny-science" / "manifest.json"), interval(runs / "tiny-copy" / "manifest.json")
    assert max(a[0], b[0]) < min(a[1], b[1])
    index_b = interval(runs / "tiny-copy" / "index" / "manifest.json")
    assert index_b[0] < a[1] and a[0] < index_b[1]

    # resubmitted with the corpus repaired: the finished collections redo nothing, the failed one completes
    before = {n: (runs / n / "index" / "manifest.json").read_bytes() for n in ("tiny-science", "tiny-copy")}
    corpus.write_bytes(good_corpus)
    assert full_beir.main(argv) == 0
    rows = {r["dataset"]: r for r in json.loads((runs / "summary.json").read_text())}
    assert {r["status"] for r in rows.values()} == {"complete"}
    assert rows[str(broken)]["bm25_ndcg@10"] == rows[str(copy)]["bm25_ndcg@10"]
    assert all((runs / n / "index" / "manifest.json").read_bytes() == before[n] for n in before)
