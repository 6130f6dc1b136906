"""``inpars-ray index``: build the BM25 (Lucene) index of a collection."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_config_options, add_dataset, add_ray, config_from_args, log_beside
from inpars_ray.runtime import progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inpars_ray.stages.index import IndexConfig

    p = sub.add_parser("index", help="build a BM25 index (Anserini, BEIR flat settings) of a collection")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--index-dir", required=True, help="folder for the index (created; reused if complete)")
    add_config_options(p, IndexConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.io import catalog
    from inpars_ray.io.load import LoadConfig
    from inpars_ray.runtime.raykit import ensure_ray
    from inpars_ray.stages import index

    config = config_from_args(index.IndexConfig, args)
    collection = catalog.resolve(args.dataset, args.cache_dir)
    log_beside(args.index_dir)
    ensure_ray(args.ray_address, args.num_cpus)
    with progress.stage("index"):
        manifest = index.build_index(collection, args.index_dir, LoadConfig(skip_bad_rows=args.skip_bad_rows),
                                    config)
    counts = manifest.get("counts", {})
    print(f"indexed {counts.get('documents')} documents into {args.index_dir} "
          f"({counts.get('bad_rows', 0)} bad rows left out)")
    return 0
