"""Reference outputs computed with transformers in the main venv: greedy decoding and teacher-forced
log-probs of given token ids (one forward pass over prompt + generated tokens)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from inpars_ray.models.backends.vllm_backend import newline_cut


@dataclass
class Reference:
    ids: list[int]            # generated ids up to (not including) the newline-carrying token
    text: str                 # first line, stripped
    logprobs: list[float]     # teacher-forced log-prob of each id in ``ids``


@lru_cache(maxsize=2)
def _load(model_path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return tok, model


def teacher_forced(model_path: str, prompt: str, gen_ids: list[int]) -> list[float]:
    """log P(gen_ids[i] | prompt, gen_ids[:i]) for every i, in float64 from float32 logits."""
    import torch

    tok, model = _load(model_path)
    prompt_ids = tok(prompt)["input_ids"]
    full = torch.tensor([prompt_ids + list(gen_ids)])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids)
    return [float(logp[start - 1 + i, t]) for i, t in enumerate(gen_ids)]


def greedy(model_path: str, prompt: str, max_new_tokens: int) -> Reference:
    """Greedy continuation with transformers, cut at the first newline of the decoded text."""
    import torch

    tok, model = _load(model_path)
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    gen = out[0, enc["input_ids"].shape[1]:].tolist()
    cut = newline_cut(lambda t: tok.decode(list(t)), gen)
    text = tok.decode(gen[: cut + 1], skip_special_tokens=True).split("\n", 1)[0].strip()
    return Reference(ids=gen[:cut], text=text, logprobs=teacher_forced(model_path, prompt, gen[:cut]))


def prompts_from_bundled(n: int) -> list[str]:
    """``n`` InPars-shaped prompts over documents of the bundled collection."""
    import json
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[2] / "inpars_ray/data/collections/tiny-science/corpus.jsonl"
    docs = [json.loads(line) for line in corpus.read_text().splitlines()[:n]]
    return [f"Document: {d['title']} {d['text'][:200]}\nRelevant Query:" for d in docs]
