"""``inpars-ray retrieve``: BM25 top-k of a collection's queries into a TREC run file."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_dataset, add_ray


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrieve", help="BM25 top-k of the queries of a split, as a TREC run")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--index-dir", required=True, help="index built by 'inpars-ray index'")
    p.add_argument("--out", required=True, help="TREC run file to write")
    p.add_argument("--k", type=int, default=1000, help="hits per query (default 1000)")
    p.add_argument("--split", default="test", help="qrels split whose queries are searched (default test)")
    p.add_argument("--all-queries", action="store_true", help="search every query in queries.jsonl, not one split")
    p.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (default 0.9, BEIR)")
    p.add_argument("--b", type=float, default=0.4, help="BM25 b (default 0.4, BEIR)")
    p.add_argument("--threads", type=int, default=2, help="search threads per actor")
    p.add_argument("--actors", type=int, default=1, help="Ray actors searching in parallel")
    p.add_argument("--queries-per-task", type=int, default=2000, help="queries per SearchCollection call")
    p.add_argument("--keep-query-docid", action="store_true",
                   help="keep hits whose doc id equals the query id (Anserini's BEIR runs remove them)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray import bm25, catalog
    from inpars_ray.load import LoadConfig
    from inpars_ray.raykit import ensure_ray

    collection = catalog.resolve(args.dataset, args.cache_dir)
    config = bm25.RetrieveConfig(
        split=None if args.all_queries else args.split,
        k=args.k,
        bm25=bm25.BM25Config(k1=args.k1, b=args.b, threads=args.threads, queries_per_task=args.queries_per_task,
                             remove_query=not args.keep_query_docid, num_actors=args.actors),
    )
    ensure_ray(args.ray_address, args.num_cpus)
    manifest = bm25.retrieve_to_file(collection, args.index_dir, args.out, config,
                                     LoadConfig(skip_bad_rows=args.skip_bad_rows))
    counts = manifest.get("counts", {})
    print(f"wrote {counts.get('hits')} hits for {counts.get('queries')} queries to {args.out}")
    return 0
