"""The Ray Train worker of the train stage: steps, collectives, checkpoints and the dev set.

Every worker takes the same stop/next-epoch decision from the same all-reduced counts, so all splits
begin each epoch together, as a streaming split requires. Gradients are summed across workers by hand
rather than by DDP: a step's loss is the sum of per-example losses divided by the *global* example count,
so uneven splits (and a worker that has run dry) still give the exact mean gradient and every example is
used once per epoch. A checkpoint (every ``checkpoint_every`` steps, Hugging Face format) holds the
model, the optimizer, the step and the ids of the triples consumed so far; a replaced worker group
restores all of it and skips consumed triples, so a killed worker costs at most the steps since the
last checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.models.distill import NEG_SCORES, POS_SCORE
from inpars_ray.models.families import BI_ENCODER, CROSS_ENCODER
from inpars_ray.models.losses import (
    NEG_DOC_IDS,
    NEG_TEXTS,
    contrastive_from_embeddings,
    contrastive_loss_sum,
    encode_examples,
    expand_triples,
    list_doc_keys,
    list_embeddings,
    listwise_loss_sum,
    loss_sum,
    pointwise_loss_sum,
    unit_id,
)
from inpars_ray.runtime.collectives import Collectives
from inpars_ray.runtime.deps import require
from inpars_ray.stages.train_config import DATA_STATE, DEFAULT_LR, TRAINER_STATE, TrainConfig, plan_steps
from inpars_ray.stages.train_tracking import MlflowLog

logger = logging.getLogger(__name__)


def micro_loss(config: TrainConfig, model, tokenizer, rows: list[dict[str, Any]], device, autocast: bool,
               document_encoder=None, doc_cache: dict | None = None):
    """(summed loss, units it covers, ids of the examples) of one micro-batch for ``config.loss``.

    ``document_encoder`` (query-tower-only bi-encoder training) embeds the documents, frozen; ``doc_cache``
    keeps its embeddings by text for the whole run."""
    import torch

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        if config.distills:
            from inpars_ray.models import distill

            ids = [unit_id(r, True) for r in rows]
            common: dict[str, Any] = dict(loss=config.loss, temperature=config.temperature,
                          teacher_temperature=config.teacher_temperature or config.temperature,
                          max_negatives=config.max_negatives)
            if config.family == BI_ENCODER and config.contrastive_weight:  # hard labels beside the teacher's
                q, d, pos_at = list_embeddings(model, tokenizer, rows, config.max_length, device,
                                               config.max_negatives, config.pooling, document_encoder, doc_cache)
                keys = list_doc_keys(rows, config.max_negatives, d.device)
                loss = (_distill_on_embeddings(config, model, rows, q, d, pos_at) + config.contrastive_weight
                        * contrastive_from_embeddings(q, d, pos_at, config.temperature, keys))
            elif config.family == BI_ENCODER:
                loss = distill.bi_encoder_distill_sum(model, tokenizer, rows, config.max_length, device,
                                                      pooling=config.pooling, document_encoder=document_encoder,
                                                      doc_cache=doc_cache, **common)
            elif config.family == CROSS_ENCODER:
                loss = distill.cross_encoder_distill_sum(model, tokenizer, rows, config.max_length, device, **common)
            else:
                loss = distill.monot5_distill_sum(model, tokenizer, rows, config.max_length, device, **common)
            return loss, len(ids), ids
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
                                        config.temperature, config.pooling, document_encoder, doc_cache)
        return loss, len(ids), ids


def _cached_contrastive(config: TrainConfig, model, tokenizer, rows: list[dict[str, Any]], micro: int, device,
                        autocast: bool, document_encoder, doc_cache: dict, coll: Collectives, n_global: int):
    """One step's contrastive loss against every document of the global batch (gradient caching), with a
    distillation loss beside it (``contrastive_weight``) when the loss is one."""
    import functools

    import torch

    from inpars_ray.models.losses import cached_contrastive_backward

    extra, weight = None, 1.0
    if config.distills:
        weight = config.contrastive_weight
        extra = functools.partial(_distill_on_embeddings, config, model)
    return cached_contrastive_backward(
        model, tokenizer, rows, micro, config.max_length, device, 1.0 / n_global,
        max_negatives=config.max_negatives, temperature=config.temperature, pooling=config.pooling,
        document_encoder=document_encoder, doc_cache=doc_cache, gather_rows=coll.gather_rows, sum_=coll.sum_,
        autocast=functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16, enabled=autocast),
        weight=weight, extra=extra)


def _distill_on_embeddings(config: TrainConfig, model, rows: list[dict[str, Any]], q, d, pos_at):
    """The distillation loss of ``rows`` (summed) on their embeddings, in list order."""
    from inpars_ray.models.distill import distill_from_embeddings

    return distill_from_embeddings(rows, q, d, pos_at, str(config.loss), config.temperature,
                                   config.teacher_temperature or config.temperature, config.max_negatives, model)


def _fresh_triples(shard, consumed: set[str], rows_per_batch: int, grouped: bool = False) -> Iterator[dict[str, Any]]:
    """Rows of this worker's split, skipping rows a restored checkpoint says were already trained on."""
    cols = ([S.QUERY_ID, S.QUERY, S.POS_DOC_ID, S.POS_TEXT, NEG_DOC_IDS, NEG_TEXTS] if grouped else
            [S.QUERY_ID, S.QUERY, S.POS_DOC_ID, S.POS_TEXT, S.NEG_DOC_ID, S.NEG_TEXT])
    for batch in shard.iter_batches(batch_size=rows_per_batch, batch_format="pyarrow"):
        scores = [c for c in (POS_SCORE, NEG_SCORES) if grouped and c in batch.column_names]
        for row in batch.select(cols + scores).to_pylist():
            if unit_id(row, grouped) not in consumed:
                yield row


def _fill_step(rows: Iterator[dict[str, Any]], per_worker: int, coll: Collectives, rank: int, world: int,
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

    from inpars_ray.models.families import save_ranker

    if ctx_rank == 0:
        # safetensors reads host memory: XLA (and CUDA) tensors are copied to the CPU first
        cpu_state = None if next(model.parameters()).device.type == "cpu" else _to_cpu(model.state_dict())
        save_ranker(_family(config), model, tokenizer, directory, config.pooling, config.max_length, cpu_state)
        torch.save({"optimizer": _to_cpu(optimizer.state_dict()), **state}, directory / TRAINER_STATE)
        (directory / "history.json").write_text(json.dumps(history))
    (directory / DATA_STATE).mkdir(parents=True, exist_ok=True)
    (directory / DATA_STATE / f"rank{ctx_rank}.json").write_text(json.dumps(sorted(consumed)))


def _family(config: TrainConfig) -> str:
    """The family of a resolved config (train() resolves it before the workers start)."""
    if config.family is None:
        raise ConfigError("the training config reached the workers unresolved (no family)")
    return config.family


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

    from inpars_ray.models.families import load_model

    config: TrainConfig = loop_config["config"]  # already resolved: family and loss are set
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    plan = plan_steps(config.batch_size, config.micro_batch_size, world, config.grouped)
    torch.manual_seed(config.seed + rank)
    record_dir = loop_config.get("record_dir")  # train()'s audit trail: pids, starts, examples seen
    _record(record_dir, f"rank{rank}.pid", str(os.getpid()), mode="w")

    if config.accelerator == "tpu":
        from inpars_ray.runtime.tpu import xla_device, xla_sync

        device, sync, coll = xla_device(), xla_sync, Collectives(world, via_cpu=True)
    else:
        device = ray.train.torch.get_device() if config.accelerator == "gpu" else torch.device("cpu")
        sync, coll = (lambda: None), Collectives(world, via_cpu=False)
    autocast = (config.accelerator == "gpu" and config.mixed_precision and torch.cuda.is_bf16_supported())

    checkpoint = ray.train.get_checkpoint()
    step, epoch, consumed, history, opt_state = 0, 0, set(), [], None
    document_encoder = None
    doc_cache: dict[str, Any] = {}
    family = _family(config)
    if config.query_only:  # the start model, frozen, embeds the documents (each distinct text once)
        document_encoder, _ = load_model(family, config.base_model)
        document_encoder.to(device).requires_grad_(False)
    if checkpoint is None:
        model, tokenizer = load_model(family, config.base_model, training=True)
    else:
        with checkpoint.as_directory() as d:
            d = Path(d)
            model, tokenizer = load_model(family, d, training=True)
            saved = torch.load(d / TRAINER_STATE, map_location="cpu", weights_only=False)
            step, epoch, history, opt_state = saved["step"], saved["epoch"], json.loads(
                (d / "history.json").read_text()), saved["optimizer"]
            for part in sorted((d / DATA_STATE).glob("rank*.json")):
                consumed.update(json.loads(part.read_text()))
        logger.info("rank %d restored step %d (epoch %d, %d rows consumed)", rank, step, epoch, len(consumed))
    _record(record_dir, "events.log", f"start rank={rank} pid={os.getpid()} step={step}\n")
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    lr = config.lr or DEFAULT_LR[family]  # resolved() sets it; the default of the family otherwise
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
    mine = set(consumed) if rank == 0 else set()  # rank 0 carries the restored ids into the next checkpoint

    shard = ray.train.get_dataset_shard("train")
    last_saved = step
    dev = _DevSet(loop_config["dev"], config, document_encoder) if rank == 0 and config.validate_every else None
    tracking = MlflowLog(loop_config.get("mlflow"), config)  # Ray's setup_mlflow: rank 0 logs, the others no-op
    stop_file = loop_config.get("stop_file")  # a tune sweep's early stop (stages/tune.py): end the run here
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
            for group in optimizer.param_groups:  # linear warm-up (train() turns a ratio into steps), then constant
                warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
                group["lr"] = lr * warm
            optimizer.zero_grad(set_to_none=True)
            local_loss = torch.zeros((), dtype=torch.float64, device=device)
            seen: list[str] = []
            # one worker whose step is one micro-batch already scores every query against the whole batch:
            # one pass gives the cached loss and gradients (the same dropout draws), without its extra pass
            # (not under autocast: the cached loss is taken in float32 outside it)
            cached = config.in_batch_negatives and config.in_batch == "batch" and (
                world > 1 or plan.accum_steps > 1 or autocast)
            if cached:  # every worker joins, rows or not
                local_loss += _cached_contrastive(config, model, tokenizer, take, plan.micro_triples, device,
                                                  autocast, document_encoder, doc_cache, coll, n_global).double()
                seen += [unit_id(r, True) for r in take]
            else:
                for i in range(0, len(take), plan.micro_triples):
                    loss, _, ids = micro_loss(config, model, tokenizer, take[i:i + plan.micro_triples], device,
                                              autocast, document_encoder, doc_cache)
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
            _record(record_dir, f"seen_rank{rank}.txt", "".join(f"{epoch}\t{x}\n" for x in seen))
            seconds = time.perf_counter() - t0
            metrics = {"step": step, "epoch": epoch, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                       "examples": n_global, "examples_per_s": n_global / seconds}
            if dev is not None and config.validate_every and (step % config.validate_every == 0
                                                              or step == config.max_steps):
                metrics["dev_ndcg@10"] = dev.ndcg10(model, tokenizer)
                model.train()
            history.append(metrics)
            tracking.log(metrics, step)
            if step % config.checkpoint_every == 0:
                _report(rank, config, model, tokenizer, optimizer, step, epoch, mine, history, metrics)
                last_saved = step
            else:
                ray.train.report(metrics)
            if stop_file is not None:
                if rank == 0 and "dev_ndcg@10" in metrics and step != config.max_steps:
                    _await_decision(stop_file, step)  # the others wait for rank 0 in the all-reduce below
                if _stop_requested(stop_file, rank, coll, device):
                    break
        if config.max_steps is not None and step >= config.max_steps:
            break
        if stop_file is not None and _stop_requested(stop_file, rank, coll, device):
            logger.info("rank %d: a stop was requested (%s); training ends at step %d", rank, stop_file, step)
            break
        if steps_this_epoch == 0 and not consumed:
            break  # an empty split everywhere: more epochs would not train either (train() reports it)
        epoch += 1
        consumed, mine = set(), set()
    if step != last_saved:
        # the final checkpoint (the last step did not fall on checkpoint_every)
        _report(rank, config, model, tokenizer, optimizer, step, epoch, mine, history,
                history[-1] if history else {"step": 0})
    tracking.close()


#: how long rank 0 waits for a tune sweep's verdict on an evaluation before it trains on regardless
DECISION_WAIT_S = 120.0


def decision_file(stop_file: str, step: int):
    """Where a tune sweep's scheduler records that it has judged the evaluation at ``step`` (beside the
    stop file; stages/tune.py writes it): the loop waits for it, so a trial stops right after the
    evaluation that stopped it, whatever the timing."""
    from inpars_ray.io import storage

    return storage.location(stop_file).parent.join(f"decided-{step}")


def _await_decision(stop_file: str, step: int) -> None:
    deadline = time.monotonic() + DECISION_WAIT_S
    marker = decision_file(stop_file, step)
    while not marker.is_file():
        if time.monotonic() > deadline:
            logger.warning("no verdict on the evaluation at step %d within %.0f s; training goes on", step,
                           DECISION_WAIT_S)
            return
        time.sleep(0.05)


def _stop_requested(stop_file: str, rank: int, coll: Collectives, device) -> bool:
    """Whether ``stop_file`` exists, as rank 0 sees it; every worker gets the same answer."""
    import torch

    from inpars_ray.io import storage

    seen = rank == 0 and storage.location(stop_file).is_file()
    return bool(coll.sum_(torch.tensor([float(seen)], dtype=torch.float64, device=device)).item())


def _report(rank, config, model, tokenizer, optimizer, step, epoch, mine, history, metrics) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="inpars-ckpt-") as tmp:
        _save_checkpoint(rank, config, model, tokenizer, optimizer, {"step": step, "epoch": epoch}, mine, history,
                         Path(tmp))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class _DevSet:
    """A small reranking dev set: rank 0 scores it with the model being trained and computes nDCG@10."""

    def __init__(self, dev: dict[str, str], config: TrainConfig, document_encoder=None) -> None:
        from inpars_ray.io import artifacts, storage

        # through the storage layer (its retries, gs:// settings) with page checksums verified: a damaged
        # file is an ArtifactDamagedError, and the dev set's manifest is marked for redoing
        self.pairs = artifacts.read_parquet(storage.location(dev["pairs"]))
        self.qrels = artifacts.read_parquet(storage.location(dev["qrels"]))
        S.require_columns(self.pairs.column_names, [S.QUERY_ID, S.QUERY, S.DOC_ID, S.TEXT], "train dev pairs")
        S.require_columns(self.qrels.column_names, S.QRELS.names, "train dev qrels")
        self.config, self.document_encoder = config, document_encoder
        # a tune trial scores the dev pairs as rerank would, blended with the first stage's score
        self.first_stage_weight = float(dev.get("first_stage_weight") or 0.0)

    def ndcg10(self, model, tokenizer) -> float:
        from inpars_ray.models.rankers import Ranker

        model.eval()
        ranker = Ranker.from_model(model, tokenizer, _family(self.config), self.config.max_length, 32,
                                   self.config.pooling, document_model=self.document_encoder)
        scores = ranker.score(self.pairs[S.QUERY], self.pairs[S.TEXT])
        scored = self.pairs.append_column(S.SCORE, pa.array(scores, pa.float64()))
        if self.first_stage_weight > 0:
            from inpars_ray.stages.rerank import blend_first_stage

            scored = blend_first_stage(scored, self.first_stage_weight)
        return ndcg_at_10(scored, self.qrels)


def ndcg_at_10(scored: pa.Table, qrels: pa.Table) -> float:
    """nDCG@10 (ir_measures) of a table with query_id, doc_id, score against QRELS."""
    ir_measures = require("ir_measures", "validation nDCG@10")
    run = [ir_measures.ScoredDoc(q, d, float(s)) for q, d, s in zip(
        scored[S.QUERY_ID].to_pylist(), scored[S.DOC_ID].to_pylist(), scored[S.SCORE].to_pylist())]
    rels = [ir_measures.Qrel(q, d, int(r)) for q, d, r in zip(
        qrels[S.QUERY_ID].to_pylist(), qrels[S.DOC_ID].to_pylist(), qrels[S.RELEVANCE].to_pylist())]
    return float(ir_measures.calc_aggregate([ir_measures.nDCG @ 10], rels, run)[ir_measures.nDCG @ 10])
