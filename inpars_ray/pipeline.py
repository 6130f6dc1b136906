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

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inpars_ray.config import START_MODEL, TINY_LM, TINY_MONOT5, TRAINED, InparsConfig, PipelineConfig
from inpars_ray.errors import ArtifactDamagedError, ConfigError, find_typed_error
from inpars_ray.io import artifacts, catalog, storage
from inpars_ray.io.manifest import StageRecord
from inpars_ray.io.stage import StageResult
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


def stage_configs(config: PipelineConfig, out: storage.PathLike, resolve=resolve_model) -> InparsConfig | None:
    """The synthetic-data stages' configs as they run: ``config.inpars`` with every model name resolved (the
    reranker's ``trained`` becomes the model the train stage writes); None without ``inpars``. Devices, GPU
    counts and accelerators pass through untouched."""
    ic = config.inpars
    if ic is None:
        return None
    filt = ic.filter
    rerank_model = model_location(storage.join(out, "train")).uri if ic.rerank.ranker.model == TRAINED else \
        resolve(ic.rerank.ranker.model, out)
    teacher = ic.teacher and dataclasses.replace(ic.teacher, rankers=tuple(
        dataclasses.replace(r, model=resolve(r.model, out)) for r in ic.teacher.rankers))
    return dataclasses.replace(
        ic, generate=dataclasses.replace(ic.generate, model=resolve(ic.generate.model, out)),
        filter=replace_ranker(filt, model=resolve(filt.ranker.model, out)) if filt.ranker else filt,
        mine=dataclasses.replace(ic.mine, dense=dataclasses.replace(
            ic.mine.dense, model=resolve(ic.mine.dense.model, out))) if ic.mine.dense else ic.mine,
        train=dataclasses.replace(ic.train, base_model=resolve(ic.train.base_model, out)),
        rerank=replace_ranker(ic.rerank, model=rerank_model), teacher=teacher)


def _done(line: Any, result: StageResult) -> StageResult:
    """A stage's result, its counts shown on its terminal line (marked when it was already complete)."""
    line.summary = result.summary()
    return result


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What the stages of one run share: its settings, its root (local or ``gs://``), the collection, the run's
    record (stage timings, the systems evaluated) and the synthetic-data stages' configs (:func:`stage_configs`)."""

    config: PipelineConfig
    out: storage.Location
    collection: catalog.Collection
    record: StageRecord
    resolved: InparsConfig | None

    @property
    def stages(self) -> InparsConfig:
        if self.resolved is None:
            raise ConfigError("this needs the synthetic-data stages: `inpars` is null in this config")
        return self.resolved

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Any]:
        """A stage's timing in the run's manifest and its line on the terminal (yielded), in one ``with``."""
        with self.record.timed(name), progress.stage(name.split("_")[0]) as line:
            yield line

    def run_file(self, folder: str) -> storage.Location:
        """Where a system's run of the test split goes: one folder per system, its evaluation beside it."""
        return self.out / folder / f"run.{self.config.split}.trec"

    @property
    def index_dir(self) -> storage.Location:
        """The BM25 index every BM25 search of the run uses (built first, by :func:`_begin`)."""
        return self.out / "index"

    @property
    def excluded(self) -> storage.Location:
        """The query ids shown to the generator as few-shot examples: left out of every system's evaluation."""
        return self.out / "rerank" / "excluded_queries.txt"


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """generate -> filter (-> consistency) -> mine (-> teacher): each stage's result, and what later stages read."""

    generated: StageResult
    filtered: StageResult
    consistent: StageResult | None
    mined: StageResult
    labelled: StageResult | None

    @property
    def queries(self) -> StageResult:
        """The kept queries: consistency's when it ran, else the filter's."""
        return self.consistent or self.filtered

    @property
    def triples(self) -> StageResult:
        """What training reads: the teacher's scored triples when the teacher stage ran, else mine's."""
        return self.labelled or self.mined

    def results(self) -> dict[str, StageResult | None]:
        return {"generate": self.generated, "filter": self.filtered, "consistency": self.consistent,
                "mine": self.mined, "teacher": self.labelled}


def _relative(loc: storage.Location, root: storage.Location) -> str:
    return loc.path[len(root.path.rstrip("/")) + 1:]


def _evaluate(ctx: RunContext, name: str, run_path: storage.Location, excluded: bool = True) -> dict[str, float]:
    """Evaluate one system's run, write its summary and per-query values, and list it in the manifest."""
    config, folder = ctx.config, run_path.parent
    summary_path = folder / f"eval.{config.split}.json"
    per_query_path = folder / f"eval.{config.split}.per_query.tsv"
    with ctx.stage(f"evaluate_{folder.name}") as line:
        result, _ = evaluate_files(ctx.collection, run_path.uri, config.split, list(config.measures),
                                   exclude_file=ctx.excluded.uri if excluded else None,
                                   per_query_path=per_query_path.uri, summary_path=summary_path.uri,
                                   skip_bad_rows=config.load.skip_bad_rows)
        headline = next(iter(result.aggregate))
        line.summary = f"{name}: {headline} {result.aggregate[headline]:.4f} over {result.num_queries} queries"
    ctx.record.extra.setdefault(SYSTEMS, []).append({
        "name": name, "run": _relative(run_path, ctx.out), "summary": _relative(summary_path, ctx.out),
        "per_query": _relative(per_query_path, ctx.out), "queries": result.num_queries,
        "measures": result.aggregate})
    return result.aggregate


def _rerank_row(ctx: RunContext, name: str, folder: str, rerank_config: Any, stage: str) -> dict[str, float]:
    """A system that reranks the BM25 run (into ``folder``) and is evaluated on the same queries as InPars."""
    from inpars_ray.stages.rerank import rerank_run

    run_path = ctx.run_file(folder)
    with ctx.stage(stage) as line:
        _done(line, rerank_run(ctx.collection, ctx.run_file("bm25").uri, run_path.uri, rerank_config, ctx.config.load))
    return _evaluate(ctx, name, run_path)


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


def _begin(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None, name: str) -> tuple[RunContext, StageResult]:
    """How every entry point begins (a local run root on many nodes fails here, before any work): the run's
    context (its record named ``name``) and the index, built or resumed."""
    out = storage.location(config.out_dir)  # absolute: Ray workers run in other folders
    storage.check_reachable(out)
    out.mkdir()
    record = StageRecord(name, config)
    collection = catalog.resolve(config.dataset, cache_dir)
    if collection.source:  # a built collection (irds:): the resolved ids and versions it came from
        record.extra["collection"] = collection.source
    ctx = RunContext(config, out, collection, record, stage_configs(config, out))
    with ctx.stage("index") as line:
        built = _done(line, index.build_index(collection, ctx.index_dir.uri, config.load, config.index))
    return ctx, built


def _run_pipeline(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    ctx, built = _begin(config, cache_dir, "pipeline")
    out, record = ctx.out, ctx.record
    with ctx.stage("retrieve") as line:
        searched = retrieve.retrieve_to_file(ctx.collection, ctx.index_dir.uri, ctx.run_file("bm25").uri,
                                             retrieve.RetrieveConfig(split=config.split, k=config.k, bm25=config.bm25),
                                             config.load)
        _done(line, searched)
    bm25_measures = _evaluate(ctx, "BM25", ctx.run_file("bm25"), excluded=False)
    record.counts.update(documents=built.counts.get("documents", 0), queries=searched.counts.get("queries", 0))
    record.extra["bm25"] = bm25_measures
    summary = {"dataset": config.dataset, "bm25": bm25_measures, "out_dir": out.uri}
    if config.inpars is not None:
        summary["inpars"] = _run_inpars(ctx)
    record.write(out)
    return summary


def _run_inpars(ctx: RunContext) -> dict[str, float]:
    """generate -> filter -> mine -> train -> rerank -> evaluate; returns the reranked run's measures."""
    from inpars_ray.stages.generate_parts import fewshot_query_ids
    from inpars_ray.stages.rerank import rerank_run
    from inpars_ray.stages.train import train

    config, stages, out, record = ctx.config, ctx.stages, ctx.out, ctx.record
    synthetic = _synthetic(ctx)
    with ctx.stage("train") as line:
        trained = _done(line, train(synthetic.triples.out.uri, (out / "train").uri, stages.train))
    with ctx.stage("rerank") as line:
        _done(line, rerank_run(ctx.collection, ctx.run_file("bm25").uri, ctx.run_file("rerank").uri, stages.rerank,
                              config.load))
    # query ids shown to the generator as few-shot examples (promptagator) are left out of evaluation
    ctx.excluded.write_text("".join(f"{q}\n" for q in sorted(set(fewshot_query_ids(synthetic.generated.out)))))
    if stages.zero_shot:
        _zero_shot(ctx)
    if stages.teacher is not None and stages.teacher.rerank_test:
        tc = stages.teacher  # its ranker block and actors (a device goes with its GPUs); rerank's depth and blend
        _rerank_row(ctx, "teacher", "teacher-test", dataclasses.replace(
            stages.rerank, ranker=tc.rankers[0], num_actors=tc.num_actors, num_gpus_per_actor=tc.num_gpus_per_actor),
            "rerank_teacher")
    measures = _evaluate(ctx, "InPars", ctx.run_file("rerank"))
    if stages.tune is not None:
        record.extra["tuned"] = _tuned(ctx, _sweep(ctx, synthetic))
    for name, result in {**synthetic.results(), "train": trained}.items():
        for key, value in (result.counts if result is not None else {}).items():
            record.counts[f"{name}_{key}"] = value
    record.extra["rerank"] = measures
    return measures


def _synthetic(ctx: RunContext) -> Synthetic:
    """generate -> filter (-> consistency) -> mine (-> teacher), each resumed through its manifest."""
    from inpars_ray.integrations.generated_data import IMPORT_FOLDER, import_generated
    from inpars_ray.stages import teacher
    from inpars_ray.stages.filter import run_filter
    from inpars_ray.stages.generate import run_generate
    from inpars_ray.stages.mine import run_mine

    config, stages, out, collection = ctx.config, ctx.stages, ctx.out, ctx.collection
    with ctx.stage("generate") as line:
        if stages.synthetic_data:  # the InPars team's published queries (or an export's) instead of generating
            gen = import_generated(stages.synthetic_data, collection, (out / IMPORT_FOLDER).uri, config.load)
            ctx.record.extra["synthetic_data"] = {**gen.extra["source"], "counts": gen.counts}
        else:
            gen = run_generate(collection, (out / "generate").uri, stages.generate, stages.generate_resources,
                               config.load)
        _done(line, gen)
    with ctx.stage("filter") as line:
        filt = run_filter(gen.out.uri, collection, (out / "filter").uri, stages.filter, config.load)
        _done(line, filt)
    consistent = _consistency(ctx, filt) if stages.filter.strategy == "consistency" else None
    queries = consistent or filt
    with ctx.stage("mine") as line:
        mined = run_mine(queries.out.uri, collection, ctx.index_dir.uri, (out / "mine").uri, stages.mine,
                         config.load)
        _done(line, mined)
    labelled, unread = None, stages.teacher_unread()
    if unread:  # the train stage reads mine's triples: scoring them would be time spent for nothing
        logger.info("teacher: skipped, nothing reads its scores (%s)", unread)
        ctx.record.extra["teacher_skipped"] = unread
    elif stages.teacher is not None:
        with ctx.stage("teacher") as line:
            labelled = teacher.run_teacher(mined.out.uri, (out / "teacher").uri, stages.teacher,
                                           ctx.index_dir.uri, config.bm25)
            _done(line, labelled)
    return Synthetic(gen, filt, consistent, mined, labelled)


def run_tune(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None) -> StageResult:
    """``inpars-ray tune``: index -> generate -> filter -> mine (each resumed through its manifest), then the
    sweep of ``inpars.tune`` (its defaults when unset) on the synthetic dev set. The collection's queries and
    qrels are not read by anything after the index. Returns the sweep's result."""
    from inpars_ray.stages.tune import SweepConfig

    if config.inpars is None:  # before any work
        raise ConfigError("tune needs the synthetic-data stages: `inpars` is null in this config")
    if config.inpars.tune is None:
        config = dataclasses.replace(config, inpars=dataclasses.replace(config.inpars, tune=SweepConfig()))
    ctx, synthetic = run_synthetic(config, cache_dir)
    return _sweep(ctx, synthetic)


def run_synthetic(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None,
                  ) -> tuple[RunContext, Synthetic]:
    """index -> generate -> filter (-> consistency) -> mine (-> teacher), each resumed through its manifest
    (what a tune sweep starts from)."""
    ctx, _ = _begin(config, cache_dir, "tune_run")
    return ctx, _synthetic(ctx)


#: header of the best settings file: what it is and how to use it
_BEST_HEADER = """# The best trial of an inpars-ray tune sweep: the run's settings with the tuned values set
# and inpars.tune cleared. `inpars-ray run --config THIS_FILE` trains with this recipe on all triples.
# Chosen on the synthetic dev set only (held-out source documents); the test qrels were never read.
"""


def _sweep(ctx: RunContext, synthetic: Synthetic) -> StageResult:
    """The dev set and the sweep under ``out/tune``; writes ``best.yaml`` there (and in the sweep folder)."""
    from inpars_ray.config import dump_yaml, merge
    from inpars_ray.io.manifest import config_hash
    from inpars_ray.stages.devset import build_dev_set
    from inpars_ray.stages.tune import run_sweep, sweep_payload

    config, stages, out = ctx.config, ctx.stages, ctx.out
    tc = stages.tune
    assert tc is not None and config.inpars is not None  # called only when the config has a sweep
    with ctx.stage("devset") as line:
        devset = build_dev_set(synthetic.queries.out.uri, synthetic.triples.out.uri, ctx.index_dir.uri,
                               ctx.collection, (out / "tune" / "devset").uri, tc.dev, config.bm25, config.load,
                               teacher=stages.teacher)
        _done(line, devset)
    weight = stages.rerank.first_stage_weight
    key = config_hash(sweep_payload(tc, tc.resolved_space(), devset.key, config.inpars.train, weight))
    sweep_dir = out / "tune" / f"sweep-{key}"
    with ctx.stage("tune") as line:
        swept = run_sweep(devset, devset.out, sweep_dir, tc, stages.train, weight,
                          resolve=lambda name: resolve_model(name, out))
        line.summary = (f"tune: {swept.counts['trials']} trials, {swept.counts['stopped_early']} stopped early, "
                        f"best dev nDCG@10 {swept.extra['best']['dev_ndcg@10']:.4f}")
    best = merge(config, {"inpars": {**swept.extra["best_settings"], "tune": None}}, "tune best settings")
    text = _BEST_HEADER + dump_yaml(best)
    for where in (sweep_dir / "best.yaml", out / "tune" / "best.yaml"):
        where.write_text(text)
    extra = {**swept.extra, "best_yaml": (out / "tune" / "best.yaml").uri}
    return dataclasses.replace(swept, manifest={**swept.manifest, "extra": extra})


def _tuned(ctx: RunContext, sweep: StageResult) -> dict[str, float]:
    """The best trial's model (trained on the training part of the triples) reranking the test run, with
    the best trial's first-stage blend, evaluated beside the untuned InPars."""
    rerank = ctx.stages.rerank
    weight = sweep.extra["best_settings"].get("rerank", {}).get("first_stage_weight", rerank.first_stage_weight)
    return _rerank_row(ctx, "InPars (tuned)", "tuned", replace_ranker(dataclasses.replace(
        rerank, first_stage_weight=weight), model=sweep.extra["best_model"], family=None), "rerank_tuned")


def _consistency(ctx: RunContext, filt: StageResult) -> StageResult:
    """InPars-light's consistency filter over the filter's candidates: a ranker (``filter.ranker``, or one
    trained here on every candidate, as in the paper) must put a query's source document in the top
    ``consistency_k`` of its BM25 hits."""
    from inpars_ray.stages.consistency import ConsistencyConfig, run_consistency
    from inpars_ray.stages.mine import run_mine
    from inpars_ray.stages.train import train

    config, stages, out = ctx.config, ctx.stages, ctx.out
    fc, rr = stages.filter, stages.rerank
    ranker = fc.ranker
    if ranker is None:
        first = out / "candidates-ranker"
        with ctx.stage("mine_candidates") as line:
            mined = _done(line, run_mine(filt.out.uri, ctx.collection, ctx.index_dir.uri,
                                        (first / "mine").uri, stages.mine, config.load))
        with ctx.stage("train_candidates") as line:
            _done(line, train(mined.out.uri, (first / "train").uri, stages.train))
        ranker = dataclasses.replace(rr.ranker, model=model_location(first / "train").uri, family=None)
    check = ConsistencyConfig(ranker=ranker, k=fc.consistency_k, depth=fc.consistency_depth,
                              num_actors=rr.num_actors, num_gpus_per_actor=rr.num_gpus_per_actor,
                              rows_per_call=rr.rows_per_call, partitions=rr.partitions)
    with ctx.stage("consistency") as line:
        checked = run_consistency(filt.out.uri, ctx.collection, ctx.index_dir.uri,
                                  (out / "consistency").uri, check, config.load)
        _done(line, checked)
    return checked


def _zero_shot(ctx: RunContext) -> dict[str, float]:
    """The baseline a user would otherwise reach for: the start model, untrained, reranking the same BM25 hits
    (same depth, length, actors and first-stage blend as the InPars reranker), evaluated on the same queries.

    ``inpars.zero_shot: start`` is ``train.base_model`` with its family (a bare encoder trained as a
    cross-encoder has no relevance head before training, so its start is that encoder as a bi-encoder)."""
    from inpars_ray.models.families import BI_ENCODER, CROSS_ENCODER, detect_family

    stages = ctx.stages
    name = stages.zero_shot
    assert name
    if name == START_MODEL:
        model = stages.train.base_model
        family = stages.train.family or detect_family(model)
        if family == CROSS_ENCODER and detect_family(model) != CROSS_ENCODER:
            family = BI_ENCODER
        shown = ctx.config.inpars.train.base_model if ctx.config.inpars else model
    else:
        model, family, shown = resolve_model(name, ctx.out), None, name
    ctx.record.extra["start_model"] = {"system": "zero-shot", "model": shown, "family": family or detect_family(model)}
    return _rerank_row(ctx, "zero-shot", "zero-shot", replace_ranker(stages.rerank, model=model, family=family),
                       "zero-shot")
