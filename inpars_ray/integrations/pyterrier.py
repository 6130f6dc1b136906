"""PyTerrier transformers around what inpars-ray trains and builds.

* :class:`InparsReranker` rescores a PyTerrier result frame (``qid, query, docno, text``) with any ranker the
  engine trains (monoT5, cross-encoder, bi-encoder, a query-tower-only bi-encoder with its
  ``document_encoder/`` included): the same loader (:class:`~inpars_ray.models.rankers.RankerConfig`), the
  same scoring actor (:class:`~inpars_ray.models.rankers.RankerUDF`, pairs in query order in calls of
  ``rows_per_call``), the same per-query blend with the first-stage score and the same ranking
  (:mod:`inpars_ray.models.ranking`) as the rerank stage, so it gives the stage's numbers on the same pairs.
* :class:`DocumentTexts` attaches the text the engine scores (title and body joined as BEIR's flat
  indexes join them) from a corpus's document store (:mod:`inpars_ray.io.docstore`).

Usage::

    reranker = InparsReranker("runs/scifact/train/model")
    pipeline = bm25 >> DocumentTexts(store) >> reranker
    pt.Experiment([bm25, pipeline], topics, qrels, ["nDCG@10"], baseline=0)

PyTerrier is an optional extra (``pip install inpars-ray[pyterrier]``); importing this module without it
raises :class:`~inpars_ray.errors.MissingDependencyError` naming the extra.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, SchemaError
from inpars_ray.models.ranking import FIRST_STAGE_SCORE, rank_by_score
from inpars_ray.runtime.deps import require

pt = require("pyterrier", "the PyTerrier reranker")

logger = logging.getLogger(__name__)

#: PyTerrier's column names (its data contract)
QID, QUERY, DOCNO, SCORE, RANK = "qid", "query", "docno", "score", "rank"
#: pairs handed to one scoring call: the rerank stage's default (``RerankConfig.rows_per_call``)
ROWS_PER_CALL = 256


def _model_name(model: str) -> str:
    """The last part of a model's path or Hugging Face id, for experiment tables."""
    return Path(str(model).rstrip("/")).name or str(model)


def _with_columns(inp: pd.DataFrame, **columns) -> pd.DataFrame:
    """``inp`` with ``columns`` set (replaced where present), in PyTerrier's order: the new ones last."""
    out = inp.drop(columns=[c for c in columns if c in inp.columns])
    return out.assign(**columns)


class InparsReranker(pt.Transformer):  # type: ignore[name-defined]  # a class of a module imported at run time (require)
    """A PyTerrier reranker scoring with an inpars-ray ranker exactly as the rerank stage does.

    Input: a result frame with ``qid, query, docno`` and ``text_field`` (and ``score``, the first stage's,
    when ``first_stage_weight`` > 0). Output: the same rows with ``score`` and ``rank`` replaced, sorted by
    query, then by descending score, ties broken by ``docno`` as the rerank stage breaks them; ranks are
    numbered from PyTerrier's first rank (``pt.model.FIRST_RANK``, 0), the TREC file of the stage from 1.
    """

    def __init__(self, model: str | os.PathLike[str], batch_size: int = 16, text_field: str = "text",
                 device: str = "cpu", max_length: int = 512, first_stage_weight: float = 0.0,
                 family: str | None = None, rows_per_call: int = ROWS_PER_CALL) -> None:
        """
        Args:
            model: a checkpoint the engine trained (``<run>/train/model``), a Hugging Face id, a published
                run artifact (``gs://...``) or a packaged model (``local:minilm``).
            batch_size: pairs per forward pass (bi-encoder: texts per forward pass).
            text_field: the input column holding the document text.
            device: torch device (``cpu``, ``cuda``, ``cuda:1``).
            max_length: tokens per input, as the rerank stage's ``ranker.max_length``.
            first_stage_weight: weight of the incoming ``score`` in the final one: per query both scores are
                min-max scaled to [0, 1] and mixed as ``(1-w)*ranker + w*first stage`` (0: the ranker alone).
            family: ``monot5``, ``cross-encoder`` or ``bi-encoder``; None reads it from the checkpoint.
            rows_per_call: pairs tokenised and scored per call (bounds memory; the stage's default).
        """
        from inpars_ray.models.rankers import RankerConfig, RankerUDF

        if not 0.0 <= first_stage_weight <= 1.0:
            raise ConfigError(f"first_stage_weight must be in [0, 1], got {first_stage_weight}")
        if rows_per_call < 1:
            raise ConfigError(f"rows_per_call must be >= 1, got {rows_per_call}")
        model = str(model)
        self.model, self.text_field, self.first_stage_weight = model, text_field, first_stage_weight
        self.rows_per_call = rows_per_call
        # the rerank stage's ranker: RankerConfig(model, family, max_length, batch_size, device), family resolved
        config = RankerConfig(model, family, max_length, batch_size, device).resolved()
        self.udf = RankerUDF(config)
        self.family = config.family

    # --- PyTerrier's contract --------------------------------------------------------------------------------
    def _needed(self) -> list[str]:
        return [QUERY, self.text_field] + ([SCORE] if self.first_stage_weight > 0 else [])

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        """The output columns for ``input_columns`` (PyTerrier inspects a pipeline without running it)."""
        pt.validate.result_frame(input_columns, extra_columns=self._needed(), context=self)
        return [c for c in input_columns if c not in (SCORE, RANK)] + [SCORE, RANK]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.result_frame(inp, extra_columns=self._needed(), context=self)
        if len(inp) == 0:
            return _with_columns(inp, **{SCORE: pd.Series(dtype="float64"), RANK: pd.Series(dtype="int64")})
        pairs = self._pairs(inp)
        scored = self._score(pairs)
        ranked = rank_by_score(scored, self.first_stage_weight)
        # back to the input rows: (qid, docno) is unique (checked in _pairs)
        keys = pd.MultiIndex.from_arrays([pairs.column(S.QUERY_ID).to_numpy(zero_copy_only=False),
                                          pairs.column(S.DOC_ID).to_numpy(zero_copy_only=False)])
        rows = keys.get_indexer(pd.MultiIndex.from_arrays([
            ranked.column(S.QUERY_ID).to_numpy(zero_copy_only=False),
            ranked.column(S.DOC_ID).to_numpy(zero_copy_only=False)]))
        ranks = ranked.column(S.RANK).to_numpy() - 1 + pt.model.FIRST_RANK
        out = inp.iloc[rows].reset_index(drop=True)
        return _with_columns(out, **{SCORE: ranked.column(S.SCORE).to_numpy(zero_copy_only=False),
                                     RANK: ranks.astype(np.int64)})

    # --- the engine's path ---------------------------------------------------------------------------------
    def _pairs(self, inp: pd.DataFrame) -> pa.Table:
        """The input as the rerank stage's pairs: ids as strings (the run file's), query and document text."""
        qids, docnos = inp[QID].astype(str).to_numpy(), inp[DOCNO].astype(str).to_numpy()
        texts, queries = inp[self.text_field], inp[QUERY]
        missing = texts.isna().to_numpy() | queries.isna().to_numpy()
        if missing.any():
            first = int(np.flatnonzero(missing)[0])
            raise SchemaError(f"{self}: {int(missing.sum())} rows lack a query or a {self.text_field!r} "
                              f"(first: qid {qids[first]!r}, docno {docnos[first]!r}); attach the documents' "
                              "texts before reranking")
        dup = pd.MultiIndex.from_arrays([qids, docnos]).duplicated()
        if dup.any():
            first = int(np.flatnonzero(dup)[0])
            raise SchemaError(f"{self}: docno {docnos[first]!r} appears twice for qid {qids[first]!r}; a result "
                              "frame ranks each document once per query")
        table = {S.QUERY_ID: pa.array(qids, pa.string()), S.DOC_ID: pa.array(docnos, pa.string()),
                 S.QUERY: pa.array(queries.astype(str).tolist(), pa.string()),
                 S.TEXT: pa.array(texts.astype(str).tolist(), pa.string())}
        if self.first_stage_weight > 0:
            table[FIRST_STAGE_SCORE] = pa.array(inp[SCORE].to_numpy(dtype=np.float64), pa.float64())
        return pa.table(table)

    def _score(self, pairs: pa.Table) -> pa.Table:
        """``pairs`` with the ranker's score, scored as the stage scores them: sorted by (query id, doc id)
        (the stage's ``in_query_order``), through the stage's scoring actor, ``rows_per_call`` pairs a call."""
        pairs = pairs.sort_by([(S.QUERY_ID, "ascending"), (S.DOC_ID, "ascending")])
        parts = [self.udf(pairs.slice(start, self.rows_per_call))
                 for start in range(0, pairs.num_rows, self.rows_per_call)]
        logger.debug("%s scored %d pairs", self, pairs.num_rows)
        keep = [S.QUERY_ID, S.DOC_ID, S.SCORE] + ([FIRST_STAGE_SCORE] if self.first_stage_weight > 0 else [])
        return pa.concat_tables(parts).select(keep)

    def __str__(self) -> str:
        blend = f", w={self.first_stage_weight:g}" if self.first_stage_weight > 0 else ""
        return f"InparsReranker({self.family}:{_model_name(self.model)}{blend})"

    def __repr__(self) -> str:
        return (f"InparsReranker(model={self.model!r}, family={self.family!r}, text_field={self.text_field!r}, "
                f"first_stage_weight={self.first_stage_weight!r})")


class DocumentTexts(pt.Transformer):  # type: ignore[name-defined]  # a class of a module imported at run time (require)
    """Attaches each hit's text from an inpars-ray document store: the text the engine scores and trains on.

    ``store``: a store folder (:func:`inpars_ray.io.docstore.ensure_store` builds one for a collection, and
    the stages build it on a one-node cluster). A ``docno`` the store lacks raises
    :class:`~inpars_ray.io.docstore.DocStoreError` naming it.
    """

    def __init__(self, store: str | os.PathLike[str], text_field: str = "text") -> None:
        from inpars_ray.io.docstore import open_store

        self.store, self.text_field = Path(store), text_field
        self._docs = open_store(self.store)  # fails here, not on the first query, when the store is missing

    def transform_outputs(self, input_columns: list[str]) -> list[str]:
        pt.validate.columns(input_columns, includes=[QID, DOCNO], context=self)
        return [c for c in input_columns if c != self.text_field] + [self.text_field]

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.columns(inp, includes=[QID, DOCNO], context=self)
        if len(inp) == 0:
            return _with_columns(inp, **{self.text_field: pd.Series(dtype="object")})
        ids = pa.array(inp[DOCNO].astype(str).tolist(), pa.string())
        texts = self._docs.texts(ids, missing="raise", what="a hit of the input")
        return _with_columns(inp, **{self.text_field: texts.to_pylist()})

    def __str__(self) -> str:
        return f"DocumentTexts({self.store.name})"
