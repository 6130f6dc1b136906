"""``inpars-ray train``: fine-tune a ranker (monoT5, cross-encoder, bi-encoder) on triples with Ray Train
(delegates to :func:`inpars_ray.stages.train.train`)."""
from __future__ import annotations

import argparse
import logging

from inpars_ray.cli._common import add_config_options, add_ray, config_from_args, given, log_beside
from inpars_ray.errors import ConfigError
from inpars_ray.runtime import progress

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    from inpars_ray.stages.train_config import TrainConfig

    p = subparsers.add_parser("train", help="fine-tune a ranker (monoT5, cross-encoder or bi-encoder) on "
                              "(query, positive, negative) triples")
    p.add_argument("--triples", required=True, help="folder (or file) of triples Parquet (schema.TRIPLES)")
    p.add_argument("--out", required=True, help="run folder: model/, manifest.json, and (by default) checkpoints")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="gradient-accumulation micro-steps per optimizer step (sets the micro batch)")
    p.add_argument("--dev-pairs", default=None, help="Parquet of query_id, query, doc_id, text for validation")
    p.add_argument("--dev-qrels", default=None, help="Parquet of qrels (query_id, doc_id, relevance)")
    add_config_options(p, TrainConfig, aliases={"num_workers": ["--workers"], "max_steps": ["--steps"]})
    add_ray(p)
    p.set_defaults(run=run)


def micro_batch(batch_size: int, workers: int, micro: int | None, accum: int | None) -> int | None:
    """The per-worker micro batch, given either itself or the number of accumulation micro-steps
    (None: neither given, the config's default applies)."""
    if micro is not None and accum is not None:
        raise ConfigError("give --micro-batch-size or --grad-accum, not both")
    if accum is None:
        return micro
    if accum < 1 or batch_size % (workers * accum):
        raise ConfigError(f"--batch-size {batch_size} does not split into {workers} workers x {accum} micro-steps")
    return batch_size // (workers * accum)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.stages.train import train
    from inpars_ray.stages.train_config import TrainConfig

    # pydantic.dataclasses adds __pydantic_fields__ (each field's FieldInfo) when it decorates the class
    values, fields = given(args), TrainConfig.__pydantic_fields__  # type: ignore[attr-defined]
    micro = micro_batch(values.get("batch_size", fields["batch_size"].default),
                        values.get("num_workers", fields["num_workers"].default),
                        values.get("micro_batch_size"), args.grad_accum)
    config = config_from_args(TrainConfig, args, **({} if micro is None else {"micro_batch_size": micro}))
    if bool(args.dev_pairs) != bool(args.dev_qrels):
        raise ConfigError("--dev-pairs and --dev-qrels go together")
    dev = {"pairs": args.dev_pairs, "qrels": args.dev_qrels} if args.dev_pairs else None
    log_beside(args.out)
    with progress.stage("train"):
        manifest = train(args.triples, args.out, config, dev=dev, ray_address=args.ray_address,
                         num_cpus=args.num_cpus)
    extra = manifest.extra
    logger.info("model: %s (steps=%s, loss %s -> %s)", extra.get("model"), manifest.counts.get("steps"),
                extra.get("first_loss"), extra.get("final_loss"))
    return 0
