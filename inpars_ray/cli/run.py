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
    p.add_argument("--cache-dir", default=None, help="where beir/<name> downloads and irds:<id> files go")
    p.add_argument("--skip-bad-rows", action="store_true", help="same as --set load.skip_bad_rows=true")
    p.add_argument("--lease-wait", type=float, default=0.0, metavar="SECONDS",
                   help="if another run holds the run root's lease, wait this long for it (default: refuse at once)")
    p.add_argument("--break-lease", action="store_true",
                   help="break the run root's lease first: only when the run holding it is known to be gone "
                        "(a lease of a dead process on this host is broken without this)")
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
    return _run(config, args)


def _run(config, args: argparse.Namespace) -> int:
    from inpars_ray.io import storage
    from inpars_ray.io.lease import run_lease
    from inpars_ray.pipeline import run_pipeline
    from inpars_ray.report import build_report, terminal_table
    from inpars_ray.runtime import progress
    from inpars_ray.runtime.raykit import ensure_ray

    progress.echo(f"inpars-ray run: {config.dataset} -> {config.out_dir}")
    with progress.stage("ray") as line:  # starting a local Ray takes a while on a small machine
        ensure_ray(args.ray_address, args.num_cpus)
        line.summary = _cluster()
    storage.check_reachable(config.out_dir)  # before anything is written, the log and the lease included
    # one driver per run root, taken before any work: a second run refuses at once, naming the holder
    with run_lease(config.out_dir, wait_s=args.lease_wait, break_lease=args.break_lease):
        log = progress.attach_log(progress.log_file(config.out_dir))
        progress.echo(f"log: {log}")
        run_pipeline(config, args.cache_dir)
        report = build_report(config.out_dir)  # a gs:// run's report is published beside the run
    print(terminal_table(report), end="")
    print(f"\nreport: {report.where} (and {report.published[1].rsplit('/', 1)[-1]})")
    print(f"plots:  {', '.join(p.rsplit('/', 1)[-1] for p in report.published[2:])}")
    return 0


def _cluster() -> str:
    """The Ray cluster joined, in a few words: nodes, CPUs, GPUs."""
    import ray

    res = ray.cluster_resources()
    nodes = sum(1 for k in res if k.startswith("node:") and k != "node:__internal_head__")
    gpus = f", {res['GPU']:g} GPUs" if res.get("GPU") else ""
    return f"{nodes} node{'s' if nodes != 1 else ''}, {res.get('CPU', 0):g} CPUs{gpus}"
