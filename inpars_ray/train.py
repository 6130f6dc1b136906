"""Stage 5 — train: fine-tune a ranker on (query, positive, negative) triples with Ray Train.

Every ranker family of :mod:`inpars_ray.rankers` trains here, each with its loss:

* ``monot5`` (InPars-v1 recipe, REFERENCE.md "train"; arXiv 2202.05144 §4, InPars repo issue #21 for the
  3e-4 LR): input ``Query: {q} Document: {d} Relevant:``, target ``true`` for the positive and ``false``
  for the negative of each triple; the loss covers only the target tokens, and the document (never the
  ``Relevant:`` suffix) is truncated — the encoder input is built by :mod:`inpars_ray.monot5`.
* ``cross-encoder`` with ``listwise`` (InPars-light, arXiv 2301.02998): softmax cross-entropy over one
  positive and its BM25 negatives, one list per (query, positive); or ``pointwise``: binary cross-entropy
  on the logit, positive 1, negative 0.
* ``bi-encoder`` with ``contrastive`` (GPL / Promptagator style, as sentence-transformers'
  MultipleNegativesRankingLoss): softmax cross-entropy of a query's cosine to its positive against its BM25
  negatives and every other document of the micro-batch, scaled by ``1 / temperature``.

Listwise and contrastive losses need a query's triples together: the miner writes one row per
(query, positive, negative), so training groups them by (query, positive) first (a Ray Data groupby,
materialised before the workers start). Their batch sizes count lists (queries); the pairwise losses'
count examples (two per triple). AdamW, constant LR after an optional linear warm-up.

Layers:

* pure functions: :func:`plan_steps` (batch geometry), :func:`expand_triples` (one triple -> two
  examples), :func:`encode_examples` and :func:`loss_sum` (per-example target-token loss);
* :func:`train_loop_per_worker`, the Ray Train worker (model loaded once per worker);
* :func:`train`, which wires triples Parquet -> Ray Data -> ``TorchTrainer`` and writes the manifest.

Data and resume. The triples are read (and grouped) into small blocks in Ray's object store before the
workers start, and each worker streams its own split of those blocks (``streaming_split`` without
dropping rows), so no process holds the whole file. Reading them while the workers hold their CPUs could
starve the read tasks of a CPU and leave every worker waiting on its split forever (issue 9.8). Every
worker takes the same stop/next-epoch decision from the same all-reduced counts, so all splits begin each
epoch together, as a streaming split requires. Gradients are summed across workers by hand rather
than by DDP: a step's loss is the sum of per-example losses divided by the *global* example count, so
uneven splits (and a worker that has run dry) still give the exact mean gradient and every example is
used once per epoch. A checkpoint (every ``checkpoint_every`` steps, Hugging Face format) holds the
model, the optimizer, the step and the ids of the triples consumed so far; a replaced worker group
restores all of it and skips consumed triples, so a killed worker costs at most the steps since the
last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray import storage
from inpars_ray.deps import require
from inpars_ray.errors import ConfigError
from inpars_ray.manifest import MANIFEST_NAME, StageRecord, config_hash, is_complete, read_manifest
from inpars_ray.monot5 import TARGET_FALSE, TARGET_TRUE, prompt_ids
from inpars_ray.rankers import BI_ENCODER, CROSS_ENCODER, FAMILIES, MONOT5, POOLINGS
from inpars_ray.stageconfig import Field, stage_config

logger = logging.getLogger(__name__)

STAGE = "train"
TRAINER_STATE = "trainer_state.pt"
DATA_STATE = "data_state"
ACCELERATORS = ("cpu", "gpu", "tpu")
LOSSES = {MONOT5: ("monot5",), CROSS_ENCODER: ("listwise", "pointwise"), BI_ENCODER: ("contrastive",)}
GROUPED_LOSSES = ("listwise", "contrastive")
#: columns of a grouped training row: one (query, positive) with all its negatives
NEG_DOC_IDS, NEG_TEXTS = "neg_doc_ids", "neg_texts"
#: triples per hash partition when they are grouped into lists
GROUP_ROWS_PER_PARTITION = 200_000


@stage_config
class TrainConfig:
    """How to fine-tune a ranker (defaults: InPars-v1 monoT5 on GPU, REFERENCE.md).

    ``batch_size / (num_workers * micro_batch_size)`` is the number of gradient-accumulation micro-steps and
    must be a whole number. The unit of both is an example (two per triple) for the pairwise losses
    (monot5, pointwise) and a (query, positive, negatives) list for listwise and contrastive.
    """

    base_model: str = Field(description="Hugging Face id or local folder of the checkpoint to start from")
    family: str | None = Field(None, description="monot5, cross-encoder or bi-encoder; None reads it from "
                               "base_model (a bare encoder such as all-MiniLM-L6-v2 reads as a bi-encoder: say "
                               "cross-encoder to train one)")
    loss: str | None = Field(None, description="monot5 (monoT5), listwise or pointwise (cross-encoder), "
                             "contrastive (bi-encoder); None picks the first of these for the family")
    lr: float = Field(3e-4, gt=0, description="AdamW learning rate, constant after the warm-up")
    warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up from 0 to lr")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(128, description="effective batch per optimizer step, all workers together: "
                            "examples (a triple gives two) or lists (listwise, contrastive)")
    micro_batch_size: int = Field(8, description="examples (or lists) per forward pass on one worker")
    max_length: int = Field(512, description="input length in tokens; the document is truncated, never "
                            "monoT5's suffix")
    max_negatives: int | None = Field(None, description="listwise/contrastive: at most this many BM25 negatives "
                                      "per list (None: all mined)")
    temperature: float = Field(0.05, gt=0, description="contrastive: softmax temperature of the cosine "
                               "similarities (0.05 = scale 20)")
    pooling: str = Field("mean", description="bi-encoder pooling: mean or cls")
    epochs: int = Field(1, description="passes over the triples (when max_steps is None)")
    max_steps: int | None = Field(None, description="train exactly this many optimizer steps, over as many "
                                  "epochs as that takes; None trains for `epochs` full epochs")
    num_workers: int = Field(1, description="Ray Train workers (one per GPU, or one per TPU VM host)")
    accelerator: str = Field("cpu", description="cpu (gloo), gpu (nccl) or tpu (torch-xla, see docs/tpu.md)")
    mixed_precision: bool = Field(True, description="on GPU, autocast to bfloat16 when the GPU supports it")
    checkpoint_every: int = Field(50, description="save a Hugging Face checkpoint every this many steps (and "
                                  "after the last one)")
    keep_checkpoints: int = Field(2, description="how many checkpoints Ray Train keeps in storage")
    max_failures: int = Field(2, description="worker-group failures Ray Train recovers from (restoring the "
                              "last checkpoint)")
    storage_path: str | None = Field(None, description="where Ray Train writes checkpoints (local path or "
                                     "gs://...); None means <out>/ray")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs a worker reserves; None takes 1, or an "
                                          "equal share of a smaller cluster; more than the cluster holds is "
                                          "refused (Ray Train would wait for them forever)")
    rows_per_block: int = Field(1024, description="training rows per Ray Data block; blocks much smaller than "
                                "the data let every worker get some")
    tpu_chips_per_worker: int = Field(4, ge=0, description="TPU chips a worker reserves (4 per v4 VM host; 0 "
                                      "runs the XLA path on torch-xla's CPU device)")
    seed: int = Field(0, ge=0, description="torch seed (the model init is the checkpoint's; this seeds dropout)")
    validate_every: int | None = Field(None, description="rank 0 computes nDCG@10 on the dev set every this "
                                       "many steps; None disables it")
    record_dir: str | None = Field(None, description="when set, workers write their pid and the ids of the "
                                   "examples they train on here (tests and audits)")

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"accelerator must be one of {ACCELERATORS}, got {self.accelerator!r}")
        for name in ("batch_size", "micro_batch_size", "rows_per_block", "max_length", "epochs", "num_workers", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"TrainConfig.max_steps must be >= 1 or None, got {self.max_steps}")
        if self.validate_every is not None and self.validate_every < 1:
            raise ConfigError(f"TrainConfig.validate_every must be >= 1 or None, got {self.validate_every}")
        if self.max_failures < 0:
            raise ConfigError(f"TrainConfig.max_failures must be >= 0, got {self.max_failures}")
        if self.family is not None and self.family not in FAMILIES:
            raise ConfigError(f"TrainConfig.family must be one of {FAMILIES} or None, got {self.family!r}")
        known = sorted({x for v in LOSSES.values() for x in v})
        if self.loss is not None and self.loss not in known:
            raise ConfigError(f"TrainConfig.loss must be one of {known} or None, got {self.loss!r}")
        if self.family is not None and self.loss is not None and self.loss not in LOSSES[self.family]:
            raise ConfigError(f"a {self.family} trains with loss {LOSSES[self.family]}, not {self.loss!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"TrainConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.temperature <= 0 or self.warmup_steps < 0:
            raise ConfigError("TrainConfig.temperature must be > 0 and warmup_steps >= 0")
        if self.max_negatives is not None and self.max_negatives < 1:
            raise ConfigError(f"TrainConfig.max_negatives must be >= 1 or None, got {self.max_negatives}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ConfigError(f"TrainConfig.cpus_per_worker must be > 0 or None, got {self.cpus_per_worker}")
        if self.loss is None and self.family is None:  # the unit is known once the family is read
            plan_steps(self.batch_size, self.micro_batch_size, self.num_workers, grouped=True)
        else:
            loss = self.loss or LOSSES[self.family][0]
            plan_steps(self.batch_size, self.micro_batch_size, self.num_workers, loss in GROUPED_LOSSES)

    def resolved(self) -> TrainConfig:
        """This config with ``family`` (from the checkpoint) and ``loss`` (the family's default) filled in."""
        from inpars_ray.rankers import detect_family

        family = self.family or detect_family(self.base_model)
        loss = self.loss or LOSSES[family][0]
        if loss not in LOSSES[family]:
            raise ConfigError(f"a {family} trains with loss {LOSSES[family]}, not {loss!r}")
        return dataclasses.replace(self, family=family, loss=loss)

    @property
    def grouped(self) -> bool:
        """Whether training rows are (query, positive, all negatives) lists rather than triples."""
        return self.loss in GROUPED_LOSSES


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Batch geometry of one optimizer step on one worker."""

    micro_triples: int  #: rows (triples, or lists when grouped) per forward pass
    accum_steps: int  #: forward passes per optimizer step
    triples_per_step: int  #: rows one worker consumes per optimizer step


def plan_steps(batch_size: int, micro_batch_size: int, num_workers: int, grouped: bool = False) -> StepPlan:
    """Split an effective batch of ``batch_size`` units over workers and accumulation micro-steps.

    The unit is an example (two per triple) for the pairwise losses and a list (one row) when ``grouped``.
    """
    per_row = 1 if grouped else 2
    if micro_batch_size % per_row:
        raise ConfigError(f"micro_batch_size={micro_batch_size} must be even: each triple gives two examples")
    per_step = micro_batch_size * num_workers
    if batch_size % per_step:
        raise ConfigError(f"batch_size={batch_size} is not a multiple of micro_batch_size x workers = "
                          f"{micro_batch_size} x {num_workers}")
    accum = batch_size // per_step
    return StepPlan(micro_batch_size // per_row, accum, accum * micro_batch_size // per_row)


def triple_id(query_id: str, pos_doc_id: str, neg_doc_id: str) -> str:
    """A triple's identity (a query may have several triples)."""
    return f"{query_id}\t{pos_doc_id}\t{neg_doc_id}"


def expand_triples(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str], list[str]]:
    """Two examples per triple: (query, positive, ``true``) and (query, negative, ``false``), with ids."""
    queries, docs, targets, ids = [], [], [], []
    for r in rows:
        tid = triple_id(r[S.QUERY_ID], r[S.POS_DOC_ID], r[S.NEG_DOC_ID])
        queries += [r[S.QUERY], r[S.QUERY]]
        docs += [r[S.POS_TEXT], r[S.NEG_TEXT]]
        targets += [TARGET_TRUE, TARGET_FALSE]
        ids += [tid + "\t+", tid + "\t-"]
    return queries, docs, targets, ids


def encode_examples(tokenizer, queries: list[str], docs: list[str], targets: list[str], max_length: int):
    """Encoder inputs and labels (target ids + EOS; padding set to -100 so it carries no loss)."""
    torch = require("torch", "monoT5 training")
    enc_ids = prompt_ids(tokenizer, queries, docs, max_length)
    lab_ids = tokenizer(targets, add_special_tokens=True)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def pad_to(rows: list[list[int]], value: int):
        out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    input_ids = pad_to(enc_ids, pad)
    return {"input_ids": input_ids, "attention_mask": (pad_to(enc_ids, -1) != -1).long(),
            "labels": pad_to(lab_ids, -100)}


def loss_sum(model, batch: dict[str, Any]):
    """Sum over examples of each example's mean cross-entropy on its target tokens."""
    torch = require("torch", "monoT5 training")
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
    tok = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                            reduction="none")
    counts = (labels != -100).sum(1).clamp(min=1)
    return (tok.sum(1) / counts).sum()


# --- listwise / contrastive: a query's triples as one list ----------------------------------------------
def group_id(query_id: str, pos_doc_id: str) -> str:
    """A list's identity: one (query, positive)."""
    return f"{query_id}\t{pos_doc_id}"


def group_triples(rows: pa.Table) -> pa.Table:
    """The triples of one (query, positive) as one row with lists of negatives, by ascending BM25 rank.

    A Ray Data ``map_groups`` function; a negative mined twice appears once.
    """
    rows = rows.sort_by([(S.NEG_RANK, "ascending"), (S.NEG_DOC_ID, "ascending")])
    seen, ids, texts = set(), [], []
    for did, text in zip(rows.column(S.NEG_DOC_ID).to_pylist(), rows.column(S.NEG_TEXT).to_pylist()):
        if did not in seen:
            seen.add(did)
            ids.append(did)
            texts.append(text)
    first = rows.slice(0, 1)
    return pa.table({S.QUERY_ID: first.column(S.QUERY_ID), S.QUERY: first.column(S.QUERY),
                     S.POS_DOC_ID: first.column(S.POS_DOC_ID), S.POS_TEXT: first.column(S.POS_TEXT),
                     NEG_DOC_IDS: pa.array([ids], pa.list_(pa.string())),
                     NEG_TEXTS: pa.array([texts], pa.list_(pa.string()))})


def unit_id(row: dict[str, Any], grouped: bool) -> str:
    """The id a checkpoint records for a consumed training row (a triple, or a list)."""
    if grouped:
        return group_id(row[S.QUERY_ID], row[S.POS_DOC_ID])
    return triple_id(row[S.QUERY_ID], row[S.POS_DOC_ID], row[S.NEG_DOC_ID])


def _lists(rows: list[dict[str, Any]], max_negatives: int | None):
    """(queries, [positive, negatives...] texts per list) of grouped rows."""
    queries, docs = [], []
    for r in rows:
        negs = r[NEG_TEXTS][:max_negatives] if max_negatives else r[NEG_TEXTS]
        queries.append(r[S.QUERY])
        docs.append([r[S.POS_TEXT], *negs])
    return queries, docs


def _tensors(enc: dict, device) -> dict:
    import torch

    return {k: torch.from_numpy(v).to(device) for k, v in enc.items()}


def listwise_loss_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device,
                      max_negatives: int | None = None):
    """InPars-light's loss, summed over lists: -log softmax(positive) among (positive, negatives) logits.

    Lists of different lengths are padded with -inf logits, which take no probability.
    """
    import torch

    from inpars_ray.rankers import cross_encoder_logits, encode_pairs

    queries, docs = _lists(rows, max_negatives)
    sizes = [len(d) for d in docs]
    flat_q = [q for q, n in zip(queries, sizes) for _ in range(n)]
    flat_d = [d for ds in docs for d in ds]
    logits = cross_encoder_logits(model, _tensors(encode_pairs(tokenizer, flat_q, flat_d, max_length), device)).float()
    table = torch.full((len(sizes), max(sizes)), float("-inf"), device=logits.device)
    rows_idx = torch.repeat_interleave(torch.arange(len(sizes), device=logits.device),
                                       torch.tensor(sizes, device=logits.device))
    cols_idx = torch.cat([torch.arange(n, device=logits.device) for n in sizes])
    table = table.index_put((rows_idx, cols_idx), logits)
    return -torch.log_softmax(table, dim=1)[:, 0].sum()


def pointwise_loss_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device):
    """Binary cross-entropy on the cross-encoder logit, summed over examples (positive 1, negative 0)."""
    import torch

    from inpars_ray.rankers import cross_encoder_logits, encode_pairs

    queries = [r[S.QUERY] for r in rows for _ in (0, 1)]
    docs = [t for r in rows for t in (r[S.POS_TEXT], r[S.NEG_TEXT])]
    labels = torch.tensor([1.0, 0.0] * len(rows), device=device)
    logits = cross_encoder_logits(model, _tensors(encode_pairs(tokenizer, queries, docs, max_length), device))
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum")


def contrastive_loss_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device,
                         max_negatives: int | None = None, temperature: float = 0.05, pooling: str = "mean"):
    """Bi-encoder loss summed over lists: each query's positive against its own BM25 negatives and every
    other document of the micro-batch (in-batch negatives), softmax over cosines / ``temperature``."""
    import torch

    from inpars_ray.rankers import embed, encode_texts

    queries, docs = _lists(rows, max_negatives)
    flat = [d for ds in docs for d in ds]
    pos_at = torch.tensor([0] + [len(d) for d in docs[:-1]], device=device).cumsum(0)
    q = embed(model, _tensors(encode_texts(tokenizer, queries, max_length), device), pooling)
    d = embed(model, _tensors(encode_texts(tokenizer, flat, max_length), device), pooling)
    sims = q @ d.T / temperature
    return torch.nn.functional.cross_entropy(sims, pos_at, reduction="sum")


def micro_loss(config: TrainConfig, model, tokenizer, rows: list[dict[str, Any]], device, autocast: bool):
    """(summed loss, units it covers, ids of the examples) of one micro-batch for ``config.loss``."""
    import torch

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        if config.loss == "monot5":
            q, d, t, ids = expand_triples(rows)
            batch = {k: v.to(device) for k, v in encode_examples(tokenizer, q, d, t, config.max_length).items()}
            return loss_sum(model, batch), len(ids), ids
        if config.loss == "pointwise":
            ids = [x for r in rows for x in (unit_id(r, False) + "\t+", unit_id(r, False) + "\t-")]
            return pointwise_loss_sum(model, tokenizer, rows, config.max_length, device), len(ids), ids
        ids = [unit_id(r, True) for r in rows]
        if config.loss == "listwise":
            loss = listwise_loss_sum(model, tokenizer, rows, config.max_length, device, config.max_negatives)
        else:
            loss = contrastive_loss_sum(model, tokenizer, rows, config.max_length, device, config.max_negatives,
                                        config.temperature, config.pooling)
        return loss, len(ids), ids


def _fresh_triples(shard, consumed: set[str], rows_per_batch: int, grouped: bool = False) -> Iterator[dict[str, Any]]:
    """Rows of this worker's split, skipping rows a restored checkpoint says were already trained on."""
    cols = ([S.QUERY_ID, S.QUERY, S.POS_DOC_ID, S.POS_TEXT, NEG_DOC_IDS, NEG_TEXTS] if grouped else
            [S.QUERY_ID, S.QUERY, S.POS_DOC_ID, S.POS_TEXT, S.NEG_DOC_ID, S.NEG_TEXT])
    for batch in shard.iter_batches(batch_size=rows_per_batch, batch_format="pyarrow"):
        for row in batch.select(cols).to_pylist():
            if unit_id(row, grouped) not in consumed:
                yield row


class _Collectives:
    """Sums across workers through torch.distributed (gloo / nccl / xla); a no-op for one worker."""

    def __init__(self, world_size: int, via_cpu: bool) -> None:
        self.world_size = world_size
        self.via_cpu = via_cpu  # XLA compute with gloo collectives moves tensors through host memory

    def sum_(self, tensor):
        import torch.distributed as dist

        if self.world_size == 1:
            return tensor
        if self.via_cpu and tensor.device.type != "cpu":
            host = tensor.detach().cpu()
            dist.all_reduce(host)
            tensor.copy_(host.to(tensor.device))
        else:
            dist.all_reduce(tensor)
        return tensor

    def sum_grads(self, params: list) -> None:
        """Sum gradients of ``params`` over workers in one flat buffer (absent grads count as zeros)."""
        import torch

        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.sum_(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n


def _fill_step(rows: Iterator[dict[str, Any]], per_worker: int, coll: _Collectives, rank: int, world: int,
               device) -> list[dict[str, Any]]:
    """This worker's triples for one step, so that the step holds a full global batch while any worker has data.

    Streaming splits are uneven, so a worker may run dry before the others; the others then take its
    share (a few rounds of one small all-reduce). Every step but the last of an epoch is therefore full,
    and the number of steps is ceil(2 * triples / batch_size) whatever the split.
    """
    import torch

    take = list(islice(rows, per_worker))
    dry = len(take) < per_worker
    target = per_worker * world
    while True:
        state = torch.zeros(2 * world, dtype=torch.float64, device=device)
        state[2 * rank], state[2 * rank + 1] = len(take), float(dry)
        state = coll.sum_(state).cpu().tolist()
        deficit = target - int(sum(state[0::2]))
        wet = [r for r in range(world) if not state[2 * r + 1]]
        if deficit <= 0 or not wet:
            return take
        share = -(-deficit // len(wet))  # ceil: a wet worker may overshoot by < len(wet) triples; trimmed below
        if not dry:
            pos = wet.index(rank)
            extra = list(islice(rows, max(0, min(share, deficit - pos * share))))
            dry = len(extra) < min(share, deficit - pos * share) or dry
            take += extra


def _save_checkpoint(ctx_rank: int, config: TrainConfig, model, tokenizer, optimizer, state: dict[str, Any],
                     consumed: set[str], history: list[dict[str, Any]], directory: Path) -> None:
    """Rank 0 writes the model (in its family's format), the optimizer and the history; every rank its consumed ids."""
    import torch

    from inpars_ray.rankers import save_ranker

    if ctx_rank == 0:
        # safetensors reads host memory: XLA (and CUDA) tensors are copied to the CPU first
        cpu_state = None if next(model.parameters()).device.type == "cpu" else _to_cpu(model.state_dict())
        save_ranker(config.family, model, tokenizer, directory, config.pooling, config.max_length, cpu_state)
        torch.save({"optimizer": _to_cpu(optimizer.state_dict()), **state}, directory / TRAINER_STATE)
        (directory / "history.json").write_text(json.dumps(history))
    (directory / DATA_STATE).mkdir(parents=True, exist_ok=True)
    (directory / DATA_STATE / f"rank{ctx_rank}.json").write_text(json.dumps(sorted(consumed)))


def _to_cpu(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _record(record_dir: str | None, name: str, text: str, mode: str = "a") -> None:
    if record_dir:
        Path(record_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(record_dir) / name, mode) as fh:
            fh.write(text)


def _more_steps(config: TrainConfig, step: int, epoch: int) -> bool:
    """Whether training goes on: ``max_steps`` steps over as many epochs as needed, else ``epochs`` epochs."""
    return step < config.max_steps if config.max_steps is not None else epoch < config.epochs


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker: restore or load, stream the split epoch after epoch, step, report, checkpoint.

    Every worker takes the same decisions at the same step (they all see the same all-reduced counts),
    so all of them start each new epoch of the streaming split together and stop together: a split
    whose other half is never iterated again would wait forever.
    """
    import ray.train
    import ray.train.torch
    import torch

    from inpars_ray.rankers import load_model

    config: TrainConfig = loop_config["config"]  # already resolved: family and loss are set
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    plan = plan_steps(config.batch_size, config.micro_batch_size, world, config.grouped)
    torch.manual_seed(config.seed + rank)
    _record(config.record_dir, f"rank{rank}.pid", str(os.getpid()), mode="w")

    if config.accelerator == "tpu":
        from inpars_ray.tpu import xla_device, xla_sync

        device, sync, coll = xla_device(), xla_sync, _Collectives(world, via_cpu=True)
    else:
        device = ray.train.torch.get_device() if config.accelerator == "gpu" else torch.device("cpu")
        sync, coll = (lambda: None), _Collectives(world, via_cpu=False)
    autocast = (config.accelerator == "gpu" and config.mixed_precision and torch.cuda.is_bf16_supported())

    checkpoint = ray.train.get_checkpoint()
    step, epoch, consumed, history, opt_state = 0, 0, set(), [], None
    if checkpoint is None:
        model, tokenizer = load_model(config.family, config.base_model, training=True)
    else:
        with checkpoint.as_directory() as d:
            d = Path(d)
            model, tokenizer = load_model(config.family, d, training=True)
            saved = torch.load(d / TRAINER_STATE, map_location="cpu", weights_only=False)
            step, epoch, history, opt_state = saved["step"], saved["epoch"], json.loads(
                (d / "history.json").read_text()), saved["optimizer"]
            for part in sorted((d / DATA_STATE).glob("rank*.json")):
                consumed.update(json.loads(part.read_text()))
        logger.info("rank %d restored step %d (epoch %d, %d rows consumed)", rank, step, epoch, len(consumed))
    _record(config.record_dir, "events.log", f"start rank={rank} pid={os.getpid()} step={step}\n")
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    mine = set(consumed) if rank == 0 else set()  # rank 0 carries the restored ids into the next checkpoint

    shard = ray.train.get_dataset_shard("train")
    last_saved = step
    dev = _DevSet(loop_config.get("dev"), config) if rank == 0 and config.validate_every else None
    while _more_steps(config, step, epoch):
        rows = _fresh_triples(shard, consumed, max(plan.triples_per_step, 64), config.grouped)
        steps_this_epoch = 0
        while config.max_steps is None or step < config.max_steps:
            t0 = time.perf_counter()
            take = _fill_step(rows, plan.triples_per_step, coll, rank, world, device)
            units = len(take) if config.grouped else 2 * len(take)
            n_global = int(coll.sum_(torch.tensor([units], dtype=torch.float64, device=device)).item())
            if n_global == 0:
                break
            for group in optimizer.param_groups:  # linear warm-up, then constant
                warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
                group["lr"] = config.lr * warm
            optimizer.zero_grad(set_to_none=True)
            local_loss = torch.zeros((), dtype=torch.float64, device=device)
            seen: list[str] = []
            for i in range(0, len(take), plan.micro_triples):
                loss, _, ids = micro_loss(config, model, tokenizer, take[i:i + plan.micro_triples], device, autocast)
                (loss / n_global).backward()
                local_loss += loss.detach().double()
                seen += ids
            coll.sum_grads(params)
            optimizer.step()
            sync()
            loss_value = coll.sum_(local_loss).item() / n_global
            step += 1
            steps_this_epoch += 1
            new = {unit_id(r, config.grouped) for r in take}
            consumed |= new
            mine |= new
            _record(config.record_dir, f"seen_rank{rank}.txt", "".join(f"{epoch}\t{x}\n" for x in seen))
            seconds = time.perf_counter() - t0
            metrics = {"step": step, "epoch": epoch, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                       "examples": n_global, "examples_per_s": n_global / seconds}
            if dev is not None and step % config.validate_every == 0:
                metrics["dev_ndcg@10"] = dev.ndcg10(model, tokenizer)
                model.train()
            history.append(metrics)
            if step % config.checkpoint_every == 0:
                _report(rank, config, model, tokenizer, optimizer, step, epoch, mine, history, metrics)
                last_saved = step
            else:
                ray.train.report(metrics)
        if config.max_steps is not None and step >= config.max_steps:
            break
        if steps_this_epoch == 0 and not consumed:
            break  # an empty split everywhere: more epochs would not train either (train() reports it)
        epoch += 1
        consumed, mine = set(), set()
    if step != last_saved:
        # the final checkpoint (the last step did not fall on checkpoint_every)
        _report(rank, config, model, tokenizer, optimizer, step, epoch, mine, history,
                history[-1] if history else {"step": 0})


def _report(rank, config, model, tokenizer, optimizer, step, epoch, mine, history, metrics) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="inpars-ckpt-") as tmp:
        _save_checkpoint(rank, config, model, tokenizer, optimizer, {"step": step, "epoch": epoch}, mine, history,
                         Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class _DevSet:
    """A small reranking dev set: rank 0 scores it with the model being trained and computes nDCG@10."""

    def __init__(self, dev: dict[str, str], config: TrainConfig) -> None:
        import pyarrow.parquet as pq

        self.pairs = pq.read_table(dev["pairs"])
        self.qrels = pq.read_table(dev["qrels"])
        S.require_columns(self.pairs.column_names, [S.QUERY_ID, S.QUERY, S.DOC_ID, S.TEXT], "train dev pairs")
        S.require_columns(self.qrels.column_names, S.QRELS.names, "train dev qrels")
        self.config = config

    def ndcg10(self, model, tokenizer) -> float:
        from inpars_ray.rankers import Ranker

        model.eval()
        ranker = Ranker.from_model(model, tokenizer, self.config.family, self.config.max_length, 32,
                                   self.config.pooling)
        scores = ranker.score(self.pairs[S.QUERY], self.pairs[S.TEXT])
        return ndcg_at_10(self.pairs.append_column(S.SCORE, pa.array(scores, pa.float64())), self.qrels)


def ndcg_at_10(scored: pa.Table, qrels: pa.Table) -> float:
    """nDCG@10 (ir_measures) of a table with query_id, doc_id, score against QRELS."""
    ir_measures = require("ir_measures", "validation nDCG@10")
    run = [ir_measures.ScoredDoc(q, d, float(s)) for q, d, s in zip(
        scored[S.QUERY_ID].to_pylist(), scored[S.DOC_ID].to_pylist(), scored[S.SCORE].to_pylist())]
    rels = [ir_measures.Qrel(q, d, int(r)) for q, d, r in zip(
        qrels[S.QUERY_ID].to_pylist(), qrels[S.DOC_ID].to_pylist(), qrels[S.RELEVANCE].to_pylist())]
    return float(ir_measures.calc_aggregate([ir_measures.nDCG @ 10], rels, run)[ir_measures.nDCG @ 10])


def _hash_payload(triples_key: str, config: TrainConfig) -> dict[str, Any]:
    # the triples by content (their manifest's hash), the base model by content when it is a run artifact;
    # where checkpoints go and what is recorded does not change the model trained
    from inpars_ray.manifest import artifact_key

    return {"triples": triples_key, "base_model": artifact_key(config.base_model), "config": dataclasses.replace(
        config, storage_path=None, record_dir=None, max_failures=0, rows_per_block=1, cpus_per_worker=None)}


def copy_model(checkpoint, dest: storage.PathLike, family: str | None = None,
               trained_from: str | None = None) -> dict[str, Any]:
    """Publish the model files of a Ray checkpoint (local or gs://) at ``dest`` (local or gs://), trainer
    state left out: the files, then a manifest listing them, so readers (rerank and filter actors on any
    node, :func:`inpars_ray.storage.materialize`) take exactly those and key them by content.

    ``trained_from`` (the training stage's key) goes into the manifest: a model retrained on other triples
    has files of the very same names and sizes, and without it downstream stages keyed on this manifest
    would take the new model for the old one."""
    pafs = require("pyarrow.fs", "copying the trained model")
    with tempfile.TemporaryDirectory(prefix="inpars-model-") as tmp:
        local = Path(tmp) / "model"
        pafs.copy_files(checkpoint.path, str(local), source_filesystem=checkpoint.filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        (local / TRAINER_STATE).unlink(missing_ok=True)
        shutil.rmtree(local / DATA_STATE, ignore_errors=True)
        (local / "history.json").unlink(missing_ok=True)
        return storage.publish_dir(local, dest, {"stage": "model", "status": "complete", "family": family,
                                                 "trained_from": trained_from})


def train(triples_dir: str | Path, out: str | Path, config: TrainConfig, dev: dict[str, str] | None = None,
          ray_address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Train a ranker on the triples Parquet under ``triples_dir``; the model lands in ``<out>/model``.

    ``dev`` (optional) names Parquet files for validation: ``{"pairs": ..., "qrels": ...}`` where pairs
    has query_id, query, doc_id, text (a small first-stage run with texts) and qrels the QRELS schema.
    Returns the manifest. A rerun with the same triples and config returns the existing manifest.
    """
    ray = require("ray", "training on Ray")
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from inpars_ray.raykit import ensure_ray

    from inpars_ray.manifest import published

    out = storage.location(out)
    if out.is_local:
        out = storage.location(str(Path(out.path).resolve()))
    storage.check_reachable(out, triples_dir)
    config = config.resolved()
    files, triples_key = published(triples_dir, "mine", "triples")
    payload = _hash_payload(triples_key, config)
    if is_complete(out, STAGE, payload):
        logger.info("[train] %s already holds a model trained with this config; nothing to do", out)
        return read_manifest(out)
    if config.validate_every is not None and not dev:
        raise ConfigError("validate_every is set but no dev pairs/qrels were given")
    if not files:
        raise ConfigError(f"train: no triples (Parquet files) in {storage.location(triples_dir)}")
    out.join(MANIFEST_NAME).delete()  # a half-finished earlier attempt must not look complete
    record = StageRecord(STAGE, payload)
    ensure_ray(ray_address, num_cpus)

    config = dataclasses.replace(config, cpus_per_worker=_cpus_per_worker(config, ray.cluster_resources()))
    ds = ray.data.read_parquet([f.path for f in files], filesystem=files[0].fs)
    S.require_columns(ds.schema().names, S.TRIPLES.names[:6], f"train ({triples_dir})")
    with record.timed("prepare"):
        if config.grouped:
            # a query's triples become one list (a shuffle). Few partitions: Ray Data's default (200 hash
            # partitions, one aggregator each) took many minutes for a few hundred triples on 2 CPUs.
            parts = max(1, -(-ds.count() // GROUP_ROWS_PER_PARTITION))
            ds = ds.groupby([S.QUERY_ID, S.POS_DOC_ID], num_partitions=parts).map_groups(
                group_triples, batch_format="pyarrow")
        # Small blocks so every worker gets some. Materialised (in the object store, not in this process)
        # before the workers start: a streaming input needs CPUs for its read tasks while the workers hold
        # theirs, and with every CPU held the splits waited forever on a read that never ran (issue 9.8).
        ds = _in_content_order(ds, config.seed, config.grouped)
        ctx = ray.data.DataContext.get_current()
        kept, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
        try:
            ds = ds.map_batches(_identity, batch_size=config.rows_per_block, batch_format="pyarrow").materialize()
        finally:
            ctx.execution_options.preserve_order = kept
    record.counts["rows" if not config.grouped else "lists"] = ds.count()
    # under the run root (local or gs://). The filesystem goes with it: given a bare "gs://" string, Ray
    # builds its own default GCS client, which ignores the emulator/credentials this run was given and, on
    # a node without them, retried for 15 minutes before failing (seen on the two-node harness)
    checkpoints = storage.location(config.storage_path) if config.storage_path else out.join("ray")
    use_gpu = config.accelerator == "gpu"
    torch_config = None
    if config.accelerator == "tpu":
        from inpars_ray.tpu import XlaTorchConfig

        torch_config = XlaTorchConfig()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "dev": dev},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=_worker_resources(config)),
        run_config=RunConfig(
            storage_path=checkpoints.path,
            storage_filesystem=checkpoints.fs,
            name=f"{config.family}-{config_hash(payload)}",  # same config -> same run folder -> resumes its checkpoints
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
        datasets={"train": ds},
        dataset_config=_every_row_data_config(),
        torch_config=torch_config,
    )
    with record.timed("fit"):
        result = trainer.fit()
    if result.checkpoint is None:
        raise ConfigError(f"training produced no checkpoint: are there triples under {triples_dir}?")
    with record.timed("copy_model"):
        copy_model(result.checkpoint, out.join("model"), config.family, config_hash(payload))
    history = _read_history(result.checkpoint)
    record.counts.update(steps=history[-1]["step"] if history else 0,
                         examples=sum(h["examples"] for h in history), workers=config.num_workers)
    record.extra.update(model=out.join("model").uri, family=config.family, loss=config.loss,
                        checkpoint=result.checkpoint.path, history=history,
                        first_loss=history[0]["loss"] if history else None,
                        final_loss=history[-1]["loss"] if history else None)
    return record.write(out)


def _identity(batch: pa.Table) -> pa.Table:
    return batch


ORDER_KEY = "_order"
#: training rows per partition of the ordering exchange (a count from the data, never from its layout)
ORDER_ROWS_PER_PARTITION = 100_000


def order_keys(batch: pa.Table, seed: int, grouped: bool) -> pa.Table:
    """``batch`` with a column of seeded content hashes of its training units (a triple, or a list).

    Sorting by it gives the same order whichever files, blocks or nodes the rows came from: a run on one
    node and on a cluster train on the same sequence (with one worker), and the seed reorders it.
    """
    import hashlib

    ids = [unit_id(r, grouped) for r in batch.select([S.QUERY_ID, S.POS_DOC_ID] + ([] if grouped else [
        S.NEG_DOC_ID])).to_pylist()]
    salt = str(seed).encode()
    keys = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8, key=salt).digest(), "big") for i in ids]
    return batch.append_column(ORDER_KEY, pa.array(keys, pa.uint64()))


def _sorted_part(table: pa.Table) -> pa.Table:
    return table.sort_by([(ORDER_KEY, "ascending")]).drop_columns([ORDER_KEY])


def _in_content_order(ds, seed: int, grouped: bool):
    """The rows of ``ds`` in a seeded order fixed by their content (:func:`order_keys`): hash-partitioned on
    Ray tasks, each partition sorted, partitions in turn (no process holds more than one partition)."""
    from inpars_ray.exchange import hash_exchange

    parts = max(1, -(-ds.count() // ORDER_ROWS_PER_PARTITION))
    keyed = ds.map_batches(order_keys, fn_kwargs={"seed": seed, "grouped": grouped}, batch_format="pyarrow")
    return hash_exchange([keyed], [ORDER_KEY], parts, _sorted_part)


def _cpus_per_worker(config: TrainConfig, cluster: dict[str, float]) -> float:
    """CPUs per worker: 1, or an equal share of a smaller cluster; refuses workers the cluster cannot hold.

    Ray Train would otherwise wait for a placement group that never fits, and the run would not end.
    """
    cpus = float(cluster.get("CPU", 0))
    per = config.cpus_per_worker if config.cpus_per_worker is not None else min(1.0, cpus / config.num_workers)
    if per <= 0 or per * config.num_workers > cpus:
        raise ConfigError(f"{config.num_workers} training workers x {per:g} CPUs do not fit in the cluster's "
                          f"{cpus:g} CPUs; lower num_workers or cpus_per_worker")
    return per


def _worker_resources(config: TrainConfig) -> dict[str, float]:
    res: dict[str, float] = {"CPU": config.cpus_per_worker}
    if config.accelerator == "gpu":
        res["GPU"] = 1
    if config.accelerator == "tpu" and config.tpu_chips_per_worker:
        res["TPU"] = config.tpu_chips_per_worker
    return res


def _read_history(checkpoint) -> list[dict[str, Any]]:
    with checkpoint.as_directory() as d:
        path = Path(d) / "history.json"
        return json.loads(path.read_text()) if path.exists() else []


def _every_row_data_config():
    """A DataConfig whose splits drop no rows (Ray's default ``equal=True`` split may drop a few)."""
    from ray.train import DataConfig

    class EveryRowDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = DataConfig.default_ingest_options()
                hints = worker_node_ids if self._enable_shard_locality else None
                for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                    out[i][name] = split
            return out

    return EveryRowDataConfig()
