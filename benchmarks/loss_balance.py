"""How hard the teacher's margins pull against hard labels, at the start model: the weight for
``train.contrastive_weight``.

On the first batches of a finished run's teacher stage (its scored triples, grouped into lists as the train
stage groups them, in a seeded shuffle), the start model's parameter-gradient norm of the distillation loss
(``margin-mse`` or ``kl``) and of the contrastive loss (hard labels: each query's source document against its
negatives and every other document of the batch), each averaged over the batch's lists; prints both and
their ratio per batch and the mean ratio. A ``contrastive_weight`` near the mean ratio gives the two terms
about equal pull at the first step (Adam then scales the step as a whole). It uses the engine's own loss
functions; nothing is trained::

    .venv/bin/python benchmarks/loss_balance.py runs/python-docstrings --model local:minilm --batches 4
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path


def grouped_lists(run_dir: Path) -> list[dict]:
    """The teacher stage's scored triples of ``run_dir`` as lists (one per query and positive)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from inpars_ray import schema as S
    from inpars_ray.io import artifacts
    from inpars_ray.io.manifest import published
    from inpars_ray.models.losses import group_triples

    files, _ = published(run_dir / "teacher", "teacher", "triples")
    table = pa.concat_tables([artifacts.read_parquet(f) for f in files])
    keys = sorted(set(zip(table.column(S.QUERY_ID).to_pylist(), table.column(S.POS_DOC_ID).to_pylist())))
    rows = []
    for qid, pid in keys:
        mask = pc.and_(pc.equal(table.column(S.QUERY_ID), qid), pc.equal(table.column(S.POS_DOC_ID), pid))
        rows.extend(group_triples(table.filter(mask)).to_pylist())
    return rows


def balance(rows: list[dict], model_name: str, batch_size: int, batches: int, max_length: int, loss: str,
            temperature: float, seed: int = 0) -> list[dict]:
    """Per batch: the two losses and their gradient norms at the start model."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from inpars_ray.models.distill import distill_from_embeddings
    from inpars_ray.models.local_models import resolve_model
    from inpars_ray.models.losses import contrastive_from_embeddings, list_doc_keys, list_embeddings

    rows = list(rows)
    random.Random(seed).shuffle(rows)
    path = resolve_model(model_name)
    model, tok = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    model.eval()  # no dropout: both terms see the same embeddings

    def norm() -> float:
        return float(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm())

    out = []
    for b in range(min(batches, len(rows) // batch_size)):
        batch = rows[b * batch_size:(b + 1) * batch_size]
        row = {}
        for name in ("teacher", "hard_labels"):
            model.zero_grad(set_to_none=True)
            q, d, pos_at = list_embeddings(model, tok, batch, max_length, "cpu")
            value = (distill_from_embeddings(batch, q, d, pos_at, loss, temperature, temperature, model=model)
                     if name == "teacher" else
                     contrastive_from_embeddings(q, d, pos_at, temperature, list_doc_keys(batch, None, "cpu")))
            (value / len(batch)).backward()
            row[name] = {"loss": value.item() / len(batch), "grad_norm": norm()}
        row["ratio"] = row["teacher"]["grad_norm"] / row["hard_labels"]["grad_norm"]
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a finished inpars-ray run folder with a teacher/ stage")
    ap.add_argument("--model", default="local:minilm", help="the start model (train.base_model)")
    ap.add_argument("--batch-size", type=int, default=16, help="lists per batch (train.batch_size)")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--loss", default="margin-mse", choices=["margin-mse", "kl"])
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    rows = balance(grouped_lists(args.run_dir), args.model, args.batch_size, args.batches, args.max_length,
                   args.loss, args.temperature)
    if not rows:
        print(f"{args.run_dir}: fewer than {args.batch_size} lists", file=sys.stderr)
        return 1
    for i, r in enumerate(rows):
        print(f"batch {i}: teacher loss {r['teacher']['loss']:.4f} (grad {r['teacher']['grad_norm']:.3f}), hard "
              f"labels {r['hard_labels']['loss']:.4f} (grad {r['hard_labels']['grad_norm']:.3f}), ratio "
              f"{r['ratio']:.4f}")
    print(f"mean ratio {statistics.fmean(r['ratio'] for r in rows):.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
