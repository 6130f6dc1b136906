"""Memory stays flat: peak RSS of index + generate + mine on a corpus 5x larger vs a smaller one.

For each size a BEIR-layout corpus is generated (``corpus_gen.py``, cached in the work folder), then a fresh
process starts its own Ray and runs, while a thread samples the memory of its whole process tree (driver,
GCS, raylet, Ray workers, the JVMs they start): build the BM25 index, generate queries for a sample of
documents (the tiny test LM: the model's size is not what this measures), and mine BM25 negatives for them
(depth 100) with texts attached, for the generated queries and as many of the collection's test queries. Reported
for each size: peak RSS (sum over the tree), peak PSS (shared pages counted once), peak anonymous RSS
(pages backed by no file: what the processes allocated, without the page cache of memory-mapped files), each
phase's peaks, and the ratios of the two sizes.

    .venv/bin/python benchmarks/memory_flat.py [--quick | --full] [--sizes-gb 1,5] [--workdir DIR]

``--quick``: 0.05 GB vs 0.25 GB; ``--full``: 1 GB vs 5 GB (issue #11: ratio <= 1.25). Writes
benchmarks/results/memory_flat.json.
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

import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, ratio, write_result  # noqa: E402

PRESETS = {"quick": "0.05,0.25", "full": "1,5"}


def _test_queries(coll: Path, limit: int, kept_schema: pa.Schema) -> pa.Table:
    """The collection's first ``limit`` test queries with their relevant document, as mine's input rows."""
    positive = {}
    for line in (coll / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        positive.setdefault(qid, did)
    rows = []
    with (coll / "queries.jsonl").open() as fh:
        for line in fh:
            q = json.loads(line)
            if q["_id"] in positive:
                rows.append({"query_id": "test-" + q["_id"], "query": q["text"], "doc_id": positive[q["_id"]]})
            if len(rows) == limit:
                break
    return pa.Table.from_pylist(rows).cast(kept_schema)


def child(coll_dir: str, work: str, num_docs: int, queries: int) -> dict:
    """One size, in this (fresh) process: index + generate + mine, under the memory sampler."""
    os.environ.setdefault("INPARS_RAY_PROGRESS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    from _common import TreeMemory

    from inpars_ray.io.catalog import resolve
    from inpars_ray.runtime.raykit import ensure_ray
    from inpars_ray.stages import index
    from inpars_ray.stages.generate import GenerateConfig, GenerateResources, read_generated, run_generate
    from inpars_ray.stages.mine import MineConfig, mine_dataset
    from inpars_ray.testing.tiny_lm import tiny_lm_path

    work_p = Path(work)
    collection = resolve(coll_dir)
    model = str(tiny_lm_path())
    timings = {}
    with TreeMemory(interval=0.5) as mem:
        mem.phase = "ray start"
        ensure_ray(num_cpus=2)
        t = time.perf_counter()
        mem.phase = "index"
        index.build_index(collection, work_p / "index")
        timings["index"] = time.perf_counter() - t
        t = time.perf_counter()
        mem.phase = "generate"
        run_generate(collection, work_p / "generated", GenerateConfig(model=model, num_docs=num_docs, seed=1),
                     GenerateResources(batch_size=16))
        timings["generate"] = time.perf_counter() - t
        gen = read_generated(work_p / "generated")
        kept = gen.filter(gen.column("query").is_valid())
        kept = kept.slice(0, queries).select(["query_id", "query", "doc_id"])
        # the tiny LM's queries are random tokens that rarely hit: mine the collection's own test queries
        # too (each with its qrels document as the positive), so mine searches, samples and attaches texts
        kept = pa.concat_tables([kept, _test_queries(Path(coll_dir), queries, kept.schema)])
        t = time.perf_counter()
        mem.phase = "mine"
        counts = mine_dataset(ray.data.from_arrow(kept), collection, work_p / "index", work_p / "mined",
                              MineConfig(depth=100, shuffle_partitions=2, queries_per_call=500))
        timings["mine"] = time.perf_counter() - t
        memory_after = mem.sample()
    ray.shutdown()
    return {**mem.as_dict(), "timings": {k: round(v, 1) for k, v in timings.items()}, "mined_queries": kept.num_rows,
            "triples": counts.get("triples"), "rss_at_end_mb": round(memory_after[0] / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--sizes-gb", default=None)
    ap.add_argument("--num-docs", type=int, default=32, help="documents generated for")
    ap.add_argument("--queries", type=int, default=32, help="queries mined")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", nargs=2, metavar=("COLLECTION", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args.num_docs, args.queries)))
        return
    args.mode = "sizes " + args.sizes_gb if args.sizes_gb else (args.mode or "quick")
    sizes = [float(x) for x in (args.sizes_gb or PRESETS[args.mode]).split(",")]
    root = Path(args.workdir or Path(tempfile.gettempdir()) / "inpars-ray-memory-bench")
    from corpus_gen import write_collection

    start_load = machine()["load_average"]
    results = {}
    for gb in sizes:
        coll = root / f"corpus-{gb}gb"
        if not (coll / "queries.jsonl").exists():
            t = time.perf_counter()
            info = write_collection(coll, target_bytes=int(gb * 1e9), n_queries=100)
            (coll / "info.json").write_text(json.dumps(dict(info, seconds=round(time.perf_counter() - t, 1))))
        work = Path(tempfile.mkdtemp(prefix=f"run-{gb}gb-", dir=root))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, __file__, "--child", str(coll), str(work), "--num-docs",
                               str(args.num_docs), "--queries", str(args.queries)], env=env, capture_output=True,
                              text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            results[f"{gb} GB"] = {"error": proc.stderr[-3000:]}
        else:
            info = coll / "info.json"
            corpus = json.loads(info.read_text()) if info.exists() else {
                "corpus_bytes": (coll / "corpus.jsonl").stat().st_size}
            results[f"{gb} GB"] = dict(json.loads(lines[-1][7:]), corpus=corpus)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    small, large = (results[f"{gb} GB"] for gb in (sizes[0], sizes[-1]))
    ratios = {f"peak {name} {sizes[-1]} GB / {sizes[0]} GB": ratio(large.get(f"peak_{key}_mb"), small.get(f"peak_{key}_mb"))
              for name, key in (("RSS", "rss"), ("PSS", "pss"), ("anonymous RSS", "anon_rss"))}
    out = write_result("memory_flat", {"mode": args.mode, "sizes_gb": sizes, "load_average_at_start": start_load,
                                       "results": results, "ratios": ratios,
                                       "targets": {f"peak RSS {sizes[-1]} GB / {sizes[0]} GB": 1.25}})
    print(json.dumps({"ratios": ratios, "results": results}, indent=2)[:4000])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
