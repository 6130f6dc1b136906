"""vLLM-on-CPU contenders for ``benchmarks/generate_throughput.py`` (same documents, prompt, model, decoding).

* ``vllm-cpu-server``: the ``openai`` backend in this process, against a vLLM OpenAI-compatible server on
  loopback (started from ``.venv-vllm``; its start-up is reported as ``load_seconds``, not timed);
  ``--batch-size`` requests in flight.
* ``vllm-cpu-offline``: the ``vllm`` backend (``vllm.LLM``) in a ``.venv-vllm`` subprocess, fed the same
  documents in batches of ``--batch-size``; only the generation loop is timed (the subprocess reports it).

Both need ``scripts/setup_vllm_venv.sh`` to have run. Run through this file, which registers them in
``generate_throughput.RUNNERS`` and writes ``benchmarks/results/generate_throughput_vllm.json``:

    .venv/bin/python benchmarks/generate_vllm_runners.py --num-docs 32 --batch-size 8 \\
        --runners hf-batched,vllm-cpu-server,vllm-cpu-offline
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

import generate_throughput as gt  # noqa: E402  (the benchmark these runners join)

from tests.vllm_cpu.vllm_env import VLLM_PYTHON, VLLMServer, vllm_env  # noqa: E402

#: context length of the engines: the prompt limit (2048 tokens) plus the generated tokens
MAX_MODEL_LEN = 4096

_OFFLINE = r"""
import json, sys, time
import pyarrow.parquet as pq

def main():
    from inpars_ray.models.backends.base import GenerationParams
    from inpars_ray.models.backends.vllm_backend import VLLMBackend
    from inpars_ray.stages.generate_rows import generate_batch
    from inpars_ray.models.prompts import PromptBuilder, resolve_template

    docs_path, model, batch_size, max_new, doc_max, max_len = sys.argv[1:7]
    docs = pq.read_table(docs_path)
    t_load = time.perf_counter()
    backend = VLLMBackend(model, dtype="float32", max_model_len=int(max_len), enforce_eager=True)
    builder = PromptBuilder(resolve_template("inpars"), lambda text: backend.truncate(text, int(doc_max)))
    params = GenerationParams(max_new_tokens=int(max_new))
    t0 = time.perf_counter()
    queries = 0
    for start in range(0, docs.num_rows, int(batch_size)):
        out = generate_batch(docs.slice(start, int(batch_size)), builder, backend, params, "inpars", model, [])
        queries += out.column("error").null_count  # rows without an error carry a query
    seconds = time.perf_counter() - t0
    print("RESULT " + json.dumps({"docs": docs.num_rows, "queries": queries, "seconds": seconds,
                                  "load_seconds": t0 - t_load}))

if __name__ == "__main__":
    main()
"""


def run_vllm_server(ctx: dict[str, Any]) -> dict[str, Any]:
    """openai backend -> vLLM server on loopback, ``--batch-size`` requests in flight."""
    from inpars_ray.models.backends.openai_backend import OpenAIBackend
    from inpars_ray.stages.generate_rows import generate_batch

    args = ctx["args"]
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        t_load = time.perf_counter()
        server = VLLMServer(Path(ctx["model"]), Path(tmp) / "server.log", max_model_len=MAX_MODEL_LEN)
        try:
            server.wait_ready(deadline_s=900)
            backend = OpenAIBackend(ctx["model"], base_url=f"{server.url}/v1", api_key_env=None,
                                    max_concurrency=args.batch_size)
            builder = gt._builder(backend, ctx["config"])
            t0 = time.perf_counter()
            docs, queries = ctx["docs"], 0
            for start in range(0, docs.num_rows, args.batch_size):
                out = generate_batch(docs.slice(start, args.batch_size), builder, backend, ctx["config"].generation,
                                     "inpars", ctx["model"], [])
                queries += out.column("error").null_count  # rows without an error carry a query
            seconds = time.perf_counter() - t0
            usage = backend.usage()
            backend.close()
        finally:
            server.stop()
    return {"docs": docs.num_rows, "queries": queries, "seconds": seconds, "load_seconds": t0 - t_load,
            "batch_size": args.batch_size, "usage": usage}


def run_vllm_offline(ctx: dict[str, Any]) -> dict[str, Any]:
    """vllm backend (``vllm.LLM``) in a ``.venv-vllm`` subprocess, batches of ``--batch-size``."""
    import pyarrow.parquet as pq

    args, cfg = ctx["args"], ctx["config"]
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        docs_path = Path(tmp) / "docs.parquet"
        pq.write_table(ctx["docs"].select(["doc_id", "title", "text"]), docs_path)
        proc = subprocess.run(
            [str(VLLM_PYTHON), "-c", _OFFLINE, str(docs_path), ctx["model"], str(args.batch_size),
             str(cfg.generation.max_new_tokens), str(cfg.doc_max_tokens), str(MAX_MODEL_LEN)],
            env=vllm_env(), capture_output=True, text=True, timeout=1800,
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"vllm-cpu-offline failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len("RESULT "):]), batch_size=args.batch_size)


gt.RUNNERS["vllm-cpu-server"] = run_vllm_server
gt.RUNNERS["vllm-cpu-offline"] = run_vllm_offline

if __name__ == "__main__":
    if not VLLM_PYTHON.exists():
        sys.exit(f"{VLLM_PYTHON} is missing: run scripts/setup_vllm_venv.sh first")
    gt.RESULTS = REPO / "benchmarks" / "results" / "generate_throughput_vllm.json"
    gt.main()
