"""``inpars-ray run``: the whole pipeline on one collection (default: the bundled collection)."""
from __future__ import annotations

import argparse
import json

from inpars_ray.cli._common import add_ray


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline on one collection (default: bundled/tiny-science)")
    p.add_argument("--config", default=None, help="YAML file of pipeline settings (see --print-config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one setting, e.g. --set inpars.train.lr=1e-3 (repeatable; VALUE is YAML)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--dataset", default=None, help="collection spec (same as --set dataset=SPEC)")
    p.add_argument("--out-dir", default=None, help="run root (same as --set out_dir=DIR)")
    p.add_argument("--cache-dir", default=None, help="where beir/<name> downloads go")
    p.add_argument("--skip-bad-rows", action="store_true", help="same as --set load.skip_bad_rows=true")
    add_ray(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.config import dump_yaml, load_config

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"dataset={json.dumps(args.dataset)}")
    if args.out_dir:
        overrides.append(f"out_dir={json.dumps(args.out_dir)}")
    if args.skip_bad_rows:
        overrides.append("load.skip_bad_rows=true")
    config = load_config(args.config, overrides)  # a bad key fails here, before Ray starts
    if args.print_config:
        print(dump_yaml(config), end="")
        return 0
    from inpars_ray import progress
    from inpars_ray.pipeline import run_pipeline
    from inpars_ray.raykit import ensure_ray
    from inpars_ray.report import build_report, terminal_table

    log = progress.attach_log(progress.log_file(config.out_dir))
    progress.echo(f"inpars-ray run: {config.dataset} -> {config.out_dir}")
    progress.echo(f"log: {log}")
    ensure_ray(args.ray_address, args.num_cpus)
    run_pipeline(config, args.cache_dir)
    report = build_report(config.out_dir)
    print(terminal_table(report), end="")
    print(f"\nreport: {report.paths['md']} (and {report.paths['json'].name})")
    print(f"plots:  {', '.join(p.name for p in report.plots)}")
    return 0
