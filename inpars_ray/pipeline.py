"""The whole pipeline on one collection, stage after stage, each resumable through its manifest.

Today it runs: index -> retrieve (BM25 top-k of the test queries) -> evaluate, i.e. the BM25 baseline
every InPars result is compared with. Stages added by later work (generate, filter, mine, train,
rerank) plug in here with the same pattern: a config, an output folder under ``out_dir``, a manifest.
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
    """

    dataset: str = catalog.BUNDLED_SPEC
    out_dir: str = "runs/tiny-science"
    split: str = "test"
    k: int = 1000
    measures: tuple[str, ...] = DEFAULT_MEASURES
    load: LoadConfig = LoadConfig()
    bm25: bm25.BM25Config = bm25.BM25Config()

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
        return cls(**data)


def run_pipeline(config: PipelineConfig, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run every stage on ``config.dataset``; returns the summary also written to ``out_dir/manifest.json``."""
    out = Path(config.out_dir)
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
    record.write(out)
    return {"dataset": config.dataset, "bm25": result.aggregate, "out_dir": str(out)}
