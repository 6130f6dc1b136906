"""``inpars-ray filter``: keep the best synthetic queries (InPars-v1 log-prob scores or InPars-v2 monoT5)."""
from __future__ import annotations

import argparse

from inpars_ray.cli._common import add_dataset, add_ray


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="filter generated queries by generator scores or by a monoT5 reranker")
    p.add_argument("--queries", required=True, help="folder of generated queries (Parquet, from 'generate')")
    add_dataset(p)  # the documents: needed to drop queries copied from them, and for the reranker
    add_ray(p)
    p.add_argument("--strategy", choices=("scores", "reranker"), default="scores",
                   help="scores: mean token log-prob (InPars-v1); reranker: monoT5 P(true) (InPars-v2)")
    p.add_argument("--keep-top-k", type=int, default=10_000, help="queries kept (default 10000)")
    p.add_argument("--aggregate", choices=("mean", "sum", "min"), default="mean",
                   help="scores: how token log-probs make one score (default mean)")
    p.add_argument("--min-tokens", type=int, default=3, help="drop queries with fewer tokens (default 3)")
    p.add_argument("--max-tokens", type=int, default=1000, help="drop queries with more tokens (default 1000)")
    p.add_argument("--model", default=None, help="reranker: monoT5 checkpoint (Hugging Face id or folder)")
    p.add_argument("--max-length", type=int, default=512, help="reranker: monoT5 input tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=16, help="reranker: pairs per forward pass (default 16)")
    p.add_argument("--num-actors", type=int, default=1, help="reranker: monoT5 actors (default 1)")
    p.add_argument("--partitions", type=int, default=8, help="hash partitions of the corpus join (default 8)")
    p.add_argument("--out", required=True, help="output folder: kept/, dropped/ and manifest.json")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray import catalog
    from inpars_ray.filter import FilterConfig, run_filter
    from inpars_ray.load import LoadConfig
    from inpars_ray.raykit import ensure_ray

    config = FilterConfig(strategy=args.strategy, keep_top_k=args.keep_top_k, aggregate=args.aggregate,
                          min_tokens=args.min_tokens, max_tokens=args.max_tokens, model=args.model,
                          max_length=args.max_length, batch_size=args.batch_size, num_actors=args.num_actors,
                          shuffle_partitions=args.partitions)
    collection = catalog.resolve(args.dataset, args.cache_dir)
    ensure_ray(args.ray_address, args.num_cpus)
    counts = run_filter(args.queries, collection, args.out, config,
                        LoadConfig(skip_bad_rows=args.skip_bad_rows)).get("counts", {})
    dropped = {k.removeprefix("dropped_"): v for k, v in counts.items() if k.startswith("dropped_") and v}
    print(f"kept {counts.get('kept')} of {counts.get('input_rows')} queries in {args.out}/kept; dropped: {dropped}")
    return 0
