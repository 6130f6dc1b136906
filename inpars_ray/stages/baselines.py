"""The zero-shot baseline a user would otherwise reach for: all-MiniLM-L6-v2 as a bi-encoder reranking
BM25's top-k (cosine of mean-pooled embeddings), with no training. The run's report puts the InPars
reranker beside it and BM25; it goes through the same rerank stage (:func:`inpars_ray.stages.rerank.rerank_run`)
as the trained ranker, so the two differ only in the model.
"""
from __future__ import annotations

import os
from typing import Any

from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig
from inpars_ray.models.local_models import MINILM, resolve_model

#: the zero-shot model (a ``local:`` name or any sentence-transformers bi-encoder folder / id)
ZERO_SHOT_MODEL = MINILM


def zero_shot_rerank(collection: Collection, bm25_run: str | os.PathLike[str], out_path: str | os.PathLike[str],
                     depth: int = 100, model: str = ZERO_SHOT_MODEL, max_length: int = 256, num_actors: int = 1,
                     load_config: LoadConfig = LoadConfig(), **rerank_options: Any) -> dict[str, Any]:
    """Rerank the top ``depth`` hits of ``bm25_run`` with the zero-shot bi-encoder into ``out_path``
    (a TREC run + manifest; a rerun with the same inputs does nothing). Returns the rerank manifest."""
    from inpars_ray.stages.rerank import RerankConfig, rerank_run

    config = RerankConfig(model=resolve_model(model), family="bi-encoder", depth=depth, max_length=max_length,
                          num_actors=num_actors, **rerank_options)
    return rerank_run(collection, bm25_run, out_path, config, load_config)
