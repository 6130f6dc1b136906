"""Rerank throughput (pairs/s) with a real MiniLM-L6 cross-encoder: the stage vs a plain loop vs the raw forward.

One run, one generated collection, one BM25 run (``--queries`` queries x ``--depth`` hits), the same model,
batch size, input length and torch threads for every contender. Contenders:

1. ``raw forward``: the pairs tokenised beforehand (not timed), sorted by length and cut into batches of
   ``--batch-size``; only the model's forward passes are timed. The limit of this model on this hardware.
2. ``plain batched loop``: what a user writes by hand in one process: the hits in run order, batches of
   ``--batch-size`` tokenised and padded to their longest pair, forward, collect scores (document texts
   looked up in an in-memory dict, not timed).
3. ``rerank stage``: ``inpars_ray.stages.rerank.rerank_run`` end to end on a warm Ray (run read, document texts,
   scoring actor start and model load, ranking, TREC file written).

    .venv/bin/python benchmarks/rerank_throughput.py [--quick | --full] [--docs N --queries N --depth N]
    .venv/bin/python benchmarks/rerank_throughput.py --dataset builtin/python-docstrings --queries 200 \
        --result rerank_throughput_docstrings      # real text of varied lengths

Writes benchmarks/results/rerank_throughput.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INPARS_RAY_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, ratio, warm_ray, write_result  # noqa: E402
from corpus_gen import write_collection  # noqa: E402
from models import minilm_cross_encoder  # noqa: E402

#: full: at least 20,000 pairs (issue #11); 200 queries x 100 hits fall a few short when a query has fewer hits
PRESETS = {"quick": dict(docs=5000, queries=10, depth=100, min_pairs=0),
           "full": dict(docs=20_000, queries=200, depth=100, min_pairs=20_000)}


def _pairs(work: Path, args: argparse.Namespace):
    """Collection, index and BM25 run (cached in ``work``); returns (collection, run file, run table, query
    texts, document texts), the documents as the stage reads them (title and text joined, by id).

    ``--dataset`` takes any collection (e.g. ``builtin/python-docstrings``: real text whose lengths vary, as
    in BEIR); without it, a generated one of ``--docs`` documents (30-120 words each, near the length cap).
    """
    from inpars_ray.io import catalog, trec
    from inpars_ray.io.docstore import ensure_store, open_store
    from inpars_ray.io.load import LoadConfig, read_queries
    from inpars_ray.io.text import document_texts
    from inpars_ray.stages import index, retrieve

    if args.dataset:
        collection = catalog.resolve(args.dataset)
    else:
        coll = work / "collection"
        if not (coll / "corpus.jsonl").exists():
            write_collection(coll, args.docs, args.queries)
        collection = catalog.resolve(str(coll))
    index.build_index(collection, work / "index")
    every_query, _ = read_queries(collection)
    n = args.queries
    while True:  # a query may have fewer than --depth hits: take more queries until --min-pairs pairs
        queries = every_query.slice(0, n)
        run_file = work / f"bm25-{n}.run"
        if not run_file.exists():
            trec.write_trec_run(retrieve.retrieve(work / "index", queries, args.depth, retrieve.BM25Config(threads=2)),
                                run_file)
        run = trec.read_trec_run(run_file)
        if run.num_rows >= args.min_pairs or n >= every_query.num_rows:
            break
        n += -(-(args.min_pairs - run.num_rows) // args.depth)
    if run.num_rows < args.min_pairs:
        raise SystemExit(f"all {n} queries give {run.num_rows} pairs, fewer than --min-pairs {args.min_pairs}")
    rows = open_store(ensure_store(collection, LoadConfig())).fetch(run.column("doc_id"))
    texts = document_texts(rows.column("title"), rows.column("text")).to_pylist()
    qtext = dict(zip(queries.column("query_id").to_pylist(), queries.column("query").to_pylist()))
    if any(t is None for t in texts):
        raise SystemExit("the run names documents the collection lacks")
    return collection, run_file, run, [qtext[q] for q in run.column("query_id").to_pylist()], texts


def raw_forward(model_dir: str, queries: list[str], docs: list[str], batch: int, max_length: int) -> dict:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = tok(queries, docs, truncation=True, max_length=max_length)
    order = sorted(range(len(queries)), key=lambda i: len(enc["input_ids"][i]))
    batches = []
    for s in range(0, len(order), batch):
        rows = [{k: enc[k][i] for k in enc} for i in order[s:s + batch]]
        batches.append(tok.pad(rows, return_tensors="pt"))
    t = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(**b).logits
    s = time.perf_counter() - t
    return {"pairs": len(queries), "seconds": s, "padded_tokens": sum(int(b["input_ids"].numel()) for b in batches)}


def plain_loop(model_dir: str, queries: list[str], docs: list[str], batch: int, max_length: int) -> dict:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    scores = []
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(queries), batch):
            enc = tok(queries[s:s + batch], docs[s:s + batch], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            scores.extend(model(**enc).logits[:, 0].tolist())
    s = time.perf_counter() - t
    return {"pairs": len(scores), "seconds": s}


def stage(collection, run_file: Path, out: Path, model_dir: str, batch: int, max_length: int, threads: int) -> dict:
    from inpars_ray.models.rankers import RankerConfig
    from inpars_ray.stages import rerank

    # the ranker block and the stage's own settings; names neither has (threads) are recorded, not passed
    wanted = dict(model=model_dir, depth=10_000, max_length=max_length, batch_size=batch, num_actors=1,
                  partitions=2, rows_per_call=4096, threads=threads, cpus_per_actor=threads, family="cross-encoder")
    ranker_fields = {f.name for f in dataclasses.fields(RankerConfig)}
    stage_fields = {f.name for f in dataclasses.fields(rerank.RerankConfig)} - {"ranker"}
    fields = ranker_fields | stage_fields
    config = rerank.RerankConfig(ranker=RankerConfig(**{k: v for k, v in wanted.items() if k in ranker_fields}),
                                 **{k: v for k, v in wanted.items() if k in stage_fields})
    t = time.perf_counter()
    manifest = rerank.rerank_run(collection, run_file, out, config)
    s = time.perf_counter() - t
    return {"pairs": manifest["counts"]["pairs_scored"], "seconds": s, "config": {k: v for k, v in wanted.items()
                                                                                   if k in fields},
            "stage_timings": manifest.get("timings")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--dataset", default=None, help="a collection to rerank (default: a generated one)")
    ap.add_argument("--docs", type=int)
    ap.add_argument("--queries", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--min-pairs", type=int, help="take more queries (in file order) until the run has this many "
                    "pairs (full: 20,000)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--result", default="rerank_throughput", help="result name under benchmarks/results/")
    args = ap.parse_args()
    args.mode = args.mode or "quick"
    for k, v in PRESETS[args.mode].items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    # Ray gives an actor OMP_NUM_THREADS = its CPUs unless the driver sets it: the scoring actor (one CPU
    # reserved, so the tasks that feed it can run) uses as many torch threads as the one-process contenders
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    name = args.dataset.replace("/", "-") if args.dataset else args.docs
    work = Path(args.workdir or Path(tempfile.gettempdir()) / f"inpars-ray-rerank-bench-{name}-{args.queries}-{args.depth}")
    work.mkdir(parents=True, exist_ok=True)
    start_load = machine()["load_average"]
    warm_ray(args.threads)
    model_dir = minilm_cross_encoder()
    collection, run_file, run, queries, docs = _pairs(work, args)
    results = {}
    results["raw forward (pre-tokenised, length-sorted)"] = raw_forward(model_dir, queries, docs, args.batch_size,
                                                                        args.max_length)
    results["plain batched loop (one process)"] = plain_loop(model_dir, queries, docs, args.batch_size, args.max_length)
    try:
        results["rerank stage (Ray, end to end)"] = stage(collection, run_file, work / "reranked.run", model_dir,
                                                          args.batch_size, args.max_length, args.threads)
    except Exception as exc:  # recorded, not hidden: e.g. a stage that cannot load a cross-encoder yet
        results["rerank stage (Ray, end to end)"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    for r in results.values():
        if "seconds" in r:
            r["pairs_per_second"] = round(r["pairs"] / r["seconds"], 2)
            r["seconds"] = round(r["seconds"], 3)
    rate = {k: v.get("pairs_per_second") for k, v in results.items()}
    ratios = {
        "rerank stage / plain batched loop": ratio(rate["rerank stage (Ray, end to end)"],
                                                   rate["plain batched loop (one process)"]),
        "rerank stage / raw forward": ratio(rate["rerank stage (Ray, end to end)"],
                                            rate["raw forward (pre-tokenised, length-sorted)"]),
    }
    out = write_result(args.result, {
        "mode": args.mode, "model": "all-MiniLM-L6-v2 as a cross-encoder (random head)", "pairs": run.num_rows,
        "settings": {k: v for k, v in vars(args).items() if k != "workdir"}, "load_average_at_start": start_load,
        "results": results, "ratios": ratios, "targets": {"rerank stage / plain batched loop": 1.3,
                                                          "rerank stage / raw forward": 0.85}})
    print(json.dumps({"ratios": ratios, "pairs_per_second": rate}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
