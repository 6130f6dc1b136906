"""jobs/full_beir.py on two Ray nodes that share no disk, with a gs:// run root (issue #8.4): the collections
run concurrently, a corrupt one is listed as failed while the others complete."""
from __future__ import annotations

import calendar
import sys
import time
import uuid
from pathlib import Path

import pytest

from inpars_ray.io import storage
from tests.conftest import BUNDLED

pytestmark = pytest.mark.cluster

JOB = Path(__file__).resolve().parents[2] / "jobs" / "full_beir.py"


def interval(manifest: dict) -> tuple[float, float]:
    end = calendar.timegm(time.strptime(manifest["finished_at"], "%Y-%m-%dT%H:%M:%SZ"))
    return end - manifest["timings"]["total"], end


def upload_collection(dest: str, corrupt_line: int | None = None) -> None:
    for path in sorted(BUNDLED.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if corrupt_line and path.name == "corpus.jsonl":
                lines = data.splitlines(keepends=True)
                lines[corrupt_line - 1] = b'{"_id": "d0005", "text": oops}\n'
                data = b"".join(lines)
            storage.write_bytes(storage.join(dest, str(path.relative_to(BUNDLED))), data)


def test_full_beir_on_two_nodes_with_a_gs_run_root(two_nodes):
    base = f"gs://inpars-runs/{uuid.uuid4().hex[:8]}"
    copy, broken, root = f"{base}/collections/tiny-copy", f"{base}/collections/tiny-broken", f"{base}/runs"
    upload_collection(copy)
    upload_collection(broken, corrupt_line=5)
    done = two_nodes.run([sys.executable, str(JOB), "--datasets", f"bundled/tiny-science,{copy},{broken}",
                          "--out-dir", root, "--bm25-only", "--max-concurrent", "3",
                          "--ray-address", two_nodes.address], timeout=1800, check=False)
    assert done.returncode == 1, done.stderr[-4000:]  # exactly: one collection failed, the job went on
    rows = {r["dataset"]: r for r in storage.read_json(f"{root}/summary.json")}
    assert rows[broken]["status"] == "failed" and "corpus.jsonl:5: malformed JSON" in rows[broken]["error"]
    assert rows["bundled/tiny-science"]["status"] == rows[copy]["status"] == "complete"
    assert 0 < rows["bundled/tiny-science"]["bm25_ndcg@10"] == rows[copy]["bm25_ndcg@10"]
    assert "| bundled/tiny-science | complete |" in storage.read_text(f"{root}/summary.md")
    # everything is under the run root: nothing was written to the driver's or the worker's disk
    assert not any(p for p in two_nodes.head_disk.rglob("*") if "summary" in p.name or p.name == "manifest.json")
    # the two collections' pipelines overlapped in time (from their manifests in the bucket)
    a = interval(storage.read_json(f"{root}/tiny-science/manifest.json"))
    b = interval(storage.read_json(f"{root}/tiny-copy/manifest.json"))
    assert max(a[0], b[0]) < min(a[1], b[1])
