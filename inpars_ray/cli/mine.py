"""``inpars-ray mine``: BM25 negatives for the kept queries, written as training triples."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_config_options, add_dataset, add_ray, config_from_args, run_stage


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inpars_ray.stages.mine import MineConfig

    p = sub.add_parser("mine", help="sample BM25 negatives for filtered queries and write training triples")
    p.add_argument("--queries", required=True, help="filter output folder (or a Parquet folder of queries)")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--index-dir", required=True, help="BM25 index of the collection (from 'inpars-ray index')")
    p.add_argument("--out", required=True, help="output folder: triples/, short_queries/, triples.tsv, manifest")
    p.add_argument("--no-tsv", action="store_true", help="do not write triples.tsv (query, positive, negative)")
    # the miner's own num_actors and queries_per_call apply; BM25's copies of them are unused here. Dense
    # negatives (a nested model block) are set in a run's YAML config
    add_config_options(p, MineConfig, prefixed={"bm25"}, skip={"bm25.num_actors", "bm25.queries_per_task", "dense"},
                       aliases={"bm25.threads": ["--threads"], "shuffle_partitions": ["--partitions"]})
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.stages.mine import MineConfig, export_tsv, run_mine

    config = config_from_args(MineConfig, args)
    counts = run_stage(args, "mine", args.out, lambda collection, load: run_mine(
        args.queries, collection, args.index_dir, args.out, config, load)).counts
    tsv = None if args.no_tsv else export_tsv(args.out)
    print(f"{counts.get('triples')} triples for {counts.get('queries')} queries in {args.out}/triples"
          f"{f' and {tsv}' if tsv else ''}; {counts.get('short_queries')} queries got fewer than "
          f"{config.negatives} negatives (see {args.out}/short_queries)")
    return 0
