"""``inpars-ray mine``: BM25 negatives for the kept queries, written as training triples."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_dataset, add_ray


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mine", help="sample BM25 negatives for filtered queries and write training triples")
    p.add_argument("--queries", required=True, help="filter output folder (or a Parquet folder of queries)")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--index-dir", required=True, help="BM25 index of the collection (from 'inpars-ray index')")
    p.add_argument("--out", required=True, help="output folder: triples/, short_queries/, triples.tsv, manifest")
    p.add_argument("--depth", type=int, default=1000, help="BM25 hits negatives are drawn from (default 1000)")
    p.add_argument("--negatives", type=int, default=1, help="negatives per query (default 1, InPars-v2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the draws (default 1)")
    p.add_argument("--num-actors", type=int, default=1, help="BM25 searcher actors (default 1)")
    p.add_argument("--threads", type=int, default=2, help="search threads per actor (default 2)")
    p.add_argument("--partitions", type=int, default=8, help="hash partitions of the text joins (default 8)")
    p.add_argument("--no-tsv", action="store_true", help="do not write triples.tsv (query, positive, negative)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray import catalog
    from inpars_ray.bm25 import BM25Config
    from inpars_ray.load import LoadConfig
    from inpars_ray.mine import MineConfig, export_tsv, run_mine
    from inpars_ray.raykit import ensure_ray

    config = MineConfig(depth=args.depth, negatives=args.negatives, seed=args.seed, num_actors=args.num_actors,
                        bm25=BM25Config(threads=args.threads, remove_query=False),
                        shuffle_partitions=args.partitions)
    collection = catalog.resolve(args.dataset, args.cache_dir)
    ensure_ray(args.ray_address, args.num_cpus)
    counts = run_mine(args.queries, collection, args.index_dir, args.out, config,
                      LoadConfig(skip_bad_rows=args.skip_bad_rows)).get("counts", {})
    tsv = None if args.no_tsv else export_tsv(args.out)
    print(f"{counts.get('triples')} triples for {counts.get('queries')} queries in {args.out}/triples"
          f"{f' and {tsv}' if tsv else ''}; {counts.get('short_queries')} queries got fewer than "
          f"{args.negatives} negatives (see {args.out}/short_queries)")
    return 0
