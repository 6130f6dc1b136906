"""``inpars-ray consistency``: InPars-light's consistency filter over a filter's kept queries."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_config_options, add_dataset, add_ray, config_from_args, run_stage


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inpars_ray.stages.consistency import ConsistencyConfig

    p = sub.add_parser("consistency", help="keep the queries whose source document a ranker puts in the top k "
                       "of their BM25 hits (InPars-light; resumable)")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--candidates", required=True, help="a filter output folder (its kept/ queries are checked)")
    p.add_argument("--index", required=True, help="the collection's Lucene index (from 'inpars-ray index')")
    p.add_argument("--out", required=True, help="output folder: kept/, dropped/ and the manifest")
    add_config_options(p, ConsistencyConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.stages.consistency import ConsistencyConfig, run_consistency

    config = config_from_args(ConsistencyConfig, args)
    counts = run_stage(args, "consistency", args.out, lambda collection, load: run_consistency(
        args.candidates, collection, args.index, args.out, config, load)).counts
    print(f"kept {counts.get('kept')} of {counts.get('candidates')} candidate queries in {args.out}"
          f" ({counts.get('source_not_retrieved', 0)} whose source BM25 did not retrieve)")
    return 0
