"""Ray Tune sweeps on the synthetic dev set (issue 20), with the tiny monoT5 on the bundled collection.

One module-scoped sweep (4 grid trials, ASHA) is shared by the checks on its results; a second one runs
with the test queries and qrels poisoned, in a child process killed by its pid once a trial's results are
on disk and then resumed: it must give the same trial results as the first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import BUNDLED

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]

#: four trials whose learning rates differ by orders of magnitude: ASHA has something to stop
SETTINGS = {
    "inpars": {
        "train": {"base_model": "local:tiny-monot5", "batch_size": 8, "micro_batch_size": 8, "max_length": 96},
        "tune": {"num_samples": 1, "search": "random", "validate_every": 2, "grace_period": 2,
                 "reduction_factor": 2, "cpus_per_trial": 1, "dev": {"fraction": 0.15, "depth": 10},
                 "space": {"train": {"lr": {"grid": [3e-3, 1e-6, 3e-2, 1e-5]}, "max_steps": 4},
                           "rerank": {"first_stage_weight": 0.2}}},
    },
}


def _config_file(tmp: Path, collection: Path, out: Path) -> Path:
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(collection), "out_dir": str(out), **SETTINGS}))
    return path


def _sweep(config_path: Path):
    from inpars_ray.config import load_config
    from inpars_ray.pipeline import run_tune

    return run_tune(load_config(config_path))


def _results(manifest: dict) -> list[tuple]:
    """What must not change: each trial's settings, steps, early stop and dev nDCG@10 (rounded)."""
    return sorted((json.dumps(t["settings"], sort_keys=True), t["steps"], t["stopped_early"],
                   round(t["dev_ndcg@10"], 6)) for t in manifest["extra"]["trials"])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tune")
    shutil.copytree(BUNDLED, tmp / "collection")
    return tmp


def _stand_in_queries(run: Path, collection: Path) -> None:
    """Replace the filter's kept queries by queries a generator might have written, so that the dev set has
    signal (the tiny random LM writes near-identical noise, whose source documents BM25 never finds): for
    every document judged relevant to a *train*-split query of the bundled collection, that query's text
    (train and test queries are disjoint). The filter's manifest lists the new file; mine reruns on it."""
    import csv

    import pyarrow as pa

    from inpars_ray import schema as S

    source: dict[str, str] = {}
    with open(collection / "qrels" / "train.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if int(row["score"]) >= 1:
                source.setdefault(row["corpus-id"], row["query-id"])
    texts = {q["_id"]: q["text"] for q in map(json.loads, (collection / "queries.jsonl").read_text().splitlines())}
    docs = sorted(source)
    n = len(docs)
    table = pa.table({S.DOC_ID: docs, S.QUERY_ID: [f"syn-{d}" for d in docs],
                      S.QUERY: [texts[source[d]] for d in docs], S.TOKEN_LOGPROBS: [None] * n,
                      S.MEAN_LOGPROB: [0.0] * n, S.NUM_TOKENS: [8] * n, S.PROMPT_NAME: ["stand-in"] * n,
                      S.MODEL: ["train-qrels"] * n, S.BACKEND: ["none"] * n, S.FEWSHOT_IDS: [None] * n,
                      S.ERROR: [None] * n, S.FILTER_SCORE: [0.0] * n}, schema=S.FILTERED)
    filt = run / "filter"
    manifest = json.loads((filt / "manifest.json").read_text())
    for name in [k for k in manifest["files"] if k.startswith("kept/")]:
        (filt / name).unlink()
        del manifest["files"][name]
    pq.write_table(table, filt / "kept" / "part-stand-in.parquet")
    manifest["files"]["kept/part-stand-in.parquet"] = (filt / "kept" / "part-stand-in.parquet").stat().st_size
    (filt / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def sweep(workspace):
    from inpars_ray.config import load_config
    from inpars_ray.pipeline import run_synthetic

    config_path = _config_file(workspace, workspace / "collection", workspace / "run")
    run_synthetic(load_config(config_path))
    _stand_in_queries(workspace / "run", workspace / "collection")
    return config_path, _sweep(config_path)


def test_sweep_runs_trials_stops_weak_ones_and_writes_its_outputs(sweep):
    _, manifest = sweep
    trials = manifest["extra"]["trials"]
    assert len(trials) == 4 and not any(t["error"] for t in trials)
    assert all(t["dev_ndcg@10"] is not None and t["history"] for t in trials)
    assert sum(t["stopped_early"] for t in trials) >= 1, trials  # ASHA stopped at least one trial
    stopped = [t for t in trials if t["stopped_early"]]
    assert all(t["steps"] < t["planned_steps"] == 4 for t in stopped)
    assert manifest["counts"]["trial_steps"] < manifest["counts"]["trial_steps_planned"]
    # every evaluation was reported: every 2 steps, and the last step of a trial that ran to the end
    full = [t for t in trials if not t["stopped_early"]]
    assert full and all([h["step"] for h in t["history"]] == [2, 4] for t in full)
    outputs = manifest["extra"]["outputs"]
    table = Path(outputs["markdown"]).read_text()
    assert "stopped early" in table and table.count("\n| ") == 4  # a row per trial
    assert Path(outputs["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert Path(manifest["extra"]["best_model"], "config.json").is_file()


def test_best_settings_round_trip_through_run_config(sweep):
    from inpars_ray.config import load_config

    config_path, manifest = sweep
    best_yaml = Path(manifest["extra"]["best_yaml"])
    config = load_config(best_yaml)
    best = manifest["extra"]["best"]
    assert config.inpars.tune is None
    assert config.inpars.train.lr == pytest.approx(best["settings"]["train.lr"])
    assert config.inpars.train.max_steps == 4
    assert config.inpars.rerank.first_stage_weight == pytest.approx(0.2)
    assert config.dataset == load_config(config_path).dataset
    # `run --print-config` accepts it (the CLI path that `run --config` takes before any work)
    out = subprocess.run([sys.executable, "-m", "inpars_ray", "run", "--config", str(best_yaml), "--print-config"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["inpars"]["train"]["lr"] == pytest.approx(best["settings"]["train.lr"])


def test_dev_set_holds_out_whole_documents_and_reads_no_judgement(sweep):
    config_path, manifest = sweep
    run = Path(yaml.safe_load(config_path.read_text())["out_dir"])
    dev = run / "tune" / "devset"
    qrels = pq.read_table(dev / "dev_qrels.parquet")
    train_docs = set(pq.read_table(dev / "train_triples").column("pos_doc_id").to_pylist())
    assert qrels.num_rows >= 1 and not set(qrels.column("doc_id").to_pylist()) & train_docs
    # dev queries are synthetic queries (ids the filter kept), never the collection's own
    own = {json.loads(line)["_id"] for line in (BUNDLED / "queries.jsonl").read_text().splitlines()}
    assert not set(qrels.column("query_id").to_pylist()) & own


def _poison(collection: Path) -> None:
    """Every test judgement points at another document and every letter of every query is a z. Sizes and
    modification times stay, so the upstream stages' keys (which fingerprint the files) stay valid and only
    the sweep runs anew: whatever in it read the test judgements would now see garbage."""
    qrels = collection / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    ids = [line.split("\t")[1] for line in lines[1:]]
    rotated = ids[7:] + ids[:7]
    rows = [lines[0]] + [f"{line.split(chr(9))[0]}\t{doc}\t{line.split(chr(9))[2]}"
                         for line, doc in zip(lines[1:], rotated)]
    _rewrite_same_size(qrels, "\n".join(rows) + "\n")
    queries = collection / "queries.jsonl"
    rows = [json.loads(line) for line in queries.read_text().splitlines()]
    _rewrite_same_size(queries, "".join(json.dumps({**q, "text": re.sub("[A-Za-z]", "z", q["text"])}) + "\n"
                                        for q in rows))


def _rewrite_same_size(path: Path, text: str) -> None:
    stat = path.stat()
    assert len(text.encode()) == stat.st_size and text != path.read_text()
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _trial_results_on_disk(run: Path) -> bool:
    """A trial has reported, and the experiment state Tune saved since holds it."""
    results = [p for p in run.glob("tune/sweep-*/experiment/*/result.json") if p.stat().st_size > 0]
    states = list(run.glob("tune/sweep-*/experiment/experiment_state-*.json"))
    return bool(results and states) and max(p.stat().st_mtime_ns for p in states) > min(
        p.stat().st_mtime_ns for p in results)


def test_poisoned_test_judgements_and_a_killed_driver_change_no_trial_result(sweep, workspace, tmp_path):
    """One more sweep (two would double the tier's time on 2 cores): with the collection's test queries and
    qrels poisoned, run by a child ``inpars-ray tune`` that is SIGKILLed by its pid once a trial's results
    are on disk, then run again to resume (Tuner.restore). Its trials must be the first sweep's exactly:
    the sweep never reads the test judgements, and a restored sweep loses nothing."""
    config_path, manifest = sweep
    # in place (a stage's key names its collection and run root): the first sweep's results are in
    # `manifest`; its tune folder goes, so that the dev set and every trial are made again
    collection, run = workspace / "collection", workspace / "run"
    shutil.copytree(collection, tmp_path / "original")
    shutil.rmtree(run / "tune")
    _poison(collection)
    try:
        _killed_and_resumed(config_path, run, manifest)
    finally:
        shutil.rmtree(collection)
        shutil.copytree(tmp_path / "original", collection)


def _killed_and_resumed(config_path: Path, run: Path, manifest: dict) -> None:
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "inpars_ray", "tune", "--config", str(config_path), "--num-cpus", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not _trial_results_on_disk(run):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no trial result on disk within 600 s"
            time.sleep(0.5)  # polling a condition with a deadline, not waiting for a time
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:  # the Ray processes the killed driver started (its own session), nothing else
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL
    assert not list(run.glob("tune/sweep-*/manifest.json"))  # killed mid-sweep: not complete
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads(next(run.glob("tune/sweep-*/manifest.json")).read_text())
    assert _results(resumed) == _results(manifest)
