"""The whole pipeline on one collection, stage after stage, each resumable through its manifest.

index -> retrieve (BM25 top-k of the test queries) -> evaluate (the BM25 baseline), then, when
``inpars`` is set: generate -> filter -> mine -> train -> rerank the BM25 run -> evaluate, all under
``out_dir`` (one folder per stage). A rerun skips every stage whose manifest matches its config.

Model names ``local:tiny-lm`` and ``local:tiny-monot5`` build tiny random models in ``out_dir/models``
(no download): the embedded default runs the whole pipeline offline, in minutes, to show and test the
mechanics — its reranker is untrained noise, not an effectiveness result. Real runs name Hugging Face
ids (e.g. EleutherAI/gpt-j-6B and castorini/monot5-3b-msmarco-10k, REFERENCE.md) in a YAML config.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from inpars_ray import bm25, catalog
from inpars_ray.evaluate import DEFAULT_MEASURES, evaluate_files
from inpars_ray.load import LoadConfig
from inpars_ray.manifest import StageRecord

logger = logging.getLogger(__name__)


TINY_LM = "local:tiny-lm"
TINY_MONOT5 = "local:tiny-monot5"


@dataclasses.dataclass(frozen=True)
class InparsConfig:
    """The synthetic-data stages (defaults: a quick offline demo; the papers' values in comments).

    Attributes:
        backend: generation backend, ``hf``, ``vllm`` or ``openai``.
        generator: generator model id or folder (paper: EleutherAI/gpt-j-6B), or ``local:tiny-lm``.
        prompt: ``inpars``, ``inpars-gbq``, ``promptagator`` or a template file.
        num_docs: documents sampled for generation (paper: 100,000).
        seed: seed of the sample, the generation and the negatives (paper: 1).
        generate_batch_size: documents per generation call.
        generate_actors: generation actors.
        gpus_per_generate_actor: GPUs per generation actor.
        filter_strategy: ``scores`` (InPars-v1) or ``reranker`` (InPars-v2).
        filter_model: monoT5 for the reranker filter (paper: castorini/monot5-3b-msmarco-10k).
        keep_top_k: queries kept by the filter (paper: 10,000).
        min_query_tokens: shorter queries are dropped (paper: 3).
        depth: BM25 hits negatives are drawn from (paper: 1000).
        negatives: negatives per query (paper: 1).
        base_model: monoT5 to fine-tune (paper v1: t5-base; v2: monoT5-3B), or ``local:tiny-monot5``.
        train_batch_size: effective batch in examples (paper: 128).
        train_micro_batch_size: examples per forward pass per worker.
        lr: constant AdamW learning rate (paper: 3e-4 on GPU).
        max_steps: optimizer steps; None trains one epoch.
        train_workers: Ray Train workers.
        accelerator: ``cpu``, ``gpu`` or ``tpu``.
        max_length: monoT5 input length in tokens (paper: 512).
        rerank_depth: BM25 hits reranked per test query (paper: 1000).
        rerank_actors: monoT5 scoring actors.
    """

    backend: str = "hf"
    generator: str = TINY_LM
    prompt: str = "inpars"
    num_docs: int = 64
    seed: int = 1
    generate_batch_size: int = 16
    generate_actors: int = 1
    gpus_per_generate_actor: float = 0.0
    filter_strategy: str = "scores"
    filter_model: str | None = None
    keep_top_k: int = 48
    min_query_tokens: int = 3
    depth: int = 1000
    negatives: int = 1
    base_model: str = TINY_MONOT5
    train_batch_size: int = 16
    train_micro_batch_size: int = 8
    lr: float = 3e-4
    max_steps: int | None = None
    train_workers: int = 1
    accelerator: str = "cpu"
    max_length: int = 512
    rerank_depth: int = 100
    rerank_actors: int = 1


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run.

    Attributes:
        dataset: collection spec (folder, ``beir/<name>``, ``bundled/tiny-science``, ``gs://...``).
        out_dir: where every stage writes its folder.
        split: the evaluation split.
        k: BM25 depth of the first-stage run (InPars reranks the top 1000).
        measures: ir-measures names reported.
        load: how strictly input files are read.
        bm25: BM25 parameters and parallelism.
        inpars: the synthetic-data stages; None runs the BM25 baseline only.
    """

    dataset: str = catalog.BUNDLED_SPEC
    out_dir: str = "runs/tiny-science"
    split: str = "test"
    k: int = 1000
    measures: tuple[str, ...] = DEFAULT_MEASURES
    load: LoadConfig = LoadConfig()
    bm25: bm25.BM25Config = bm25.BM25Config()
    inpars: InparsConfig | None = InparsConfig()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        """Build from plain values (e.g. parsed YAML); nested configs are dicts."""
        data = dict(data)
        if "load" in data:
            data["load"] = LoadConfig(**data["load"])
        if "bm25" in data:
            data["bm25"] = bm25.BM25Config(**data["bm25"])
        if "measures" in data:
            data["measures"] = tuple(data["measures"])
        if isinstance(data.get("inpars"), dict):
            data["inpars"] = InparsConfig(**data["inpars"])
        return cls(**data)


def run_pipeline(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run every stage on ``config.dataset``; returns the summary also written to ``out_dir/manifest.json``."""
    out = Path(config.out_dir).resolve()  # Ray workers run in other folders: paths must be absolute
    out.mkdir(parents=True, exist_ok=True)
    record = StageRecord("pipeline", config)
    collection = catalog.resolve(config.dataset, cache_dir)
    with record.timed("index"):
        index_manifest = bm25.build_index(collection, out / "index", config.load)
    run_path = out / "bm25" / f"run.{config.split}.trec"
    with record.timed("retrieve"):
        retrieve_manifest = bm25.retrieve_to_file(
            collection, out / "index", run_path, bm25.RetrieveConfig(split=config.split, k=config.k, bm25=config.bm25),
            config.load)
    with record.timed("evaluate"):
        result, summary = evaluate_files(collection, str(run_path), config.split, list(config.measures),
                                         summary_path=str(out / "bm25" / f"eval.{config.split}.json"),
                                         skip_bad_rows=config.load.skip_bad_rows)
    record.counts.update(documents=index_manifest.get("counts", {}).get("documents", 0),
                         queries=retrieve_manifest.get("counts", {}).get("queries", 0),
                         judged_queries=result.num_queries)
    record.extra["bm25"] = result.aggregate
    summary = {"dataset": config.dataset, "bm25": result.aggregate, "out_dir": str(out)}
    if config.inpars is not None:
        summary["inpars"] = _run_inpars(config, collection, out, run_path, record)
    record.write(out)
    return summary


def _model(name: str, out: Path) -> str:
    """Resolve the ``local:`` tiny-model names to folders built (once) under ``out/models``."""
    if name == TINY_LM:
        from inpars_ray.testing.tiny_lm import build_tiny_lm

        path = out / "models" / "tiny-lm"
        return str(path if (path / "config.json").exists() else build_tiny_lm(path))
    if name == TINY_MONOT5:
        from inpars_ray.testing.tiny_t5 import build_tiny_monot5

        path = out / "models" / "tiny-monot5"
        return str(path if (path / "config.json").exists() else build_tiny_monot5(path))
    return name


def _run_inpars(config: PipelineConfig, collection: catalog.Collection, out: Path, bm25_run: Path,
                record: StageRecord) -> dict[str, Any]:
    """generate -> filter -> mine -> train -> rerank -> evaluate; returns the reranked run's measures."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from inpars_ray.backends.base import GenerationParams
    from inpars_ray.filter import FilterConfig, run_filter
    from inpars_ray.generate import GenerateConfig, GenerateResources, run_generate
    from inpars_ray.mine import MineConfig, run_mine
    from inpars_ray.rerank import RerankConfig, rerank_run
    from inpars_ray.train import TrainConfig, train

    ic = config.inpars
    assert ic is not None
    with record.timed("generate"):
        gen = run_generate(collection, out / "generate",
                           GenerateConfig(backend=ic.backend, model=_model(ic.generator, out), prompt=ic.prompt,
                                          num_docs=ic.num_docs, seed=ic.seed,
                                          generation=GenerationParams(seed=ic.seed)),
                           GenerateResources(batch_size=ic.generate_batch_size, num_actors=ic.generate_actors,
                                             gpus_per_actor=ic.gpus_per_generate_actor), config.load)
    with record.timed("filter"):
        filt = run_filter(out / "generate" / "parts", collection, out / "filter",
                          FilterConfig(strategy=ic.filter_strategy, keep_top_k=ic.keep_top_k,
                                       min_tokens=ic.min_query_tokens,
                                       model=_model(ic.filter_model, out) if ic.filter_model else None,
                                       max_length=ic.max_length), config.load)
    with record.timed("mine"):
        mined = run_mine(out / "filter", collection, out / "index", out / "mine",
                         MineConfig(depth=ic.depth, negatives=ic.negatives, seed=ic.seed), config.load)
    with record.timed("train"):
        trained = train(out / "mine" / "triples", out / "train",
                        TrainConfig(base_model=_model(ic.base_model, out), lr=ic.lr, batch_size=ic.train_batch_size,
                                    micro_batch_size=ic.train_micro_batch_size, max_steps=ic.max_steps,
                                    num_workers=ic.train_workers, accelerator=ic.accelerator,
                                    max_length=ic.max_length))
    rerank_path = out / "rerank" / f"run.{config.split}.trec"
    with record.timed("rerank"):
        rerank_run(collection, bm25_run, rerank_path,
                   RerankConfig(model=str(out / "train" / "model"), depth=ic.rerank_depth,
                                max_length=ic.max_length, num_actors=ic.rerank_actors), config.load)
    # query ids shown to the generator as few-shot examples (promptagator) are left out of evaluation
    fewshot = pads.dataset(str(out / "generate" / "parts"), format="parquet").to_table(columns=["fewshot_ids"])
    excluded = sorted(set(pc.list_flatten(fewshot.column("fewshot_ids")).to_pylist()) - {None})
    exclude_file = out / "rerank" / "excluded_queries.txt"
    exclude_file.write_text("".join(f"{q}\n" for q in excluded))
    with record.timed("evaluate_rerank"):
        result, _ = evaluate_files(collection, str(rerank_path), config.split, list(config.measures),
                                   exclude_file=str(exclude_file),
                                   summary_path=str(out / "rerank" / f"eval.{config.split}.json"),
                                   skip_bad_rows=config.load.skip_bad_rows)
    for stage, manifest in (("generate", gen), ("filter", filt), ("mine", mined), ("train", trained)):
        for key, value in manifest.get("counts", {}).items():
            record.counts[f"{stage}_{key}"] = value
    record.extra["rerank"] = result.aggregate
    return result.aggregate
