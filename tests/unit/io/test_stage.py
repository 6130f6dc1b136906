"""The stage contract (io/stage.py): the one skeleton every stage runs through, and its typed result."""
from __future__ import annotations

import json

import pytest

from inpars_ray.io import storage
from inpars_ray.io.manifest import MANIFEST_NAME, config_hash, input_key
from inpars_ray.io.stage import StageResult, StageSpec, run_once


def _body(calls: list[str], text: str = "rows"):
    def body(record):
        calls.append(text)
        out = record.config["where"]
        (storage.location(out) / "kept" / "part-0.txt").write_text(text)
        record.counts["kept"] = len(text)
    return body


def _spec(tmp_path, **key) -> StageSpec:
    out = storage.location(str(tmp_path / "stage"))
    return StageSpec("filter", out, {"where": out.uri, **key}, outputs=("kept",), stale=("extra.tsv",))


def test_a_stage_runs_once_then_returns_its_earlier_result_without_running(tmp_path):
    calls: list[str] = []
    first = run_once(_spec(tmp_path, k=1), _body(calls))
    again = run_once(_spec(tmp_path, k=1), _body(calls))
    assert calls == ["rows"]
    assert (first.reused, again.reused) == (False, True)
    assert again.counts == {"kept": 4} and again.files == {"kept/part-0.txt": 4} and again.complete
    assert again.key == first.key == input_key(first.out)  # the content key a downstream stage hashes


def test_a_changed_key_deletes_the_stale_outputs_and_runs_again(tmp_path):
    calls: list[str] = []
    spec = _spec(tmp_path, k=1)
    run_once(spec, _body(calls))
    (spec.out / "kept" / "part-9.txt").write_text("left by an older run")
    (spec.out / "extra.tsv").write_text("a convenience copy")
    seen: list[bool] = []

    def body(record):
        # the manifest and every declared output are gone before the body runs
        seen.extend([(spec.out / MANIFEST_NAME).exists(), (spec.out / "kept").exists(),
                     (spec.out / "extra.tsv").exists()])
        _body(calls, "fresh")(record)

    result = run_once(_spec(tmp_path, k=2), body)
    assert seen == [False, False, False] and calls == ["rows", "fresh"]
    assert result.files == {"kept/part-0.txt": 5}  # the older run's part is not listed: it was deleted


def test_a_deleted_output_makes_the_stage_run_again(tmp_path):
    calls: list[str] = []
    spec = _spec(tmp_path, k=1)
    run_once(spec, _body(calls))
    (spec.out / "kept" / "part-0.txt").delete()
    assert not run_once(spec, _body(calls)).reused and calls == ["rows", "rows"]


def test_a_failing_body_leaves_no_manifest_so_the_next_run_redoes_the_stage(tmp_path):
    spec = _spec(tmp_path, k=1)
    run_once(spec, _body([]))

    def broken(record):
        raise RuntimeError("killed half way")

    with pytest.raises(RuntimeError):
        run_once(_spec(tmp_path, k=2), broken)
    assert not (spec.out / MANIFEST_NAME).exists()


def test_outputs_none_lists_no_files_and_keeps_what_the_stage_left_for_resuming(tmp_path):
    out = storage.location(str(tmp_path / "train"))
    (out / "ray" / "checkpoint.txt").write_text("step 12")
    result = run_once(StageSpec("train", out, {"k": 1}), lambda record: record.counts.update(steps=12))
    manifest = json.loads((tmp_path / "train" / MANIFEST_NAME).read_text())
    assert "files" not in manifest and (out / "ray" / "checkpoint.txt").exists()
    assert result.counts == {"steps": 12} and result.files == {}


def test_a_body_may_return_the_files_it_checked(tmp_path):
    out = storage.location(str(tmp_path / "teacher"))

    def body(record):
        (out / "triples" / "a.parquet").write_text("x")
        (out / "triples" / "b.parquet").write_text("yy")
        return {"triples/a.parquet": 1}  # only what the stage vouches for is published

    assert run_once(StageSpec("teacher", out, {}, outputs=("triples",)), body).files == {"triples/a.parquet": 1}


def test_an_incomplete_manifest_of_the_same_key_is_not_reused(tmp_path):
    """A stage that marks its manifest incomplete (generate, with documents left to retry) runs again."""
    from inpars_ray.io.manifest import StageRecord

    out = storage.location(str(tmp_path / "generate"))
    StageRecord("generate", {"k": 1}).write(out, status="incomplete", files={})
    calls: list[int] = []
    result = run_once(StageSpec("generate", out, {"k": 1}, outputs=()), lambda record: calls.append(1))
    assert calls == [1] and result.complete and not result.reused


def test_a_result_reads_as_its_manifest_and_hashes_as_it(tmp_path):
    result = run_once(_spec(tmp_path, k=1), _body([]))
    manifest = json.loads((tmp_path / "stage" / MANIFEST_NAME).read_text())
    assert dict(result) == manifest and result["counts"] == manifest["counts"]
    assert config_hash(result) == config_hash(manifest)  # a result in a downstream key is its manifest's hash
    assert "already complete" in run_once(_spec(tmp_path, k=1), _body([])).summary()
    assert isinstance(result, StageResult) and result.summary() == "kept=4"


def test_a_run_file_stage_shares_its_folder_with_other_runs(tmp_path):
    from inpars_ray.io.trec import run_manifest_name, run_spec

    folder = storage.location(str(tmp_path / "rerank"))
    (folder / "eval.test.json").write_text("{}")
    run = folder / "run.test.trec"
    result = run_once(run_spec("rerank", run, {"k": 1}), lambda record: run.write_text("q Q0 d 1 1.0 x\n"))
    assert result.files == {"run.test.trec": 15} and (folder / run_manifest_name(run)).exists()
    assert (folder / "eval.test.json").exists()  # only the run and its manifest belong to the stage
