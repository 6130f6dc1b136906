"""``inpars-ray generate``: synthetic queries for a seeded sample of a collection's documents."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from inpars_ray.cli._common import add_dataset, add_ray

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
    p = subparsers.add_parser("generate", help="generate one synthetic query per sampled document (resumable)")
    add_dataset(p)
    add_ray(p)
    p.add_argument("--backend", choices=["hf", "vllm", "openai"], default="hf")
    p.add_argument("--model", required=True, help="model id, local folder or API model name")
    p.add_argument("--prompt", default="inpars", help="inpars | inpars-gbq | promptagator | a template FILE "
                   "holding one {document} placeholder")
    p.add_argument("--num-docs", type=int, default=100_000, help="documents sampled (default 100000, as InPars)")
    p.add_argument("--out", required=True, help="output folder (rerun with the same options to resume)")
    p.add_argument("--seed", type=int, default=1, help="seed of the sample, the few-shot draw and sampling")
    p.add_argument("--doc-max-tokens", type=int, default=256, help="documents are cut to this many tokens")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, help="longer prompts become error rows")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--num-fewshot", type=int, default=8, help="promptagator examples from the collection")
    p.add_argument("--fewshot-split", default="train", help="qrels split the promptagator examples come from")
    p.add_argument("--backend-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="extra backend argument (repeatable), e.g. device=cuda or base_url=http://...")
    p.add_argument("--batch-size", type=int, default=16, help="documents per backend call and part file")
    p.add_argument("--num-actors", type=int, default=1, help="backend actors, each loading the model once")
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.backends.base import GenerationParams
    from inpars_ray.catalog import resolve
    from inpars_ray.generate import GenerateConfig, GenerateResources, run_generate
    from inpars_ray.load import LoadConfig
    from inpars_ray.raykit import ensure_ray

    config = GenerateConfig(
        backend=args.backend, model=args.model, prompt=args.prompt, num_docs=args.num_docs, seed=args.seed,
        doc_max_tokens=args.doc_max_tokens, num_fewshot=args.num_fewshot, fewshot_split=args.fewshot_split,
        generation=GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                    top_p=args.top_p, seed=args.seed, max_prompt_tokens=args.max_prompt_tokens),
        backend_options=tuple(sorted(args.backend_option)),
    )
    resources = GenerateResources(batch_size=args.batch_size, num_actors=args.num_actors,
                                  gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor)
    collection = resolve(args.dataset, args.cache_dir)
    ensure_ray(args.ray_address, args.num_cpus)
    manifest = run_generate(collection, args.out, config, resources, LoadConfig(skip_bad_rows=args.skip_bad_rows))
    logger.info("generate: %s", ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items()))
    return 0
