"""``inpars-ray run``: the whole pipeline on one collection (default: the bundled collection)."""
from __future__ import annotations

import argparse
import json

from inpars_ray.cli._common import add_ray


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline on one collection (default: bundled/tiny-science)")
    p.add_argument("--config", default=None, help="YAML file of PipelineConfig fields")
    p.add_argument("--dataset", default=None, help="collection spec (overrides the config)")
    p.add_argument("--out-dir", default=None, help="output folder (overrides the config)")
    p.add_argument("--cache-dir", default=None, help="where beir/<name> downloads go")
    p.add_argument("--skip-bad-rows", action="store_true", help="report bad input rows and go on without them")
    add_ray(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import yaml

    from inpars_ray.load import LoadConfig
    from inpars_ray.pipeline import PipelineConfig, run_pipeline
    from inpars_ray.raykit import ensure_ray

    data = {}
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    config = PipelineConfig.from_dict(data)
    overrides = {k: v for k, v in {"dataset": args.dataset, "out_dir": args.out_dir}.items() if v}
    if args.skip_bad_rows:
        overrides["load"] = dataclasses.replace(config.load, skip_bad_rows=True)
    config = dataclasses.replace(config, **overrides) if overrides else config
    if not isinstance(config.load, LoadConfig):
        raise TypeError("load must be a LoadConfig")
    ensure_ray(args.ray_address, args.num_cpus)
    summary = run_pipeline(config, args.cache_dir)
    print(json.dumps(summary))
    return 0
