"""``inpars-ray tune``: a Ray Tune sweep of the training recipe on a synthetic dev set, never the test qrels
(delegates to :func:`inpars_ray.pipeline.run_tune`)."""
from __future__ import annotations

import argparse
import json

from inpars_ray.cli._common import add_ray


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="sweep the training recipe (Ray Tune, ASHA) on a synthetic dev set; writes "
                       "the trials table, a plot and the best settings as a run --config file")
    p.add_argument("--config", default=None, help="YAML file of pipeline settings; its inpars.tune section (or "
                   "the defaults) sets the sweep")
    p.add_argument("--space", default=None, help="YAML file of the search space (same as --set "
                   "inpars.tune.space_file=FILE), e.g. configs/tune-space.yaml")
    p.add_argument("--num-samples", type=int, default=None, help="trials (same as --set inpars.tune.num_samples=N)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one setting, e.g. --set inpars.tune.max_concurrent_trials=2 (repeatable)")
    p.add_argument("--dataset", default=None, help="collection spec (same as --set dataset=SPEC)")
    p.add_argument("--out-dir", default=None, help="run root (same as --set out_dir=DIR); the sweep goes to "
                   "OUT_DIR/tune/")
    p.add_argument("--cache-dir", default=None, help="where beir/<name> downloads go")
    add_ray(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.config import load_config

    overrides = []
    if args.space or args.num_samples is not None:
        overrides.append("inpars.tune={}")  # the section exists before its keys are set
    if args.space:
        overrides.append(f"inpars.tune.space_file={json.dumps(args.space)}")
    if args.num_samples is not None:
        overrides.append(f"inpars.tune.num_samples={args.num_samples}")
    overrides += list(args.overrides)
    if args.dataset:
        overrides.append(f"dataset={json.dumps(args.dataset)}")
    if args.out_dir:
        overrides.append(f"out_dir={json.dumps(args.out_dir)}")
    config = load_config(args.config, overrides)  # a bad key or space fails here, before Ray starts
    return _tune(config, args)


def _tune(config, args: argparse.Namespace) -> int:
    from inpars_ray.io import storage
    from inpars_ray.io.lease import run_lease
    from inpars_ray.pipeline import run_tune
    from inpars_ray.runtime import progress
    from inpars_ray.runtime.raykit import ensure_ray

    progress.echo(f"inpars-ray tune: {config.dataset} -> {config.out_dir}/tune")
    with progress.stage("ray"):
        ensure_ray(args.ray_address, args.num_cpus)
    storage.check_reachable(config.out_dir)
    # the sweep writes under the run root: one driver at a time, as for run
    with run_lease(config.out_dir, purpose="inpars-ray tune"):
        log = progress.attach_log(progress.log_file(config.out_dir))
        progress.echo(f"log: {log}")
        swept = run_tune(config, args.cache_dir)
        outputs = swept.extra["outputs"]
        print(storage.location(outputs["markdown"]).read_text(), end="")
        print(f"\ntrials: {outputs['json']}\nplot:   {outputs['plot']}\nbest:   {swept.extra['best_yaml']}")
        return 0
