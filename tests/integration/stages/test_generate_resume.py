"""The generate stage on local Ray: a driver killed halfway, rerun, gives the uninterrupted output."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.io.catalog import resolve
from inpars_ray.io.manifest import read_manifest
from inpars_ray.models.backends.base import GenerationParams
from inpars_ray.stages.generate import (
    GenerateConfig,
    GenerateResources,
    completed_doc_ids,
    read_generated,
    run_generate,
)
from inpars_ray.testing.tiny_lm import tiny_lm_path

NUM_DOCS = 32
PROGRESS = re.compile(r"generate: (\d+)/(\d+) documents done")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = str(tiny_lm_path())
    template = tmp_path_factory.mktemp("prompt") / "short.txt"
    template.write_text("Passage: {document}\nQuestion:")
    return model, str(template)


@pytest.fixture(scope="module")
def reference(ray_session, setup, tmp_path_factory):
    """An uninterrupted run, in process."""
    model, template = setup
    out = tmp_path_factory.mktemp("reference")
    manifest = run_generate(resolve("bundled/tiny-science"), out, _config(model, template), GenerateResources(batch_size=4))
    return out, manifest


def _config(model: str, template: str) -> GenerateConfig:
    # documents are not cut (doc_max_tokens is large) and the prompt limit is tight, so the longer
    # documents of the bundled collection become error rows: both kinds of row are resumed
    return GenerateConfig(model=model, prompt=template, num_docs=NUM_DOCS, seed=3, doc_max_tokens=4000,
                          generation=GenerationParams(max_new_tokens=24, seed=3, max_prompt_tokens=110))


def _cli(model: str, template: str, out: Path) -> list[str]:
    # -v: the driver's own log lines ("generate: N/M documents done") go to stderr, not only to the run's log
    return [sys.executable, "-m", "inpars_ray", "-v", "generate", "--dataset", "bundled/tiny-science", "--model", model,
            "--prompt", template, "--num-docs", str(NUM_DOCS), "--seed", "3", "--doc-max-tokens", "4000",
            "--max-new-tokens", "24", "--max-prompt-tokens", "110", "--out", str(out), "--batch-size", "2",
            "--num-cpus", "2"]


def _env() -> dict[str, str]:
    return {**os.environ, "INPARS_RAY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}


def test_killed_driver_resumes_to_the_uninterrupted_output(setup, reference, tmp_path):
    model, template = setup
    reference_dir, manifest = reference
    counts = manifest["counts"]
    assert counts["sampled"] == counts["rows"] == NUM_DOCS
    assert counts["queries"] + counts["errors"] == NUM_DOCS
    assert counts["errors"] > 0 and counts["queries"] > 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(model, template, out), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=_env(), start_new_session=True)
    try:
        seen = []
        for line in proc.stderr:  # block on the driver's own progress lines: no sleeping
            seen.append(line)
            match = PROGRESS.search(line)
            if match and int(match.group(1)) > 0:
                break
        else:
            pytest.fail("the driver ended before reporting progress:\n" + "".join(seen[-30:]))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:  # the Ray processes this driver started share its process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.stderr.close()
    done_before = completed_doc_ids(out)
    assert 0 < len(done_before) < NUM_DOCS, f"{len(done_before)} documents were done when the driver was killed"
    assert read_manifest(out) is None  # an interrupted run never writes its manifest

    rerun = subprocess.run(_cli(model, template, out), capture_output=True, text=True, env=_env())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    counts = read_manifest(out)["counts"]
    assert counts["resumed"] >= len(done_before)
    assert counts["generated_this_run"] == NUM_DOCS - counts["resumed"]
    assert counts["rows"] == NUM_DOCS

    got, want = read_generated(out), read_generated(reference_dir)
    for column in (S.DOC_ID, S.QUERY_ID, S.QUERY, S.ERROR, S.NUM_TOKENS, S.PROMPT_NAME):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
    for a, b in zip(got.column(S.TOKEN_LOGPROBS).to_pylist(), want.column(S.TOKEN_LOGPROBS).to_pylist()):
        assert (a is None) == (b is None)
        if a is not None:
            assert a == pytest.approx(b, abs=1e-5)
    # no document was generated twice: each appears in exactly one part file
    ids = [d for p in sorted((out / "parts").glob("part-*.parquet"))
           for d in pq.read_table(p, columns=[S.DOC_ID]).column(S.DOC_ID).to_pylist()]
    assert sorted(ids) == sorted(set(ids))


def test_complete_run_is_skipped_and_another_config_is_refused(setup, reference):
    model, template = setup
    out, first = reference
    collection = resolve("bundled/tiny-science")
    config = _config(model, template)
    again = run_generate(collection, out, config, GenerateResources(batch_size=8, num_actors=2))
    assert again["finished_at"] == first["finished_at"]  # skipped: the manifest matches
    other = GenerateConfig(model=model, prompt=template, num_docs=NUM_DOCS, seed=4, doc_max_tokens=4000,
                           generation=config.generation)
    with pytest.raises(ConfigError, match="another config"):
        run_generate(collection, out, other)
