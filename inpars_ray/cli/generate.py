"""``inpars-ray generate``: synthetic queries for a seeded sample of a collection's documents."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from inpars_ray.cli._common import add_config_options, add_dataset, add_ray, config_from_args, run_stage

logger = logging.getLogger(__name__)


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, booleans), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from inpars_ray.stages.generate import GenerateConfig, GenerateResources

    p = subparsers.add_parser("generate", help="generate synthetic queries for sampled documents (resumable)")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--out", required=True, help="output folder (rerun with the same options to resume)")
    p.add_argument("--backend-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="extra backend argument (repeatable), e.g. device=cuda or base_url=http://...")
    # the sampling seed is the generation's seed too: one --seed
    # the later queries' sampling settings are --sampling-top-p etc., beside the first query's --top-p
    add_config_options(p, GenerateConfig, skip={"backend_options", "generation.seed"}, required={"model"},
                       prefixed={"sampling"})
    add_config_options(p, GenerateResources, title="how the work is spread (not part of the run's settings: a resumed run may use another shape)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os

    from inpars_ray.models.local_models import is_local, resolve_model
    from inpars_ray.stages.generate import GenerateConfig, GenerateResources, run_generate

    config = config_from_args(GenerateConfig, args, backend_options=tuple(sorted(args.backend_option)))
    config = dataclasses.replace(config, generation=dataclasses.replace(config.generation, seed=config.seed))
    if is_local(config.model):  # local:smollm2, local:gemma3, local:tiny-lm: a file or folder, as `run` resolves them
        models_dir = None if "://" in args.out else os.path.join(args.out, "models")
        config = dataclasses.replace(config, model=resolve_model(config.model, models_dir))
    resources = config_from_args(GenerateResources, args)
    manifest = run_stage(args, "generate", args.out,
                         lambda collection, load: run_generate(collection, args.out, config, resources, load))
    logger.info("generate: %s", ", ".join(f"{k}={v}" for k, v in manifest.counts.items()))
    return 0
