"""``inpars-ray export``: a run's trained model as a Hugging Face repository folder (model files, a model card,
the synthetic data in the layout of ``inpars/generated-data``), optionally pushed to the Hub."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's trained model with a model card and its synthetic data "
                                      "(a folder ready for the Hugging Face Hub); --push uploads it")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run root written by 'inpars-ray run' (its --out-dir)")
    p.add_argument("--to", required=True, metavar="DIR",
                   help="folder to write (new, empty, or an earlier export, which is replaced)")
    p.add_argument("--push", default=None, metavar="REPO_ID",
                   help="then upload the folder to this Hub model repository (created if missing); needs a token "
                        "with write access: HF_TOKEN or `hf auth login`")
    p.add_argument("--private", action="store_true", help="with --push: create the repository private")
    p.add_argument("--name", default=None, help="the model's name in the card (default: the repository's name "
                                                "with --push, else inpars-<family>-<collection>)")
    p.add_argument("--license", default="other", help="the card's license id, e.g. apache-2.0 (default: other; "
                                                      "the base model's, generator's and collection's licences apply)")
    p.add_argument("--no-prompt-text", action="store_true",
                   help="write prompt_text as null instead of loading the generator's tokenizer to rebuild the prompts")
    p.add_argument("--cache-dir", default=None, help="where the run's collection was downloaded (as run --cache-dir)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.integrations.hub import export_run, push

    name = args.name or (args.push.rsplit("/", 1)[-1] if args.push else None)
    done = export_run(args.run_dir, args.to, name=name, license=args.license, prompt_text=not args.no_prompt_text,
                      cache_dir=args.cache_dir)
    counts = ", ".join(f"{k} {v}" for k, v in done.counts.items())
    print(f"wrote {done.path}: the model, README.md (model card) and {done.data.relative_to(done.path)}/ ({counts})")
    if args.push:
        print(f"pushed to {args.push}: {push(done.path, args.push, private=args.private)}")
    return 0
