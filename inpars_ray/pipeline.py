"""The whole pipeline on one collection, stage after stage, each resumable through its manifest.

index -> retrieve (BM25 top-k of the test queries) -> evaluate (the BM25 baseline), then, when
``inpars`` is set: generate -> filter -> mine -> train -> rerank the BM25 run -> evaluate, all under
``out_dir`` (one folder per stage). A rerun skips every stage whose manifest matches its config.

The settings are one typed :class:`~inpars_ray.config.PipelineConfig` that nests the stage configs
themselves; :func:`stage_configs` only fills in what the pipeline decides (model folders), so a setting
cannot be forgotten on the way to its stage. Model names go through :func:`resolve_model`, the one
place that turns a name into something a stage can load: ``local:tiny-lm`` and ``local:tiny-monot5``
build tiny random models in ``out_dir/models`` (no download) that show the mechanics offline in minutes;
real runs name Hugging Face ids (InPars-v2, arXiv 2301.01820: EleutherAI/gpt-j-6B, castorini/monot5-3b-msmarco-10k).

The run root is a local folder or an object-store URI (``gs://bucket/prefix``): every artifact goes
through :mod:`inpars_ray.io.storage`, written from whichever node does the work. On a Ray cluster of several
nodes a local run root fails at once (unless declared a shared mount), before any stage runs.

Every evaluated system (BM25, then each reranker) writes ``<folder>/eval.<split>.json`` and per-query
values ``<folder>/eval.<split>.per_query.tsv``, listed under ``systems`` in the run's manifest: the
report (:mod:`inpars_ray.report`) is rebuilt from those files alone.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from inpars_ray.config import START_MODEL, TINY_LM, TINY_MONOT5, TRAINED, InparsConfig, PipelineConfig
from inpars_ray.errors import ArtifactDamagedError, find_typed_error
from inpars_ray.io import artifacts, catalog, storage
from inpars_ray.io.manifest import StageRecord
from inpars_ray.models.rankers import replace_ranker
from inpars_ray.runtime import progress
from inpars_ray.stages import index, retrieve
from inpars_ray.stages.evaluate import evaluate_files
from inpars_ray.stages.train_config import model_location

logger = logging.getLogger(__name__)

__all__ = ["InparsConfig", "PipelineConfig", "resolve_model", "run_pipeline", "run_synthetic", "run_tune", "stage_configs"]

#: manifest key listing the evaluated systems (name, run file, evaluation files), in report order
SYSTEMS = "systems"


def resolve_model(name: str, out: storage.PathLike) -> str:
    """The one place a model name becomes something a stage loads: a Hugging Face id, a folder or a file.

    ``local:tiny-lm`` / ``local:tiny-monot5`` build tiny random models (once) under ``out/models``; under an
    object-store run root they are built here and published there (files, then a manifest listing them),
    and the actors that load them copy them to their own node. ``local:smollm2`` / ``local:minilm`` are the
    real small models of the ``models`` extra (:mod:`inpars_ray.models.local_models`). Any other name is returned
    unchanged.
    """
    from inpars_ray.models import local_models

    build: Any  # one of the two builders below: (folder) -> the folder built
    if name == TINY_LM:
        from inpars_ray.testing.tiny_lm import build_tiny_lm as build
        folder = "tiny-lm"
    elif name == TINY_MONOT5:
        from inpars_ray.testing.tiny_t5 import build_tiny_monot5 as build
        folder = "tiny-monot5"
    else:
        # packaged real models (local:smollm2, local:minilm) are installed on every node with the package
        return local_models.resolve_model(name)
    root = storage.location(out)
    if root.is_local:
        path = root.local_path() / "models" / folder
        return str(path if (path / "config.json").exists() else build(path))
    target = root / "models" / folder
    if not (target / "manifest.json").is_file():
        with tempfile.TemporaryDirectory(prefix="inpars-model-") as tmp:
            built = build(Path(tmp) / folder)
            artifacts.publish_dir(built, target, {"stage": "model", "status": "complete", "name": name})
    return target.uri


def stage_configs(config: PipelineConfig, out: storage.PathLike, resolve=resolve_model) -> dict[str, Any]:
    """The config each stage runs with: the nested stage configs, with model names resolved.

    Keys: ``retrieve``, and with ``inpars`` set ``generate``, ``generate_resources``, ``filter``, ``mine``,
    ``train``, ``rerank`` (devices, GPU counts and accelerators pass through untouched).
    """
    stages: dict[str, Any] = {"retrieve": retrieve.RetrieveConfig(split=config.split, k=config.k, bm25=config.bm25)}
    ic = config.inpars
    if ic is None:
        return stages
    filt = ic.filter
    rerank_model = model_location(storage.join(out, "train")).uri if ic.rerank.ranker.model == TRAINED else \
        resolve(ic.rerank.ranker.model, out)
    stages.update(
        generate=dataclasses.replace(ic.generate, model=resolve(ic.generate.model, out)),
        generate_resources=ic.generate_resources,
        filter=replace_ranker(filt, model=resolve(filt.ranker.model, out)) if filt.ranker else filt,
        mine=dataclasses.replace(ic.mine, dense=dataclasses.replace(
            ic.mine.dense, model=resolve(ic.mine.dense.model, out))) if ic.mine.dense else ic.mine,
        train=dataclasses.replace(ic.train, base_model=resolve(ic.train.base_model, out)),
        rerank=replace_ranker(ic.rerank, model=rerank_model),
    )
    if ic.teacher is not None:
        stages["teacher"] = dataclasses.replace(ic.teacher, rankers=tuple(
            dataclasses.replace(r, model=resolve(r.model, out)) for r in ic.teacher.rankers))
    return stages


def _summary(manifest: dict[str, Any] | None, started: float) -> str:
    """A stage's counts in one short phrase, marked when the stage was already complete (resumed)."""
    import time

    manifest = manifest or {}
    counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items() if v or k in ("kept", "triples"))
    finished = manifest.get("finished_at")
    reused = isinstance(finished, str) and finished < time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(started)))
    return f"already complete: {counts}" if reused else counts


class _Stage:
    """A stage's timing in the run's manifest and its line on the terminal, in one ``with``."""

    def __init__(self, record: StageRecord, name: str) -> None:
        self.record, self.name = record, name

    def __enter__(self) -> _Stage:
        import time

        self.started = time.time()
        self._timed = self.record.timed(self.name)
        self._timed.__enter__()
        self._progress = progress.stage(self.name.split("_")[0])
        self.line = self._progress.__enter__()
        return self

    def done(self, manifest: dict[str, Any] | None = None, text: str | None = None) -> None:
        self.line.summary = text if text is not None else _summary(manifest, self.started)

    def __exit__(self, *exc: Any) -> None:
        try:
            self._progress.__exit__(*exc)
        finally:
            self._timed.__exit__(*exc)


def _relative(loc: storage.Location, root: storage.Location) -> str:
    return loc.path[len(root.path.rstrip("/")) + 1:]


def _evaluate(name: str, collection: catalog.Collection, config: PipelineConfig, out: storage.Location,
              run_path: storage.Location, record: StageRecord,
              exclude_file: storage.Location | None = None) -> dict[str, float]:
    """Evaluate one system's run, write its summary and per-query values, and list it in the manifest."""
    folder = run_path.parent
    summary_path = folder / f"eval.{config.split}.json"
    per_query_path = folder / f"eval.{config.split}.per_query.tsv"
    with _Stage(record, f"evaluate_{folder.name}") as stage:
        result, _ = evaluate_files(collection, run_path.uri, config.split, list(config.measures),
                                   exclude_file=exclude_file.uri if exclude_file else None,
                                   per_query_path=per_query_path.uri, summary_path=summary_path.uri,
                                   skip_bad_rows=config.load.skip_bad_rows)
        headline = next(iter(result.aggregate))
        stage.done(text=f"{name}: {headline} {result.aggregate[headline]:.4f} over {result.num_queries} queries")
    record.extra.setdefault(SYSTEMS, []).append({
        "name": name, "run": _relative(run_path, out), "summary": _relative(summary_path, out),
        "per_query": _relative(per_query_path, out), "queries": result.num_queries,
        "measures": result.aggregate})
    return result.aggregate


def run_pipeline(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run every stage on ``config.dataset``; returns the summary also written to ``out_dir/manifest.json``.

    A stage that finds an upstream artifact damaged (a listed file missing, or failing its checksums) has
    marked it so (:func:`inpars_ray.io.artifacts.damaged`); the run then goes once more from the top, which
    redoes the damaged stage and the stages after it, and keeps every other stage's output.
    """
    try:
        return _run_pipeline(config, cache_dir)
    except Exception as exc:
        if not isinstance(find_typed_error(exc), ArtifactDamagedError):
            raise
        logger.warning("%s; running again: the damaged stage is redone", find_typed_error(exc))
        return _run_pipeline(config, cache_dir)


def _begin(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None, name: str) -> tuple:
    """How every entry point begins (a local run root on many nodes fails here, before any work). Returns
    (run root, its record ``name``, collection, stage configs, index manifest), the index built or resumed."""
    out = storage.location(config.out_dir)  # absolute: Ray workers run in other folders
    storage.check_reachable(out)
    out.mkdir()
    record = StageRecord(name, config)
    collection = catalog.resolve(config.dataset, cache_dir)
    if collection.source:  # a built collection (irds:): the resolved ids and versions it came from
        record.extra["collection"] = collection.source
    stages = stage_configs(config, out)
    with _Stage(record, "index") as stage:
        index_manifest = index.build_index(collection, (out / "index").uri, config.load, config.index)
        stage.done(index_manifest)
    return out, record, collection, stages, index_manifest


def _run_pipeline(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    out, record, collection, stages, index_manifest = _begin(config, cache_dir, "pipeline")
    run_path = out / "bm25" / f"run.{config.split}.trec"
    with _Stage(record, "retrieve") as stage:
        retrieve_manifest = retrieve.retrieve_to_file(collection, (out / "index").uri, run_path.uri,
                                                  stages["retrieve"], config.load)
        stage.done(retrieve_manifest)
    bm25_measures = _evaluate("BM25", collection, config, out, run_path, record)
    record.counts.update(documents=index_manifest.get("counts", {}).get("documents", 0),
                         queries=retrieve_manifest.get("counts", {}).get("queries", 0))
    record.extra["bm25"] = bm25_measures
    summary = {"dataset": config.dataset, "bm25": bm25_measures, "out_dir": out.uri}
    if config.inpars is not None:
        summary["inpars"] = _run_inpars(config, stages, collection, out, run_path, record)
    record.write(out)
    return summary


def _run_inpars(config: PipelineConfig, stages: dict[str, Any], collection: catalog.Collection,
                out: storage.Location, bm25_run: storage.Location, record: StageRecord) -> dict[str, Any]:
    """generate -> filter -> mine -> train -> rerank -> evaluate; returns the reranked run's measures."""
    from inpars_ray.stages.generate import fewshot_query_ids
    from inpars_ray.stages.rerank import rerank_run
    from inpars_ray.stages.train import train

    synthetic = _synthetic(config, stages, collection, out, record)
    gen, filt, consistent, mined, labelled = (synthetic[k] for k in ("generate", "filter", "consistency", "mine",
                                                                      "teacher"))
    with _Stage(record, "train") as stage:
        trained = train(synthetic["triples_dir"].uri, (out / "train").uri, stages["train"])
        stage.done(trained)
    rerank_path = out / "rerank" / f"run.{config.split}.trec"
    with _Stage(record, "rerank") as stage:
        stage.done(rerank_run(collection, bm25_run.uri, rerank_path.uri, stages["rerank"], config.load))
    # query ids shown to the generator as few-shot examples (promptagator) are left out of evaluation
    excluded = sorted(set(fewshot_query_ids(synthetic["generated_dir"])))
    exclude_file = out / "rerank" / "excluded_queries.txt"
    exclude_file.write_text("".join(f"{q}\n" for q in excluded))
    if config.inpars is not None and config.inpars.zero_shot:
        _zero_shot(config, stages, collection, out, bm25_run, record, exclude_file)
    if "teacher" in stages and stages["teacher"].rerank_test:
        _teacher_row(config, stages, collection, out, bm25_run, record, exclude_file)
    measures = _evaluate("InPars", collection, config, out, rerank_path, record, exclude_file)
    if config.inpars is not None and config.inpars.tune is not None:
        sweep = _sweep(config, stages, collection, out, record, synthetic)
        record.extra["tuned"] = _tuned(config, stages, collection, out, bm25_run, record, exclude_file, sweep)
    for name, manifest in (("generate", gen), ("filter", filt), ("consistency", consistent), ("mine", mined),
                           ("teacher", labelled), ("train", trained)):
        for key, value in manifest.get("counts", {}).items():
            record.counts[f"{name}_{key}"] = value
    record.extra["rerank"] = measures
    return measures


def _synthetic(config: PipelineConfig, stages: dict[str, Any], collection: catalog.Collection,
               out: storage.Location, record: StageRecord) -> dict[str, Any]:
    """generate -> filter (-> consistency) -> mine (-> teacher): the manifests, the folder of the kept queries
    and the folder of the triples training reads (the teacher's scored ones when there is a teacher)."""
    from inpars_ray.integrations.generated_data import IMPORT_FOLDER, import_generated
    from inpars_ray.stages.filter import run_filter
    from inpars_ray.stages.generate import run_generate
    from inpars_ray.stages.mine import TRIPLES_DIR, run_mine

    gen_dir, published = out / "generate", config.inpars.synthetic_data if config.inpars else None
    with _Stage(record, "generate") as stage:
        if published:  # the InPars team's published queries (or an export's) instead of generating
            gen_dir = out / IMPORT_FOLDER
            gen = import_generated(published, collection, gen_dir.uri, config.load)
            record.extra["synthetic_data"] = {**gen["extra"]["source"], "counts": gen["counts"]}
        else:
            gen = run_generate(collection, gen_dir.uri, stages["generate"], stages["generate_resources"], config.load)
        stage.done(gen)
    with _Stage(record, "filter") as stage:
        filt = run_filter(gen_dir.uri, collection, (out / "filter").uri, stages["filter"], config.load)
        stage.done(filt)
    queries_dir, consistent = out / "filter", dict[str, Any]()
    if stages["filter"].strategy == "consistency":
        queries_dir, consistent = _consistency(config, stages, collection, out, record)
    with _Stage(record, "mine") as stage:
        mined = run_mine(queries_dir.uri, collection, (out / "index").uri, (out / "mine").uri, stages["mine"],
                         config.load)
        stage.done(mined)
    triples_dir, labelled = out / "mine" / TRIPLES_DIR, {}
    if "teacher" in stages:
        from inpars_ray.stages import teacher

        with _Stage(record, "teacher") as stage:
            labelled = teacher.run_teacher(triples_dir.uri, (out / "teacher").uri, stages["teacher"])
            stage.done(labelled)
        triples_dir = out / "teacher" / teacher.TRIPLES_DIR
    return {"generate": gen, "filter": filt, "consistency": consistent, "mine": mined, "teacher": labelled,
            "generated_dir": gen_dir, "queries_dir": queries_dir, "triples_dir": triples_dir}


def run_tune(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``inpars-ray tune``: index -> generate -> filter -> mine (each resumed through its manifest), then the
    sweep of ``inpars.tune`` (its defaults when unset) on the synthetic dev set. The collection's queries and
    qrels are not read by anything after the index. Returns the sweep's manifest."""
    from inpars_ray.stages.tune import SweepConfig

    if config.inpars is None:
        from inpars_ray.errors import ConfigError

        raise ConfigError("tune needs the synthetic-data stages: `inpars` is null in this config")
    if config.inpars.tune is None:
        config = dataclasses.replace(config, inpars=dataclasses.replace(config.inpars, tune=SweepConfig()))
    out, stages, collection, record, synthetic = run_synthetic(config, cache_dir)
    return _sweep(config, stages, collection, out, record, synthetic)


def run_synthetic(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None) -> tuple:
    """index -> generate -> filter (-> consistency) -> mine, each resumed through its manifest (what a tune
    sweep starts from). Returns (run root, stage configs, collection, record, the stages' manifests)."""
    out, record, collection, stages, _ = _begin(config, cache_dir, "tune_run")
    return out, stages, collection, record, _synthetic(config, stages, collection, out, record)


#: header of the best settings file: what it is and how to use it
_BEST_HEADER = """# The best trial of an inpars-ray tune sweep: the run's settings with the tuned values set
# and inpars.tune cleared. `inpars-ray run --config THIS_FILE` trains with this recipe on all triples.
# Chosen on the synthetic dev set only (held-out source documents); the test qrels were never read.
"""


def _sweep(config: PipelineConfig, stages: dict[str, Any], collection: catalog.Collection,
           out: storage.Location, record: StageRecord, synthetic: dict[str, Any]) -> dict[str, Any]:
    """The dev set and the sweep under ``out/tune``; writes ``best.yaml`` there (and in the sweep folder)."""
    from inpars_ray.config import dump_yaml, merge
    from inpars_ray.io.manifest import config_hash
    from inpars_ray.stages.devset import build_dev_set
    from inpars_ray.stages.tune import run_sweep, sweep_payload

    tc = config.inpars.tune if config.inpars else None
    assert tc is not None and config.inpars is not None  # called only when the config has a sweep
    with _Stage(record, "devset") as stage:
        devset = build_dev_set(synthetic["queries_dir"].uri, synthetic["triples_dir"].uri, (out / "index").uri,
                               collection, (out / "tune" / "devset").uri, tc.dev, config.bm25, config.load,
                               teacher=stages.get("teacher"))
        stage.done(devset)
    weight = stages["rerank"].first_stage_weight
    key = config_hash(sweep_payload(tc, tc.resolved_space(), config_hash(devset), config.inpars.train, weight))
    sweep_dir = out / "tune" / f"sweep-{key}"
    with _Stage(record, "tune") as stage:
        manifest = run_sweep(devset, out / "tune" / "devset", sweep_dir, tc, stages["train"], weight,
                             resolve=lambda name: resolve_model(name, out))
        stage.done(manifest, text=f"tune: {manifest['counts']['trials']} trials, "
                   f"{manifest['counts']['stopped_early']} stopped early, best dev nDCG@10 "
                   f"{manifest['extra']['best']['dev_ndcg@10']:.4f}")
    best = merge(config, {"inpars": {**manifest["extra"]["best_settings"], "tune": None}}, "tune best settings")
    text = _BEST_HEADER + dump_yaml(best)
    for where in (sweep_dir / "best.yaml", out / "tune" / "best.yaml"):
        where.write_text(text)
    manifest.setdefault("extra", {})["best_yaml"] = (out / "tune" / "best.yaml").uri
    return manifest


def _tuned(config: PipelineConfig, stages: dict[str, Any], collection: catalog.Collection, out: storage.Location,
           bm25_run: storage.Location, record: StageRecord, exclude_file: storage.Location,
           sweep: dict[str, Any]) -> dict[str, float]:
    """The best trial's model (trained on the training part of the triples) reranking the test run, with
    the best trial's first-stage blend, evaluated beside the untuned InPars."""
    from inpars_ray.stages.rerank import rerank_run

    extra = sweep["extra"]
    weight = extra["best_settings"].get("rerank", {}).get("first_stage_weight", stages["rerank"].first_stage_weight)
    rerank_config = replace_ranker(dataclasses.replace(stages["rerank"], first_stage_weight=weight),
                                   model=extra["best_model"], family=None)
    run_path = out / "tuned" / f"run.{config.split}.trec"
    with _Stage(record, "rerank_tuned") as stage:
        stage.done(rerank_run(collection, bm25_run.uri, run_path.uri, rerank_config, config.load))
    return _evaluate("InPars (tuned)", collection, config, out, run_path, record, exclude_file)


def _consistency(config: PipelineConfig, stages: dict[str, Any], collection: catalog.Collection,
                 out: storage.Location, record: StageRecord) -> tuple[storage.Location, dict[str, Any]]:
    """InPars-light's consistency filter over the filter's candidates: a ranker (``filter.ranker``, or one
    trained here on every candidate, as in the paper) must put a query's source document in the top
    ``consistency_k`` of its BM25 hits. Returns the folder the final mine reads, and the stage's manifest."""
    from inpars_ray.stages.consistency import ConsistencyConfig, run_consistency
    from inpars_ray.stages.mine import TRIPLES_DIR, run_mine
    from inpars_ray.stages.train import train

    filt, rr = stages["filter"], stages["rerank"]
    ranker = filt.ranker
    if ranker is None:
        first = out / "candidates-ranker"
        with _Stage(record, "mine_candidates") as stage:
            stage.done(run_mine((out / "filter").uri, collection, (out / "index").uri, (first / "mine").uri,
                                stages["mine"], config.load))
        with _Stage(record, "train_candidates") as stage:
            stage.done(train((first / "mine" / TRIPLES_DIR).uri, (first / "train").uri, stages["train"]))
        ranker = dataclasses.replace(rr.ranker, model=model_location(first / "train").uri, family=None)
    check = ConsistencyConfig(ranker=ranker, k=filt.consistency_k, depth=filt.consistency_depth,
                              num_actors=rr.num_actors, num_gpus_per_actor=rr.num_gpus_per_actor,
                              rows_per_call=rr.rows_per_call, partitions=rr.partitions)
    with _Stage(record, "consistency") as stage:
        manifest = run_consistency((out / "filter").uri, collection, (out / "index").uri,
                                   (out / "consistency").uri, check, config.load)
        stage.done(manifest)
    return out / "consistency", manifest


def _zero_shot(config: PipelineConfig, stages: dict[str, Any], collection: catalog.Collection,
               out: storage.Location, bm25_run: storage.Location, record: StageRecord,
               exclude_file: storage.Location) -> dict[str, float]:
    """The baseline a user would otherwise reach for: the start model, untrained, reranking the same BM25 hits
    (same depth, length, actors and first-stage blend as the InPars reranker), evaluated on the same queries.

    ``inpars.zero_shot: start`` is ``train.base_model`` with its family (a bare encoder trained as a
    cross-encoder has no relevance head before training, so its start is that encoder as a bi-encoder)."""
    from inpars_ray.models.families import BI_ENCODER, CROSS_ENCODER, detect_family
    from inpars_ray.stages.rerank import rerank_run

    assert config.inpars is not None and config.inpars.zero_shot
    name = config.inpars.zero_shot
    if name == START_MODEL:
        model = stages["train"].base_model
        family = stages["train"].family or detect_family(model)
        if family == CROSS_ENCODER and detect_family(model) != CROSS_ENCODER:
            family = BI_ENCODER
        shown = config.inpars.train.base_model
    else:
        model, family, shown = resolve_model(name, out), None, name
    rerank_config = replace_ranker(stages["rerank"], model=model, family=family)
    record.extra["start_model"] = {"system": "zero-shot", "model": shown,
                                   "family": family or detect_family(model)}
    run_path = out / "zero-shot" / f"run.{config.split}.trec"
    with _Stage(record, "zero-shot") as stage:
        stage.done(rerank_run(collection, bm25_run.uri, run_path.uri, rerank_config, config.load))
    return _evaluate("zero-shot", collection, config, out, run_path, record, exclude_file)


def _teacher_row(config: PipelineConfig, stages: dict[str, Any], collection: catalog.Collection,
                 out: storage.Location, bm25_run: storage.Location, record: StageRecord,
                 exclude_file: storage.Location) -> dict[str, float]:
    """The teacher itself reranking the test hits (same depth and blend as InPars): how far above the start
    model the pseudo-labels come from."""
    from inpars_ray.stages.rerank import rerank_run

    tc = stages["teacher"]  # its ranker block and actors (a device goes with its GPUs); rerank's depth and blend
    rerank_config = dataclasses.replace(stages["rerank"], ranker=tc.rankers[0], num_actors=tc.num_actors,
                                        num_gpus_per_actor=tc.num_gpus_per_actor)
    run_path = out / "teacher-test" / f"run.{config.split}.trec"
    with _Stage(record, "rerank_teacher") as stage:
        stage.done(rerank_run(collection, bm25_run.uri, run_path.uri, rerank_config, config.load))
    return _evaluate("teacher", collection, config, out, run_path, record, exclude_file)
