"""``inpars-ray filter``: keep the best synthetic queries (InPars-v1 log-prob scores or InPars-v2 ranker scores)."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_config_options, add_dataset, add_ray, config_from_args, run_stage


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inpars_ray.stages.filter import FilterConfig

    p = sub.add_parser("filter", help="filter generated queries by generator scores or by a ranker "
                       "(monoT5, cross-encoder, bi-encoder)")
    p.add_argument("--queries", required=True, help="folder of generated queries (Parquet, from 'generate')")
    add_dataset(p)  # the documents: needed to drop queries copied from them, and for the reranker
    add_ray(p)
    p.add_argument("--out", required=True, help="output folder: kept/, dropped/ and manifest.json")
    add_config_options(p, FilterConfig, aliases={"shuffle_partitions": ["--partitions"]})
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.stages.filter import FilterConfig, run_filter

    config = config_from_args(FilterConfig, args)
    counts = run_stage(args, "filter", args.out, lambda collection, load: run_filter(
        args.queries, collection, args.out, config, load)).counts
    dropped = {k.removeprefix("dropped_"): v for k, v in counts.items() if k.startswith("dropped_") and v}
    print(f"kept {counts.get('kept')} of {counts.get('input_rows')} queries in {args.out}/kept; dropped: {dropped}")
    return 0
