"""BM25 queries/s at depth 1000: inpars-ray vs pyserini's batch_search vs Anserini's own SearchCollection.

One run, one generated collection (default 100k documents, Zipf-distributed vocabulary), one index,
the same queries for every contender (pyserini's batch_search gets a prefix of them: it is much slower
at depth 1000 because every hit crosses JNI as a Java object). Timings exclude JVM start and indexing.

    .venv/bin/python benchmarks/bm25_throughput.py [--docs 100000] [--queries 2000] [--threads 2]

Prints a table and writes benchmarks/results/bm25_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_gen import write_collection  # noqa: E402 - the shared generated collection


def make_collection(root: Path, n_docs: int, n_queries: int, seed: int = 7) -> None:
    """The shared generated collection (Zipf vocabulary): see ``corpus_gen.write_collection``."""
    write_collection(root, n_docs, n_queries, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--batch-search-queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("INPARS_RAY_PROGRESS", "0")

    from inpars_ray.io import catalog
    from inpars_ray.io.load import read_queries
    from inpars_ray.runtime.java import anserini_jar, java_executable
    from inpars_ray.runtime.raykit import ensure_ray
    from inpars_ray.stages import index, lucene, retrieve

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bm25-bench-"))
    coll_dir = work / "collection"
    if not (coll_dir / "corpus.jsonl").exists():
        t = time.perf_counter()
        make_collection(coll_dir, args.docs, args.queries)
        print(f"generated {args.docs} docs / {args.queries} queries in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    ensure_ray(num_cpus=args.threads)
    collection = catalog.resolve(str(coll_dir))
    t = time.perf_counter()
    index.build_index(collection, work / "index")
    index_s = time.perf_counter() - t
    queries, _ = read_queries(collection)
    results: dict[str, dict] = {}

    # 1. inpars-ray: SearchCollection in-process, sharded over Ray actors (here: one actor, all threads)
    cfg = retrieve.BM25Config(threads=args.threads, queries_per_task=1000, num_actors=1)
    searcher = retrieve.BM25Searcher(work / "index", args.k, cfg)
    searcher(queries.slice(0, 10))  # JVM warm-up, as every contender gets
    t = time.perf_counter()
    run = retrieve.retrieve(work / "index", queries, args.k, cfg)
    s = time.perf_counter() - t
    results["inpars-ray (in-process)"] = {"queries": queries.num_rows, "seconds": s, "hits": run.num_rows}
    import ray

    t = time.perf_counter()
    ds = retrieve.retrieve_dataset(work / "index", ray.data.from_arrow(queries), args.k, cfg)
    hits = sum(b.num_rows for b in ds.iter_batches(batch_format="pyarrow", batch_size=None))
    s = time.perf_counter() - t
    results["inpars-ray (Ray Data, incl. actor start)"] = {"queries": queries.num_rows, "seconds": s, "hits": hits}

    # 2. Anserini's own SearchCollection, as its own JVM process (JVM start is timed separately and subtracted)
    topics = work / "topics.tsv"
    retrieve.write_topics(queries, topics)
    cmd = [java_executable(), "-cp", anserini_jar(), "io.anserini.search.SearchCollection", "-index",
           str(work / "index" / lucene.LUCENE_DIR), "-topics", str(topics), "-topicReader", "TsvString",
           "-bm25", "-bm25.k1", "0.9", "-bm25.b", "0.4", "-hits", str(args.k), "-threads", str(args.threads),
           "-removeQuery"]
    t = time.perf_counter()
    subprocess.run(cmd[:3] + ["io.anserini.search.SearchCollection", "-options"], capture_output=True, check=False)
    jvm_s = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(cmd + ["-output", str(work / "anserini.run")], capture_output=True, check=True)
    s = time.perf_counter() - t
    results["Anserini SearchCollection (own JVM)"] = {"queries": queries.num_rows, "seconds": s,
                                                      "seconds_minus_jvm_start": s - jvm_s,
                                                      "hits": sum(1 for _ in open(work / "anserini.run"))}

    # 3. pyserini LuceneSearcher.batch_search (every hit marshalled through JNI)
    os.environ.setdefault("OPENAI_API_KEY", "placeholder-not-a-key")  # pyserini builds an OpenAI client at import
    from pyserini.search.lucene import LuceneSearcher

    ls = LuceneSearcher(str(work / "index" / lucene.LUCENE_DIR))
    ls.set_bm25(0.9, 0.4)
    sub = queries.slice(0, args.batch_search_queries)
    qids, texts = sub.column("query_id").to_pylist(), sub.column("query").to_pylist()
    ls.batch_search(texts[:5], qids[:5], k=args.k, threads=args.threads)
    t = time.perf_counter()
    out = ls.batch_search(texts, qids, k=args.k, threads=args.threads)
    hits = sum(len([(h.docid, h.score) for h in v]) for v in out.values())
    s = time.perf_counter() - t
    results["pyserini batch_search"] = {"queries": len(qids), "seconds": s, "hits": hits}

    for r in results.values():
        r["queries_per_second"] = round(r["queries"] / r["seconds"], 2)
        r["seconds"] = round(r["seconds"], 3)
    report = {"docs": args.docs, "k": args.k, "threads": args.threads, "index_seconds": round(index_s, 2),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "results": results}
    out_path = Path(__file__).parent / "results" / "bm25_throughput.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"BM25 depth {args.k}, {args.docs} docs, {args.threads} threads (index built in {index_s:.1f}s)")
    print(f"{'contender':<42} {'queries':>8} {'seconds':>9} {'q/s':>9}")
    for name, r in results.items():
        print(f"{name:<42} {r['queries']:>8} {r['seconds']:>9.2f} {r['queries_per_second']:>9.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
