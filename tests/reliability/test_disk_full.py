"""A full local disk: ``inpars-ray generate`` (tiny local LM) on a tmpfs too small for its output.

The stage must end with the CLI's typed error (exit 2, ``StorageError`` naming the part file and the
``No space left on device`` of the OS), leave no manifest and no half-written part (so nothing a rerun
mistakes for done), and keep the parts that were written whole. After the space is freed (the tmpfs
remounted bigger), the rerun generates only the missing documents and its rows equal an unfaulted run's.
Needs root (``mount``); skipped with the reason otherwise.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inpars_ray.testing.tiny_lm import tiny_lm_path

pytestmark = pytest.mark.reliability

NUM_DOCS = 64
BATCH = 4  # documents per part: a 40 KiB disk holds a few parts (about 6.5 KiB each), not 16
SMALL, BIG = "40k", "4m"
#: the generator's log-probabilities: equal to FLOAT_TOL only (two runs of the same batch in separate
#: processes differed by up to ~1e-7 on a loaded machine; the queries never did)
FLOATS = ("token_logprobs", "mean_logprob")
FLOAT_TOL = 1e-6
_TO_GENERATE = re.compile(r"generate: (\d+) documents sampled \((\d+) already done, (\d+) to generate\)")


def _command(out: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "inpars_ray", "generate", "--dataset", "bundled/tiny-science", "--model", str(model),
            "--num-docs", str(NUM_DOCS), "--batch-size", str(BATCH), "--out", str(out), "--num-cpus", "2"]


def _env() -> dict[str, str]:
    return {**os.environ, "INPARS_RAY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}


def _rows(out: Path) -> list[dict]:
    rows = []
    for part in sorted((out / "parts").glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return sorted(rows, key=lambda r: r["doc_id"])


def _same(rows: list[dict], reference: list[dict]) -> None:
    """Rows equal, column for column, the log-probabilities to :data:`FLOAT_TOL`."""
    def exact(r: dict) -> dict:
        return {k: v for k, v in r.items() if k not in FLOATS}

    assert [exact(r) for r in rows] == [exact(r) for r in reference]
    def floats(r: dict) -> list[float]:
        return [x for x in [r.get("mean_logprob"), *(r.get("token_logprobs") or [])] if x is not None]

    for r, want in zip(rows, reference):
        got, ref = floats(r), floats(want)
        assert len(got) == len(ref), r["doc_id"]
        assert max((abs(a - b) for a, b in zip(got, ref)), default=0.0) <= FLOAT_TOL, r["doc_id"]


def _mount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True,
                   capture_output=True, text=True)


@pytest.fixture(scope="module")
def model():
    return tiny_lm_path()


@pytest.fixture()
def small_disk(tmp_path):
    """``tmp_path/gen``: a tmpfs of :data:`SMALL` (the log goes beside it, to ``tmp_path/logs``)."""
    where = tmp_path / "gen"
    where.mkdir()
    try:
        _mount(where, SMALL)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs (needs root and mount): {getattr(exc, 'stderr', '') or exc}")
    try:
        yield where
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", str(where)], check=True, capture_output=True)


def test_a_full_disk_fails_typed_leaves_nothing_done_and_the_rerun_completes(small_disk, model, tmp_path):
    reference = tmp_path / "reference" / "gen"  # the unfaulted output, on the ordinary disk
    done = subprocess.run(_command(reference, model), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref_rows = _rows(reference)
    assert len(ref_rows) == NUM_DOCS

    out = small_disk
    full = subprocess.run(_command(out, model), capture_output=True, text=True, env=_env(), timeout=600)
    assert full.returncode == 2, f"exit {full.returncode}, not the typed error's 2:\n{full.stderr[-3000:]}"
    message = next((line for line in full.stderr.splitlines() if line.startswith("inpars-ray generate: error: ")),
                   None)
    assert message is not None, full.stderr[-3000:]
    assert f"could not write {out}/parts/part-" in message and "No space left on device" in message, message
    # nothing a rerun mistakes for done: no manifest, no temporary or half-written part under any name
    assert not (out / "manifest.json").exists()
    names = sorted(p.name for p in (out / "parts").iterdir())
    assert all(re.fullmatch(r"part-[0-9a-f]+\.parquet", n) for n in names), names
    kept = _rows(out)  # each readable whole (a torn part would fail here), and equal to the reference's rows
    assert len(kept) < NUM_DOCS
    by_doc = {r["doc_id"]: r for r in ref_rows}
    _same(kept, [by_doc[r["doc_id"]] for r in kept])

    subprocess.run(["mount", "-o", f"remount,size={BIG}", str(out)], check=True, capture_output=True)
    log = tmp_path / "logs" / "inpars-ray.log"
    offset = log.stat().st_size
    rerun = subprocess.run(_command(out, model), capture_output=True, text=True, env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with log.open("rb") as fh:
        fh.seek(offset)
        planned = _TO_GENERATE.findall(fh.read().decode("utf-8", "replace"))
    # only the documents without a whole part are generated again: none twice
    assert planned == [(str(NUM_DOCS), str(len(kept)), str(NUM_DOCS - len(kept)))], planned
    assert (out / "manifest.json").is_file()
    _same(_rows(out), ref_rows)
