"""Filter throughput (generated rows/s): the Ray stage vs the same pure functions in one process.

One run over a generated set built on the bundled collection (random queries with log-probs, plus error,
empty, copied and duplicate rows). Contenders:

1. the ``scores`` (InPars-v1) stage, ``run_filter``: part files read, document texts by id, checks,
   duplicate removal, distributed top-k, Parquet writes;
2. the same pure functions on one in-memory table in one process (no Ray): the single-process floor
   that the stage's overheads are measured against;
3. the ``reranker`` (InPars-v2) stage with the tiny random monoT5 of ``inpars_ray.testing.tiny_t5`` on a
   subset: measures the stage's plumbing around monoT5, not the speed of a real monoT5-3B.

    .venv/bin/python benchmarks/filter_throughput.py [--quick | --full] [--rows N] [--rerank-rows N] [--cpus 2]

``--quick``: 20,000 rows; ``--full``: 100,000 rows (issue #11). Ray is started and warmed up before any
contender is timed; the document store of the collection (``inpars_ray.io.docstore``), a per-corpus artifact
like the index, is built before the stage is timed, and its build time is reported on its own.

Prints a table and writes benchmarks/results/filter_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ratio, warm_ray, write_result  # noqa: E402


def make_generated(docs: list[dict], n: int, seed: int = 5) -> pa.Table:
    from inpars_ray import schema as S

    rng = random.Random(seed)
    words = " ".join(d["text"] for d in docs).split()
    rows = []
    for i in range(n):
        doc = docs[rng.randrange(len(docs))]
        lp = [-rng.random() * 3 for _ in range(rng.randint(1, 12))]
        query, error, kind = " ".join(rng.choice(words) for _ in lp), None, rng.random()
        if kind < 0.03:
            query, lp, error = None, None, "failed"
        elif kind < 0.06:
            query = " ".join(doc["text"].split()[:4])
        elif kind < 0.1 and rows and rows[-1][S.QUERY]:
            query = rows[-1][S.QUERY]
        rows.append({S.DOC_ID: doc["_id"], S.QUERY_ID: f"g{i}", S.QUERY: query, S.TOKEN_LOGPROBS: lp,
                     S.MEAN_LOGPROB: sum(lp) / len(lp) if lp else None, S.NUM_TOKENS: len(lp) if lp else None,
                     S.PROMPT_NAME: "inpars", S.MODEL: "bench", S.BACKEND: "hf", S.FEWSHOT_IDS: [], S.ERROR: error})
    return pa.Table.from_pylist(rows, schema=S.GENERATED)


def single_process(generated: pa.Table, docs: list[dict], k: int) -> int:
    from inpars_ray import schema as S
    from inpars_ray.stages import filter as F

    corpus = pa.table({S.DOC_ID: [d["_id"] for d in docs], S.TITLE: [d.get("title", "") for d in docs],
                       S.TEXT: [d["text"] for d in docs]})
    checked = F.classify(F.left_join_unique(generated, corpus, S.DOC_ID), F.FilterConfig(keep_top_k=k))
    ok = F.rows_with(F.mark_duplicates(F.rows_with(checked, dropped=False)), dropped=False)
    final = F.apply_threshold(ok, F.threshold_of(F.local_top_k(ok, k), k))
    return F.rows_with(final, dropped=False).num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--rerank-rows", type=int, default=0, help="rows for the reranker stage (0: skip it)")
    ap.add_argument("--keep-top-k", type=int, default=2000)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    args.mode = args.mode or "quick"
    args.rows = args.rows or {"quick": 20_000, "full": 100_000}[args.mode]
    os.environ.setdefault("INPARS_RAY_PROGRESS", "0")
    start_load = os.getloadavg()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from inpars_ray.io.catalog import BUNDLED_ROOT, resolve
    from inpars_ray.stages.filter import FilterConfig, run_filter

    docs = [json.loads(line) for line in (BUNDLED_ROOT / "corpus.jsonl").read_text().splitlines() if line.strip()]
    work = Path(tempfile.mkdtemp(prefix="filter-bench-"))
    generated = make_generated(docs, args.rows)
    (work / "gen").mkdir()
    for i in range(0, generated.num_rows, 5000):
        pq.write_table(generated.slice(i, 5000), work / "gen" / f"part-{i // 5000}.parquet")
    collection = resolve("bundled/tiny-science")
    results: dict[str, dict] = {}

    t = time.perf_counter()
    kept = single_process(generated, docs, args.keep_top_k)
    results["pure functions, one process (no Ray, no I/O)"] = {"rows": args.rows, "seconds": time.perf_counter() - t,
                                                                "kept": kept}
    warm_ray(args.cpus)
    import ray

    try:  # the per-corpus document store (absent before issue #11's docstore): built once, timed on its own
        from inpars_ray.io.docstore import ensure_store
        from inpars_ray.io.load import LoadConfig

        t = time.perf_counter()
        ensure_store(collection, LoadConfig())
        store_s = round(time.perf_counter() - t, 3)
    except ImportError:
        store_s = None

    t = time.perf_counter()
    # the stage as the pipeline runs it: reads the part files, filters, writes kept/dropped and the manifest
    counts = run_filter(work / "gen", collection, work / "scores",
                        FilterConfig(keep_top_k=args.keep_top_k, shuffle_partitions=args.cpus))["counts"]
    results["scores stage (Ray)"] = {"rows": args.rows, "seconds": time.perf_counter() - t, "kept": counts["kept"]}

    if args.rerank_rows:
        _rerank_contender(args, generated, collection, work, results)

    for r in results.values():
        r["rows_per_second"] = round(r["rows"] / r["seconds"], 1)
        r["seconds"] = round(r["seconds"], 3)
    base = results["pure functions, one process (no Ray, no I/O)"]["rows_per_second"]
    ratios = {"scores stage / one-process functions": ratio(results["scores stage (Ray)"]["rows_per_second"], base)}
    report = {"mode": args.mode, "rows": args.rows, "keep_top_k": args.keep_top_k, "cpus": args.cpus,
              "load_average_at_start": [round(x, 2) for x in start_load], "docstore_build_seconds": store_s,
              "results": results, "ratios": ratios, "targets": {"scores stage / one-process functions": 0.3}}
    out = write_result("filter_throughput", report)
    print(f"filter throughput, {args.rows} generated rows, {args.cpus} CPUs (load average at start {start_load[0]:.1f})")
    print(f"{'contender':<52} {'rows':>7} {'seconds':>9} {'rows/s':>9}")
    for name, r in results.items():
        print(f"{name:<52} {r['rows']:>7} {r['seconds']:>9.2f} {r['rows_per_second']:>9.1f}")
    print(json.dumps(ratios), f"wrote {out}")
    ray.shutdown()


def _rerank_contender(args, generated, collection, work, results) -> None:
    import ray

    from inpars_ray.models.rankers import RankerConfig
    from inpars_ray.stages.filter import FilterConfig, filter_dataset
    from inpars_ray.testing.tiny_t5 import build_tiny_monot5

    model = build_tiny_monot5(work / "monot5")
    (work / "gen-small").mkdir()
    pq.write_table(generated.slice(0, args.rerank_rows), work / "gen-small" / "part-0.parquet")
    t = time.perf_counter()
    counts = filter_dataset(ray.data.read_parquet(str(work / "gen-small")), collection, work / "reranker",
                            FilterConfig(strategy="reranker", ranker=RankerConfig(str(model), batch_size=32),
                                         keep_top_k=args.keep_top_k // 10, num_actors=1,
                                         shuffle_partitions=args.cpus))
    results["reranker stage (Ray, tiny random monoT5, 1 actor)"] = {
        "rows": args.rerank_rows, "seconds": time.perf_counter() - t, "kept": counts["kept"]}


if __name__ == "__main__":
    main()
