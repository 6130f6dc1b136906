"""Model-level timings on an accelerator: the engine's scoring and one distillation training step.

Ray is not needed (the lent GPU machine has none): this times the code the rerank and teacher actors and
the train workers run, on models of MiniLM-L6's and MPNet-base's shapes (random weights: speed does not
depend on the values) with the MiniLM tokenizer, against the raw forward pass of the same model on the
same batches. Figures: pairs/s of

* ``raw``: tokenised once, fixed batches, ``model(**batch)`` + pooling, nothing else;
* ``engine``: :meth:`inpars_ray.models.rankers.Ranker.score` (tokenisation, length buckets, scatter back;
  the bi-encoder's embedding cache off, so each text is embedded as often as it occurs);

and lists/s of a margin-MSE step (:func:`inpars_ray.models.distill.bi_encoder_distill_sum`, 4 negatives,
both towers and query tower only).

Run::

    python benchmarks/gpu_model_timing.py --tokenizer DIR --out results/gpu_model_timing.json
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

SHAPES = {"minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
          "mpnet-base-shape": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                   intermediate_size=3072)}


def _texts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = ("return the value of a list object file path string default number when given key table "
             "module class method read write open close parse format encode decode socket thread").split()
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(words // 2, words))) for _ in range(n)]


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_scoring(name, shape, tokenizer_dir, device, pairs, batch, max_length):
    import torch
    import transformers

    from inpars_ray.models.encoding import embed
    from inpars_ray.models.families import save_bi_encoder
    from inpars_ray.models.rankers import Ranker, RankerConfig

    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=512, **shape)
    model = transformers.BertModel(cfg).eval()
    folder = Path(f"/tmp/gpu-timing-{name}")
    save_bi_encoder(model, tok, folder, "mean", max_length)
    queries, docs = _texts(pairs, 10, 1), _texts(pairs, 160, 2)
    model.to(device)
    enc = tok(docs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            embed(model, {k: v[:batch].to(device) for k, v in enc.items()})
        _sync(torch, device)
        t0 = time.perf_counter()
        for i in range(0, pairs, batch):
            embed(model, {k: v.to(device) for k, v in tok(queries[i:i + batch], truncation=True,
                  max_length=max_length, padding=True, return_tensors="pt").items()})
            embed(model, {k: v[i:i + batch].to(device) for k, v in enc.items()})
        _sync(torch, device)
        raw = pairs / (time.perf_counter() - t0)
    ranker = Ranker(RankerConfig(model=str(folder), family="bi-encoder", max_length=max_length, batch_size=batch,
                                 device=str(device), embedding_cache=0))
    ranker.score(queries[:batch], docs[:batch])
    _sync(torch, device)
    t0 = time.perf_counter()
    ranker.score(queries, docs)
    _sync(torch, device)
    engine = pairs / (time.perf_counter() - t0)
    return {"model": name, "pairs": pairs, "batch": batch, "max_length": max_length, "raw_pairs_per_s": round(raw, 1),
            "engine_pairs_per_s": round(engine, 1), "engine_over_raw": round(engine / raw, 3)}, folder


def time_training(name, folder, device, lists, micro, max_length):
    import torch

    from inpars_ray import schema as S
    from inpars_ray.models import distill
    from inpars_ray.models.families import load_model

    out = {}
    for query_only in (False, True):
        model, tok = load_model("bi-encoder", folder, training=True)
        model.to(device)
        docs_model = None
        if query_only:
            docs_model, _ = load_model("bi-encoder", folder)
            docs_model.to(device).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
        qs, ds = _texts(lists, 10, 3), _texts(lists * 5, 160, 4)
        rows = [{S.QUERY: qs[i], S.POS_TEXT: ds[5 * i], "neg_texts": ds[5 * i + 1:5 * i + 5],
                 distill.POS_SCORE: 0.8, distill.NEG_SCORES: [0.5, 0.4, 0.3, 0.2]} for i in range(lists)]
        cache: dict = {}
        steps = 0
        t0 = None
        for i in range(0, lists, micro):
            if i == micro:  # the first micro-batch is warm-up
                _sync(torch, device)
                t0 = time.perf_counter()
            opt.zero_grad()
            loss = distill.bi_encoder_distill_sum(model, tok, rows[i:i + micro], max_length, device, "margin-mse",
                                                  0.05, 0.05, document_encoder=docs_model, doc_cache=cache)
            loss.backward()
            opt.step()
            steps += 1
        _sync(torch, device)
        out["query_only" if query_only else "both_towers"] = round((lists - micro) / (time.perf_counter() - t0), 1)
    return {"model": name, "lists_per_s": out, "micro_batch": micro, "negatives": 4, "max_length": max_length}


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="a folder with the MiniLM tokenizer files")
    p.add_argument("--pairs", type=int, default=4096)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lists", type=int, default=512)
    p.add_argument("--micro", type=int, default=32)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "scoring": [], "training": []}
    for name, shape in SHAPES.items():
        row, folder = time_scoring(name, shape, args.tokenizer, device, args.pairs, args.batch, args.max_length)
        result["scoring"].append(row)
        print(json.dumps(row), flush=True)
        row = time_training(name, folder, device, args.lists, args.micro, args.max_length)
        result["training"].append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
