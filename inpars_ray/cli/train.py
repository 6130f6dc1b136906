"""``inpars-ray train``: fine-tune monoT5 on triples with Ray Train (delegates to :func:`inpars_ray.train.train`)."""
from __future__ import annotations

import argparse
import logging

from inpars_ray.cli._common import add_ray
from inpars_ray.errors import ConfigError

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="fine-tune a monoT5 reranker on (query, positive, negative) triples",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--triples", required=True, help="folder (or file) of triples Parquet (schema.TRIPLES)")
    p.add_argument("--base-model", required=True, help="Hugging Face seq2seq id or local folder to start from")
    p.add_argument("--out", required=True, help="run folder: model/, manifest.json, and (by default) checkpoints")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (one per GPU / TPU VM host)")
    p.add_argument("--accelerator", choices=["cpu", "gpu", "tpu"], default="cpu")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps (default: full epochs)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128, help="effective batch in examples (2 per triple)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="examples per forward pass per worker (default 8, or derived from --grad-accum)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="gradient-accumulation micro-steps per optimizer step (sets the micro batch)")
    p.add_argument("--lr", type=float, default=3e-4, help="constant AdamW learning rate")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from")
    p.add_argument("--storage-path", default=None, help="checkpoint storage, local or gs:// (default <out>/ray)")
    p.add_argument("--no-mixed-precision", action="store_true", help="train in float32 on GPU")
    p.add_argument("--tpu-chips-per-worker", type=int, default=4, help="0 runs the XLA path on torch-xla's CPU device")
    p.add_argument("--dev-pairs", default=None, help="Parquet of query_id, query, doc_id, text for validation")
    p.add_argument("--dev-qrels", default=None, help="Parquet of qrels (query_id, doc_id, relevance)")
    p.add_argument("--validate-every", type=int, default=None, help="steps between dev nDCG@10 evaluations")
    add_ray(p)
    p.set_defaults(run=run)


def micro_batch(batch_size: int, workers: int, micro: int | None, accum: int | None) -> int:
    """The per-worker micro batch, given either itself or the number of accumulation micro-steps."""
    if micro is not None and accum is not None:
        raise ConfigError("give --micro-batch-size or --grad-accum, not both")
    if accum is None:
        return micro if micro is not None else 8
    if accum < 1 or batch_size % (workers * accum):
        raise ConfigError(f"--batch-size {batch_size} does not split into {workers} workers x {accum} micro-steps")
    return batch_size // (workers * accum)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.train import TrainConfig, train

    config = TrainConfig(
        base_model=args.base_model, lr=args.lr, batch_size=args.batch_size,
        micro_batch_size=micro_batch(args.batch_size, args.workers, args.micro_batch_size, args.grad_accum),
        max_length=args.max_length, epochs=args.epochs, max_steps=args.steps, num_workers=args.workers,
        accelerator=args.accelerator, mixed_precision=not args.no_mixed_precision,
        checkpoint_every=args.checkpoint_every, max_failures=args.max_failures, storage_path=args.storage_path,
        tpu_chips_per_worker=args.tpu_chips_per_worker, validate_every=args.validate_every,
    )
    if bool(args.dev_pairs) != bool(args.dev_qrels):
        raise ConfigError("--dev-pairs and --dev-qrels go together")
    dev = {"pairs": args.dev_pairs, "qrels": args.dev_qrels} if args.dev_pairs else None
    manifest = train(args.triples, args.out, config, dev=dev, ray_address=args.ray_address, num_cpus=args.num_cpus)
    extra = manifest.get("extra", {})
    logger.info("model: %s (steps=%s, loss %s -> %s)", extra.get("model"), manifest["counts"].get("steps"),
                extra.get("first_loss"), extra.get("final_loss"))
    return 0
