"""``inpars-ray evaluate``: measure a TREC run against a collection's qrels (ir-measures)."""
from __future__ import annotations

import argparse
import json

from inpars_ray.cli._common import add_dataset


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure a TREC run against qrels (nDCG@10, RR@10, R@100, R@1000, AP)")
    add_dataset(p)
    p.add_argument("--run", required=True, help="TREC run file")
    p.add_argument("--split", default="test", help="qrels split (default test)")
    p.add_argument("--measures", default=None, help="comma-separated ir-measures names (default nDCG@10,RR@10,R@100,R@1000,AP)")
    p.add_argument("--exclude-queries", default=None, help="file of query ids (one per line) to leave out, "
                                                           "e.g. the few-shot queries used in prompts")
    p.add_argument("--keep-identical-ids", action="store_true",
                   help="keep hits whose document id equals the query id (by default they are dropped before "
                        "measuring, as BEIR's evaluation does: it matters for ArguAna and Quora)")
    p.add_argument("--per-query", default=None, help="write per-query values to this TSV file")
    p.add_argument("--out", default=None, help="write the JSON summary to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object (measure -> value) as the last line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.io import catalog
    from inpars_ray.stages.evaluate import DEFAULT_MEASURES, evaluate_files

    measures = args.measures.split(",") if args.measures else list(DEFAULT_MEASURES)
    result, summary = evaluate_files(catalog.resolve(args.dataset, args.cache_dir), args.run, args.split, measures,
                                     exclude_file=args.exclude_queries, per_query_path=args.per_query,
                                     summary_path=args.out, skip_bad_rows=args.skip_bad_rows,
                                     ignore_identical_ids=not args.keep_identical_ids)
    if args.json:
        print(json.dumps(result.aggregate, sort_keys=False))
    else:
        width = max(len(m) for m in result.aggregate)
        print(f"{args.run} ({result.num_queries} queries, split {args.split})")
        for name, value in result.aggregate.items():
            print(f"  {name:<{width}}  {value:.4f}")
    return 0
