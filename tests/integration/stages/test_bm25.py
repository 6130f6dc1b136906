"""BM25 through inpars-ray's CLI equals Anserini run directly; bad input fails cleanly or is quarantined."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inpars_ray import cli, errors
from inpars_ray import schema as S
from inpars_ray.io import catalog, trec
from inpars_ray.io.load import LoadConfig, read_qrels, read_queries
from inpars_ray.runtime import java as java_mod
from inpars_ray.runtime.java import anserini_jar, java_executable
from inpars_ray.stages import index as index_mod
from inpars_ray.stages import lucene, retrieve
from inpars_ray.stages.evaluate import evaluate_run
from tests.conftest import BUNDLED


def anserini_direct_run(corpus_dir: Path, work: Path) -> Path:
    """Index and search the bundled collection with Anserini's own command-line tools (no inpars-ray code)."""
    src = work / "anserini-input"
    src.mkdir()
    shutil.copy(corpus_dir / "corpus.jsonl", src / "corpus.jsonl")
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (corpus_dir / "queries.jsonl").open()}
    test_ids = sorted({line.split("\t")[0] for line in (corpus_dir / "qrels" / "test.tsv").open()} - {"query-id"})
    topics = work / "topics.tsv"
    topics.write_text("".join(f"{q}\t{queries[q]}\n" for q in test_ids))
    java = [java_executable(), "-cp", anserini_jar()]
    subprocess.run(java + ["io.anserini.index.IndexCollection", "-collection", "BeirFlatCollection", "-input", str(src),
                           "-index", str(work / "anserini-index"), "-generator", "DefaultLuceneDocumentGenerator",
                           "-threads", "1", "-storePositions", "-storeDocvectors", "-storeRaw"],
                   check=True, capture_output=True)
    run = work / "anserini.run"
    subprocess.run(java + ["io.anserini.search.SearchCollection", "-index", str(work / "anserini-index"),
                           "-topics", str(topics), "-topicReader", "TsvString", "-output", str(run),
                           "-bm25", "-bm25.k1", "0.9", "-bm25.b", "0.4", "-removeQuery", "-hits", "1000"],
                   check=True, capture_output=True)
    return run


def top10(run) -> dict[str, list[str]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for q, d, r in zip(*(run.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RANK))):
        out.setdefault(q, []).append((r, d))
    return {q: [d for _, d in sorted(v)[:10]] for q, v in out.items()}


def test_cli_matches_anserini_searchcollection(ray_session, tmp_path: Path, capsys):
    index, run = tmp_path / "index", tmp_path / "run.trec"
    assert cli.main(["index", "--dataset", str(BUNDLED), "--index-dir", str(index)]) == 0
    assert cli.main(["retrieve", "--dataset", str(BUNDLED), "--index-dir", str(index), "--out", str(run),
                     "--k", "1000", "--queries-per-task", "7"]) == 0  # several tasks: merging is exercised
    capsys.readouterr()
    assert cli.main(["evaluate", "--dataset", str(BUNDLED), "--run", str(run), "--measures",
                     "nDCG@10,RR@10,R@1000", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(ours) == {"nDCG@10", "RR@10", "R@1000"}

    theirs_run = trec.read_trec_run(anserini_direct_run(BUNDLED, tmp_path))
    collection = catalog.resolve(str(BUNDLED))
    qrels, _ = read_qrels(collection, "test", read_queries(collection)[0])
    theirs = evaluate_run(theirs_run, qrels, ["nDCG@10", "RR@10", "R@1000"]).aggregate
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-3), name
    assert top10(trec.read_trec_run(run)) == top10(theirs_run)
    manifest = json.loads((tmp_path / "run.trec.manifest.json").read_text())
    assert manifest["counts"]["queries"] == len(top10(theirs_run)) and manifest["status"] == "complete"

    # a rerun with the same config does nothing: the run file is left as it is
    before = run.stat().st_mtime_ns
    assert cli.main(["retrieve", "--dataset", str(BUNDLED), "--index-dir", str(index), "--out", str(run),
                     "--k", "1000", "--queries-per-task", "7"]) == 0
    assert run.stat().st_mtime_ns == before


def corrupt(root: Path, line_no: int, content: bytes, file: str = "corpus.jsonl") -> None:
    path = root / file
    rows = path.read_bytes().splitlines(keepends=True)
    rows[line_no - 1] = content
    path.write_bytes(b"".join(rows))


BAD_CASES = {
    "malformed": (5, b'{"_id": "d0005", "text": oops}\n', "corpus.jsonl:5: malformed JSON"),
    "missing_id": (7, b'{"title": "t", "text": "x"}\n', "corpus.jsonl:7: missing field '_id'"),
    "missing_text": (9, b'{"_id": "d0009", "title": "t"}\n', "corpus.jsonl:9: missing field 'text'"),
    "non_utf8": (11, b'{"_id": "d0011", "text": "caf\xe9"}\n', "corpus.jsonl:11: not valid UTF-8"),
    "duplicate": (20, b'{"_id": "d0003", "text": "again"}\n', "corpus.jsonl:20: duplicate document id (first seen at line 3)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_corpus_rows_fail_with_file_and_line(ray_session, bundled_copy: Path, tmp_path: Path, capsys, case):
    line, content, message = BAD_CASES[case]
    corrupt(bundled_copy, line, content)
    index = tmp_path / "index"
    assert cli.main(["index", "--dataset", str(bundled_copy), "--index-dir", str(index)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bundled_copy) in err
    # nothing half-written (the command's log, beside its output, stays to tell what happened)
    assert not index.exists() and [p.name for p in tmp_path.iterdir() if p.name != "logs"] == ["tiny-science"]


def test_empty_corpus_and_unknown_qrels_ids(ray_session, bundled_copy: Path, tmp_path: Path, capsys):
    qrels = bundled_copy / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q050\tno-such-doc\t1\n")
    assert cli.main(["index", "--dataset", str(bundled_copy), "--index-dir", str(tmp_path / "i1")]) == 2
    n = len(qrels.read_text().splitlines())
    assert f"test.tsv:{n}: corpus-id 'no-such-doc' is not in the corpus" in capsys.readouterr().err

    (bundled_copy / "corpus.jsonl").write_bytes(b"")
    assert cli.main(["index", "--dataset", str(bundled_copy), "--index-dir", str(tmp_path / "i2")]) == 2
    assert "the corpus has no documents" in capsys.readouterr().err
    assert not (tmp_path / "i1").exists() and not (tmp_path / "i2").exists()


def test_skip_bad_rows_quarantines_and_counts_every_row(ray_session, bundled_copy: Path, tmp_path: Path):
    for line, content, _ in BAD_CASES.values():
        corrupt(bundled_copy, line, content)
    index = tmp_path / "index"
    assert cli.main(["index", "--dataset", str(bundled_copy), "--index-dir", str(index), "--skip-bad-rows"]) == 0
    manifest = json.loads((index / "manifest.json").read_text())
    bad = pq.read_table(index / lucene.BAD_ROWS_FILE).to_pylist()
    corpus_bad = [r for r in bad if r[S.SOURCE_FILE].endswith("corpus.jsonl")]
    assert sorted(r[S.SOURCE_LINE] for r in corpus_bad) == sorted(line for line, _, _ in BAD_CASES.values())
    # the documents replaced by bad rows are judged in the qrels: those judgements are reported too
    qrels_bad = [r for r in bad if not r[S.SOURCE_FILE].endswith("corpus.jsonl")]
    assert qrels_bad and all("is not in the corpus" in r["reason"] for r in qrels_bad)
    total = len((bundled_copy / "corpus.jsonl").read_bytes().splitlines())
    assert manifest["counts"]["documents"] + len(corpus_bad) == total
    assert manifest["counts"]["documents"] == java_mod.num_docs(index / lucene.LUCENE_DIR)


def test_memory_buffer_reaches_lucene_and_leaves_the_index_key_alone(tmp_path: Path):
    collection = catalog.resolve(str(BUNDLED))
    # Anserini's argument parser rejects an unknown flag, so a build that passes took -memoryBuffer
    small = index_mod.build_index(collection, tmp_path / "index", config=index_mod.IndexConfig(memory_buffer_mb=16))
    manifest = tmp_path / "index" / "manifest.json"
    written = manifest.stat().st_mtime_ns
    # another buffer size names the same index: it is reused, not rebuilt
    again = index_mod.build_index(collection, tmp_path / "index", config=index_mod.IndexConfig(memory_buffer_mb=2048))
    assert manifest.stat().st_mtime_ns == written and again["config_hash"] == small["config_hash"]
    assert again["counts"]["documents"] == sum(1 for _ in (BUNDLED / "corpus.jsonl").open())


def test_indexer_runs_in_its_own_bounded_jvm_and_its_failure_names_the_input(tmp_path: Path):
    collection = catalog.resolve(str(BUNDLED))
    built = index_mod.build_index(collection, tmp_path / "index", config=index_mod.IndexConfig(
        memory_buffer_mb=16, java_heap_mb=128, read_buffer_mb=16))
    assert built["counts"]["documents"] == java_mod.num_docs(tmp_path / "index" / lucene.LUCENE_DIR)
    with pytest.raises(errors.ConfigError, match="java_heap_mb .128. must exceed memory_buffer_mb .256."):
        index_mod.build_index(collection, tmp_path / "other", config=index_mod.IndexConfig(memory_buffer_mb=256,
                                                                                  java_heap_mb=128))
    assert not (tmp_path / "other").exists()
    # Anserini's main() exits 0 even when it indexes nothing: a missing index is still an error, with its log
    missing = tmp_path / "no-shards"
    with pytest.raises(errors.IndexError_, match="IndexCollection failed .*no-shards"):
        index_mod._run_indexer(missing, tmp_path / "out", index_mod.IndexConfig())


_SEARCHER_HEAP = """
import logging, sys
from inpars_ray.runtime.java import max_heap_mb, start_jvm
from inpars_ray.stages.retrieve import BM25Config, BM25Searcher
logging.basicConfig(level=logging.WARNING)
searcher = BM25Searcher(sys.argv[1], 10, BM25Config(searcher_heap_mb=int(sys.argv[2])))
print("HEAP", max_heap_mb(), flush=True)
start_jvm(int(sys.argv[2]) * 2)  # the JVM runs already: not applied, and said so
"""


@pytest.mark.parametrize("heap_mb", [160, 320])
def test_searcher_heap_setting_bounds_the_searchers_jvm(tmp_path: Path, heap_mb: int):
    index = tmp_path / "index"
    index_mod.build_index(catalog.resolve(str(BUNDLED)), index, config=index_mod.IndexConfig(
        memory_buffer_mb=16, read_buffer_mb=16))
    # a process of its own, as a searcher actor is: this test process may have started its JVM already
    done = subprocess.run([sys.executable, "-c", _SEARCHER_HEAP, str(index), str(heap_mb)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    reported = int(done.stdout.split("HEAP")[1].split()[0])
    assert 0.8 * heap_mb <= reported <= heap_mb, (reported, heap_mb)  # maxMemory leaves out a survivor space
    assert f"a heap of {2 * heap_mb} MB applies only to a JVM started after it" in done.stderr


def test_duplicates_across_shards_are_dropped_keeping_the_first(bundled_copy: Path, tmp_path: Path):
    corpus = bundled_copy / "corpus.jsonl"
    rows = corpus.read_bytes().splitlines(keepends=True)
    first_ids = [json.loads(r)["_id"] for r in rows[:3]]
    # repeats of the first three ids, far apart: with 4 rows per shard they land in three other shards
    for at, doc_id in zip((6, 13, len(rows)), first_ids):
        rows.insert(at, json.dumps({"_id": doc_id, "text": "a later copy"}).encode() + b"\n")
    corpus.write_bytes(b"".join(rows))
    copies = [n for n, r in enumerate(rows, start=1) if b"a later copy" in r]
    collection = catalog.resolve(str(bundled_copy))
    built = index_mod.build_index(collection, tmp_path / "index", load_config=LoadConfig(skip_bad_rows=True),
                             config=index_mod.IndexConfig(shard_rows=4))
    bad = pq.read_table(tmp_path / "index" / lucene.BAD_ROWS_FILE).to_pylist()
    dups = sorted((r[S.SOURCE_LINE], r["reason"]) for r in bad if "duplicate" in r["reason"])
    assert dups == [(line, f"duplicate document id (first seen at line {first})")
                    for line, first in zip(copies, (1, 2, 3))]
    assert built["counts"]["documents"] == len(rows) - 3 == java_mod.num_docs(tmp_path / "index" / lucene.LUCENE_DIR)
    searcher_rows = retrieve.retrieve(tmp_path / "index", pa.table({S.QUERY_ID: ["q"], S.QUERY: ["later copy"]}), k=5)
    assert not [h for h in searcher_rows.column(S.DOC_ID).to_pylist() if h in first_ids]


def test_bounded_read_caps_only_its_own_dataset(ray_session):
    import ray

    from inpars_ray.io.load import read_corpus

    collection = catalog.resolve(str(BUNDLED))
    bounded = index_mod._bounded_read(read_corpus(collection), 16)
    other = read_corpus(collection)
    assert bounded.context.execution_options.resource_limits.object_store_memory == 16 * 2**20
    assert other.context.execution_options.resource_limits.object_store_memory != 16 * 2**20
    assert ray.data.DataContext.get_current().execution_options.resource_limits.object_store_memory != 16 * 2**20
    # the capped read still yields every row
    assert bounded.count() == other.count() == sum(1 for _ in (BUNDLED / "corpus.jsonl").open())
