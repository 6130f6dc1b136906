"""``inpars-ray report gs://...``: the report of a run whose root is on an object store is built from the run's
files there and published beside them (against the GCS emulator on loopback, tests/support/gcs.py)."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from inpars_ray import cli
from inpars_ray.io import storage
from inpars_ray.report import build_report
from tests.unit.test_report import make_run


def _upload(local: Path, root: storage.Location) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            root.join(*path.relative_to(local).parts).write_bytes(path.read_bytes())


def test_report_of_a_gs_run_is_built_from_its_files_and_published_beside_them(gcs_url, tmp_path: Path, capsys):
    local = make_run(tmp_path / "run")
    (local / "train" / "history.json").write_text(json.dumps(
        [{"step": s, "loss": 1.0 / s, "examples": 8} for s in range(1, 6)]))
    root = storage.location(f"gs://inpars-runs/report-{uuid.uuid4().hex[:8]}")
    _upload(local, root)
    expected = build_report(local)  # the same run, read locally

    report = build_report(root.uri)
    assert report.markdown == expected.markdown
    assert report.where == root.join("report.md").uri and report.paths == {} and report.plots == []
    assert root.join("report.md").read_text() == expected.markdown
    published = json.loads(root.join("report.json").read_text())
    assert published["run_dir"] == root.uri and published["systems"] == json.loads(
        expected.paths["json"].read_text())["systems"]
    names = [u.rsplit("/", 1)[-1] for u in report.published]
    assert names[:2] == ["report.md", "report.json"] and set(names[2:]) == {p.name for p in expected.plots}
    for name in names[2:]:
        assert root.join(name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the verb takes the URI too (it resolved it as a local path before)
    root.join("report.md").delete()
    assert cli.main(["report", root.uri, "--no-plots"]) == 0
    assert root.join("report.md").read_text() == build_report(local, plots=False).markdown
    out = capsys.readouterr().out
    assert f"wrote {root.join('report.md').uri}, report.json" in out
