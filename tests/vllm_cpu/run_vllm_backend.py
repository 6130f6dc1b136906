"""Run by the tests with the vllm venv's python (it cannot be imported by the main venv, which has no vllm).

Usage: run_vllm_backend.py MODEL PROMPTS_JSON OUT_JSON [--processor]

Writes OUT_JSON with the VLLMBackend's greedy generations, a sampled run with the generated token ids
(so the test can teacher-force them), tokenizer checks, and with --processor the rows of the
ray.data.llm processor for the same prompts.
"""
from __future__ import annotations

import dataclasses
import json
import sys


def main(model: str, prompts_path: str, out_path: str, processor: bool) -> None:
    from inpars_ray.models.backends.base import GenerationParams
    from inpars_ray.models.backends.vllm_backend import VLLMBackend

    prompts = json.load(open(prompts_path))
    out: dict = {}
    backend = VLLMBackend(model, dtype="float32", max_model_len=256, enforce_eager=True)
    greedy = GenerationParams(max_new_tokens=24, max_prompt_tokens=200)
    too_long = prompts[0] * 20
    gens = backend.generate(prompts + [too_long], greedy)
    out["greedy"] = [dataclasses.asdict(g) for g in gens]

    # sampling: the backend's own conversion, with the raw ids kept so the test can teacher-force them
    sampled = GenerationParams(max_new_tokens=24, temperature=1.0, seed=5)
    results = backend._llm.generate(prompts, [backend._sampling_params(sampled, p) for p in prompts],
                                    use_tqdm=False)
    rows = []
    for res in results:
        gen = backend._to_generation(res)
        comp = res.outputs[0]
        ids = list(comp.token_ids)[: len(gen.token_logprobs)]
        # positions where the sampled token is not the top-1 candidate (then vLLM reports two entries)
        off_top = [i for i, t in enumerate(ids) if comp.logprobs[i][t].rank != 1]
        rows.append(dict(dataclasses.asdict(gen), ids=ids, off_top=off_top))
    out["sampled"] = rows
    text = "Coral reef bleaching under thermal stress: larval settlement and algal symbionts in 2019."
    out["tokenizer"] = dict(count=backend.count_tokens(text), truncated=backend.truncate(text, 7), text=text)
    backend.close()
    del backend

    if processor:
        import ray

        from inpars_ray.models.backends.vllm_backend import VLLMConfig, vllm_processor

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            proc = vllm_processor(model, GenerationParams(max_new_tokens=24), batch_size=4, cpu_only=True,
                                  config=VLLMConfig(dtype="float32", max_model_len=256, enforce_eager=True))
            ds = ray.data.from_items([{"doc_id": str(i), "prompt": p} for i, p in enumerate(prompts)])
            got = sorted(proc(ds).take_all(), key=lambda r: int(r["doc_id"]))
            out["processor"] = [dict(doc_id=r["doc_id"], text=r["generated_query"],
                                     token_logprobs=[float(x) for x in r["token_logprobs"]]) for r in got]
        finally:
            ray.shutdown()

    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], "--processor" in sys.argv[4:])
