"""``inpars-ray retrieve``: BM25 top-k of a collection's queries into a TREC run file."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_config_options, add_dataset, add_ray, config_from_args, run_stage


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inpars_ray.stages.retrieve import RetrieveConfig

    p = sub.add_parser("retrieve", help="BM25 top-k of the queries of a split, as a TREC run")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--index-dir", required=True, help="index built by 'inpars-ray index'")
    p.add_argument("--out", required=True, help="TREC run file to write")
    p.add_argument("--all-queries", action="store_true", help="search every query in queries.jsonl, not one split")
    p.add_argument("--keep-query-docid", action="store_true", help="same as --no-remove-query")
    add_config_options(p, RetrieveConfig, aliases={"bm25.num_actors": ["--actors"]})
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from inpars_ray.stages import retrieve

    config = config_from_args(retrieve.RetrieveConfig, args)
    if args.all_queries:
        config = dataclasses.replace(config, split=None)
    if args.keep_query_docid:
        config = dataclasses.replace(config, bm25=dataclasses.replace(config.bm25, remove_query=False))
    counts = run_stage(args, "retrieve", args.out, lambda collection, load: retrieve.retrieve_to_file(
        collection, args.index_dir, args.out, config, load)).counts
    print(f"wrote {counts.get('hits')} hits for {counts.get('queries')} queries to {args.out}")
    return 0
