"""Stage 5 — train: fine-tune a ranker on (query, positive, negative) triples with Ray Train.

Every ranker family of :mod:`inpars_ray.models.families` trains here, each with its loss
(:mod:`inpars_ray.models.losses`): monoT5 true/false (InPars-v1), cross-encoder listwise (InPars-light) or
pointwise, bi-encoder contrastive. AdamW, constant LR after an optional linear warm-up.

Listwise and contrastive losses need a query's triples together: the miner writes one row per
(query, positive, negative), so training groups them by (query, positive) first (a Ray Data groupby,
materialised before the workers start). Their batch sizes count lists (queries); the pairwise losses'
count examples (two per triple).

Layers: settings and batch geometry in :mod:`inpars_ray.stages.train_config`; the losses (pure) in
:mod:`inpars_ray.models.losses`; the Ray Train worker in :mod:`inpars_ray.stages.train_loop` (model loaded
once per worker); here, :func:`train`, which wires triples Parquet -> Ray Data -> ``TorchTrainer`` and
writes the manifest.

Data. The triples are read (and grouped) into small blocks in Ray's object store before the workers
start, in an order fixed by their content (:func:`order_keys`), and each worker streams its own split of
those blocks (``streaming_split`` without dropping rows), so no process holds the whole file. Reading them
while the workers hold their CPUs could starve the read tasks of a CPU and leave every worker waiting on
its split forever.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.manifest import StageRecord, config_hash
from inpars_ray.io.stage import StageResult, StageSpec, run_once
from inpars_ray.models.distill import POS_SCORE
from inpars_ray.models.losses import group_triples, unit_id
from inpars_ray.runtime.deps import require
from inpars_ray.stages.train_config import (
    DATA_STATE,
    GROUP_ROWS_PER_PARTITION,
    STAGE,
    TRAINER_STATE,
    TrainConfig,
    model_location,
)
from inpars_ray.stages.train_loop import train_loop_per_worker
from inpars_ray.stages.train_tracking import mlflow_settings, write_history

logger = logging.getLogger(__name__)


def _hash_payload(triples_key: str, config: TrainConfig) -> dict[str, Any]:
    # the triples by content (their manifest's hash), the base model by content when it is a run artifact;
    # where checkpoints go and what is recorded does not change the model trained
    from inpars_ray.io.manifest import artifact_key, to_jsonable

    keyed = to_jsonable(dataclasses.replace(
        config, storage_path=None, max_failures=0, rows_per_block=1, cpus_per_worker=None,
        mlflow=False, mlflow_tracking_uri=None, mlflow_experiment=None))
    if not config.in_batch_negatives:
        keyed.pop("in_batch")  # only a contrastive loss reads it: the other losses' runs keep their keys
    if not config.contrastive_weight:
        keyed.pop("contrastive_weight")  # added later: runs without it keep their keys
    return {"triples": triples_key, "base_model": artifact_key(config.base_model), "config": keyed}


def copy_model(checkpoint, dest: storage.PathLike, family: str | None = None,
               trained_from: str | None = None, config: TrainConfig | None = None) -> dict[str, Any]:
    """Publish the model files of a Ray checkpoint (local or gs://) at ``dest`` (local or gs://), trainer
    state left out: the files, then a manifest listing them, so readers (rerank and filter actors on any
    node, :func:`inpars_ray.io.artifacts.materialize`) take exactly those and key them by content.

    ``trained_from`` (the training stage's key) goes into the manifest: a model retrained on other triples
    has files of the very same names and sizes, and without it downstream stages keyed on this manifest
    would take the new model for the old one.

    With ``config``: its ``interpolate`` (WiSE-FT) mixes the start weights back in, and a query-tower-only
    bi-encoder gets its document tower (the start model) as ``document_encoder/``, so the folder loads as
    one ranker (:class:`inpars_ray.models.rankers.Ranker`)."""
    from inpars_ray.models.families import interpolate_weights, save_document_encoder

    pafs = require("pyarrow.fs", "copying the trained model")
    with tempfile.TemporaryDirectory(prefix="inpars-model-") as tmp:
        local = Path(tmp) / "model"
        pafs.copy_files(checkpoint.path, str(local), source_filesystem=checkpoint.filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        (local / TRAINER_STATE).unlink(missing_ok=True)
        shutil.rmtree(local / DATA_STATE, ignore_errors=True)
        (local / "history.json").unlink(missing_ok=True)
        extra: dict[str, Any] = {}
        if config is not None and config.interpolate < 1.0:
            fam = family or config.family
            if fam is None:
                raise ConfigError("interpolating the weights needs the model's family")
            extra["interpolation"] = {"alpha": config.interpolate, **interpolate_weights(
                fam, local, config.base_model, config.interpolate, config.pooling, config.max_length)}
        if config is not None and config.query_only:
            save_document_encoder(config.base_model, local, config.pooling, config.max_length)
            extra["towers"] = {"query": "trained", "document": "start model (frozen)"}
        return artifacts.publish_dir(local, dest, {"stage": "model", "status": "complete", "family": family,
                                                 "trained_from": trained_from, **extra})


def train(triples_dir: str | Path, out: storage.PathLike, config: TrainConfig, dev: dict[str, str] | None = None,
          ray_address: str | None = None, num_cpus: int | None = None, callbacks: list | None = None,
          stop_file: str | None = None, mlflow: dict[str, Any] | None = None,
          record_dir: str | None = None) -> StageResult:
    """Train a ranker on the triples Parquet under ``triples_dir``; the model lands in ``<out>/model``.

    ``dev`` (optional) names Parquet files for validation: ``{"pairs": ..., "qrels": ...}`` where pairs
    has query_id, query, doc_id, text (a small first-stage run with texts) and qrels the QRELS schema
    (``first_stage_weight``, optional: blend with the pairs' ``first_stage_score`` as rerank does).
    ``callbacks`` (Ray Train ``UserCallback``s) go to the run; a tune trial forwards its dev evaluations
    to Tune with one. Training ends early, at the next step, once the file ``stop_file`` exists (a tune
    sweep's early stop: stages/tune.py). With ``config.mlflow`` the worker logs every step to MLflow
    (:mod:`inpars_ray.stages.train_tracking`; ``mlflow``: a tune trial's experiment, run name or store).
    The per-step history is written beside the model as ``<out>/history.json``. Returns the manifest. A
    rerun with the same triples and config returns the existing manifest.

    ``record_dir`` (a local folder every worker reaches; audits and the fault tests) gets each worker's pid
    (``rank<N>.pid``), a line per worker start with the step it resumed from (``events.log``) and the ids of
    the examples each rank trained on, repeats included (``seen_rank<N>.txt``): Ray Train reports none of
    these, and a checkpoint keeps the consumed ids only as a set. Not a setting: it changes no model.
    """
    from inpars_ray.io.manifest import published

    out = storage.location(out)
    if out.is_local:
        out = storage.location(str(Path(out.path).resolve()))
    storage.check_reachable(out, triples_dir)
    config = config.resolved()
    files, triples_key = published(triples_dir, ("mine", "teacher"), "triples")
    payload = _hash_payload(triples_key, config)
    # no file list: the model folder has its own manifest, and the checkpoints under out/ray stay across
    # attempts so that a killed run resumes from them
    return run_once(StageSpec(STAGE, out, payload), lambda record: _fit(
        record, out, files, payload, config, triples_dir, dev, ray_address, num_cpus, callbacks, stop_file, mlflow,
        record_dir))


def _fit(record: StageRecord, out: storage.Location, files: list[storage.Location], payload: dict[str, Any],
         config: TrainConfig, triples_dir: str | Path, dev: dict[str, str] | None, ray_address: str | None,
         num_cpus: int | None, callbacks: list | None, stop_file: str | None, mlflow: dict[str, Any] | None,
         record_dir: str | None) -> None:
    """train()'s work once its output is known to be missing or stale."""
    ray = require("ray", "training on Ray")
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from inpars_ray.runtime.raykit import ensure_ray

    if config.validate_every is not None and not dev:
        raise ConfigError("validate_every is set but no dev pairs/qrels were given")
    tracking = mlflow_settings(config, out, **(mlflow or {}))  # a bad store fails here, before Ray starts
    if not files:
        raise ConfigError(f"train: no triples (Parquet files) in {storage.location(triples_dir)}")
    ensure_ray(ray_address, num_cpus)

    config = dataclasses.replace(config, cpus_per_worker=_cpus_per_worker(config, ray.cluster_resources()))
    ds = artifacts.read_parquet_dataset(files)  # page checksums verified; the rows are put in content order below
    S.require_columns(ds.schema().names, S.TRIPLES.names[:6], f"train ({triples_dir})")
    if config.distills and POS_SCORE not in ds.schema().names:
        raise ConfigError(f"train: loss {config.loss} distils a teacher's scores, but the triples in {triples_dir} "
                          "carry none: set inpars.teacher (the teacher stage scores them)")
    with record.timed("prepare"):
        if config.grouped:
            # a query's triples become one list (a shuffle). Few partitions: Ray Data's default (200 hash
            # partitions, one aggregator each) took many minutes for a few hundred triples on 2 CPUs.
            parts = max(1, -(-ds.count() // GROUP_ROWS_PER_PARTITION))
            ds = ds.groupby([S.QUERY_ID, S.POS_DOC_ID], num_partitions=parts).map_groups(
                group_triples, batch_format="pyarrow")
        # Blocks small enough that every worker gets several: the workers' splits hand out whole blocks, and
        # 518 lists in one block (under the 1,024 rows of the default) went whole to the first worker, leaving
        # the other to run dry at every step. A map_batches with a small batch_size does not make small blocks
        # (its outputs are coalesced); repartition by rows per block does, in order. Materialised (in the
        # object store, not in this process) before the workers start: a streaming input needs CPUs for its
        # read tasks while the workers hold theirs, and with every CPU held the splits waited forever on a
        # read that never ran.
        ctx = ray.data.DataContext.get_current()
        kept, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
        try:
            ds = _in_content_order(ds, config.seed, config.grouped).materialize()
            units = ds.count()
            per_block = block_rows(units, config.num_workers, config.rows_per_block)
            ds = ds.repartition(target_num_rows_per_block=per_block).materialize()
        finally:
            ctx.execution_options.preserve_order = kept
    record.counts["rows" if not config.grouped else "lists"] = units
    if config.warmup_ratio is not None:  # a fraction of this run's steps, known once the data is counted
        per_epoch = -(-(units * (1 if config.grouped else 2)) // config.batch_size)
        total = config.max_steps or per_epoch * config.epochs
        config = dataclasses.replace(config, warmup_steps=round(config.warmup_ratio * total))
        record.extra["warmup_steps"] = config.warmup_steps
    # under the run root (local or gs://). The filesystem goes with it: given a bare "gs://" string, Ray
    # builds its own default GCS client, which ignores the emulator/credentials this run was given and, on
    # a node without them, retried for 15 minutes before failing (seen on the two-node harness)
    checkpoints = storage.location(config.storage_path) if config.storage_path else out.join("ray")
    use_gpu = config.accelerator == "gpu"
    torch_config = None
    if config.accelerator == "tpu":
        from inpars_ray.runtime.tpu import XlaTorchConfig

        torch_config = XlaTorchConfig()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "dev": dev, "stop_file": stop_file, "mlflow": tracking,
                           "record_dir": record_dir},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=_worker_resources(config)),
        run_config=RunConfig(
            storage_path=checkpoints.path,
            storage_filesystem=checkpoints.fs,
            name=f"{config.family}-{config_hash(payload)}",  # same config -> same run folder -> resumes its checkpoints
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            callbacks=list(callbacks or []),
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
        model_manifest = copy_model(result.checkpoint, model_location(out), config.family, config_hash(payload), config)
    history = _read_history(result.checkpoint)
    history_file = write_history(out, history)  # beside the model, for the report's training curves
    record.counts.update(steps=history[-1]["step"] if history else 0,
                         examples=sum(h["examples"] for h in history), workers=config.num_workers)
    record.extra.update(model=model_location(out).uri, family=config.family, loss=config.loss,
                        checkpoint=result.checkpoint.path, history=history, history_file=history_file,
                        **({"mlflow": {k: tracking[k] for k in ("tracking_uri", "experiment_name", "run_name")}}
                           if tracking else {}),
                        first_loss=history[0]["loss"] if history else None,
                        final_loss=history[-1]["loss"] if history else None,
                        **{k: model_manifest[k] for k in ("interpolation", "towers") if k in model_manifest})


#: blocks each training worker should get at least (of the data's rows, when there are that many)
BLOCKS_PER_WORKER = 8


def block_rows(units: int, num_workers: int, most: int) -> int:
    """Rows per training block: at most ``most``, and few enough that each worker gets
    :data:`BLOCKS_PER_WORKER` blocks (a worker's split is made of whole blocks)."""
    return max(1, min(most, -(-units // (num_workers * BLOCKS_PER_WORKER))))


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
    from inpars_ray.runtime.exchange import hash_exchange

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
    if config.cpus_per_worker is None:  # train() sets it from the cluster before building the trainer
        raise ConfigError("cpus_per_worker is not resolved")
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
                # as DataConfig's default (enable_shard_locality=True, which this class never turns off):
                # each worker's split prefers blocks on its own node
                hints = worker_node_ids
                for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                    out[i][name] = split
            return out

    return EveryRowDataConfig()
