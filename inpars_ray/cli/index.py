"""``inpars-ray index``: build the BM25 (Lucene) index of a collection."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_config_options, add_dataset, add_ray, config_from_args, run_stage


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inpars_ray.stages.index import IndexConfig

    p = sub.add_parser("index", help="build a BM25 index (Anserini, BEIR flat settings) of a collection")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--index-dir", required=True, help="folder for the index (created; reused if complete)")
    add_config_options(p, IndexConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.stages import index

    config = config_from_args(index.IndexConfig, args)
    counts = run_stage(args, "index", args.index_dir, lambda collection, load: index.build_index(
        collection, args.index_dir, load, config)).counts
    print(f"indexed {counts.get('documents')} documents into {args.index_dir} "
          f"({counts.get('bad_rows', 0)} bad rows left out)")
    return 0
