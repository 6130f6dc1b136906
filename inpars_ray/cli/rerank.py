"""``inpars-ray rerank``: rescore a first-stage run (e.g. BM25's) with a reranker into a new TREC run."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_config_options, add_dataset, add_ray, config_from_args, run_stage


def add_parser(sub: argparse._SubParsersAction) -> None:
    from inpars_ray.stages.rerank import RerankConfig

    p = sub.add_parser("rerank", help="rescore the top hits of a TREC run with a reranker (resumable)")
    add_dataset(p)  # the query and document texts
    add_ray(p)
    p.add_argument("--run", required=True, help="first-stage TREC run to rerank (e.g. from 'inpars-ray retrieve')")
    p.add_argument("--out", required=True, help="TREC run file to write (its manifest goes beside it)")
    add_config_options(p, RerankConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.stages.rerank import RerankConfig, rerank_run

    config = config_from_args(RerankConfig, args)
    counts = run_stage(args, "rerank", args.out, lambda collection, load: rerank_run(
        collection, args.run, args.out, config, load)).counts
    print(f"reranked {counts.get('pairs_scored')} pairs of {counts.get('queries')} queries into {args.out}"
          f" ({counts.get('pairs_unknown', 0)} hits naming unknown documents or queries left out)")
    return 0
