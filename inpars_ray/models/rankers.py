"""Ranker families behind one interface: every consumer of a relevance model scores through here.

The InPars-v2 filter, training's dev set, the rerank stage and the consistency filter score (query,
document) pairs through :class:`Ranker`, whatever the family (:mod:`inpars_ray.models.families`). Batches
are tokenised into token-id lists and scored in length-sorted sub-batches (:mod:`inpars_ray.models.encoding`);
scores are scattered back into the input order. On Ray, each scoring actor runs two calls at once, one
tokenising while the other runs the model (:class:`RankerUDF`), so tokenisation overlaps the forward passes
instead of running in series with them. A bi-encoder embeds each distinct query of a batch once (a rerank
batch holds the hits of a few queries).

Layers: pure functions in :mod:`inpars_ray.models.encoding`, :class:`Ranker` (loads once per actor),
:class:`RankerUDF` and :func:`score_dataset` (Ray Data wiring).
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.models.encoding import (
    TokenLists,
    as_text_list,
    cross_encoder_logits,
    embed,
    encode_texts,
    length_buckets,
    monot5_ptrue,
    padded_batch,
    pair_token_lists,
    trim_padding,
)
from inpars_ray.models.families import (
    BI_ENCODER,
    FAMILIES,
    MONOT5,
    POOLINGS,
    bi_encoder_pooling,
    detect_family,
    input_length,
    load_document_encoder,
    load_model,
    local_model,
)
from inpars_ray.runtime.deps import require
from inpars_ray.stageconfig import Field, stage_config

logger = logging.getLogger(__name__)


@stage_config
class RankerConfig:
    """Which ranker to load and how to feed it."""

    model: str = Field(description="Hugging Face id or local folder (e.g. <run>/train/model)")
    family: str | None = Field(None, description="monot5, cross-encoder or bi-encoder; None reads it from the "
                               "checkpoint")
    max_length: int = Field(512, ge=16, description="tokens per input: the whole prompt (monoT5), the "
                            "query+document pair (cross-encoder) or each text (bi-encoder, capped by a "
                            "sentence-transformers folder's max_seq_length); the document is what gets truncated")
    batch_size: int = Field(16, ge=1, description="pairs per forward pass (bi-encoder: texts per forward pass)")
    device: str = Field("cpu", description="torch device string (cpu, cuda, cuda:1)")
    pooling: str = Field("mean", description="bi-encoder pooling: mean (sentence-transformers' default) or cls; "
                         "a sentence-transformers folder's own pooling config wins")
    sort_by_length: bool = Field(True, description="order a batch's pairs by token length before cutting "
                                 "sub-batches (less padding); False keeps input order (for comparisons)")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads of each actor; None leaves "
                                      "torch's default")
    embedding_cache: int = Field(50_000, ge=0, description="bi-encoder: texts whose embeddings an actor keeps "
                                 "(a document in many queries' hits is embedded once; 384 floats each for "
                                 "MiniLM); 0 turns it off")

    def __post_init__(self) -> None:
        if self.family is not None and self.family not in FAMILIES:
            raise ConfigError(f"ranker family must be one of {FAMILIES} or None, got {self.family!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    def resolved(self) -> RankerConfig:
        """This config as a loader takes it: a packaged real model's name (``local:minilm``, ``local:mpnet``)
        made a path on this node, and ``family`` read from the checkpoint when it was None. Every stage and
        integration that scores with a ranker goes through it, so none resolves packaged names itself (the
        pipeline's ``resolve_model`` runs earlier, for the run root's tiny models too; a path passes unchanged)."""
        from inpars_ray.models import local_models

        config = self
        if self.model in local_models.PACKAGED or self.model in local_models.SPLIT:
            config = dataclasses.replace(self, model=local_models.resolve_model(self.model))
        return config if config.family else dataclasses.replace(config, family=detect_family(config.model))


def replace_ranker(config: Any, **changes: Any) -> Any:
    """A stage config (anything with a ``ranker: RankerConfig`` field) with ``changes`` made to its ranker."""
    return dataclasses.replace(config, ranker=dataclasses.replace(config.ranker, **changes))


# --- the scorer -------------------------------------------------------------------------------------------
class Ranker:
    """A loaded ranker: ``score(queries, docs)`` returns one float64 per pair, in input order.

    Build it from a config (loads the checkpoint) or, for a model being trained, with :meth:`from_model`.
    """

    def __init__(self, config: RankerConfig, model=None, tokenizer=None, document_model=None) -> None:
        torch = require("torch", "ranker scoring")
        self.config = config = config.resolved()
        assert config.family is not None  # resolved() reads it from the checkpoint when it is not given
        self.family: str = config.family
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        # embeddings are cached only for a checkpoint loaded here: a model handed in may still be training
        self._cache: collections.OrderedDict[str, np.ndarray] | None = None
        self._doc_cache: collections.OrderedDict[str, np.ndarray] | None = None
        if model is None:
            model, tokenizer = load_model(self.family, config.model)
            model.to(torch.device(config.device))
            if self.family == BI_ENCODER:
                document_model = load_document_encoder(local_model(config.model), torch.device(config.device))
            if self.family == BI_ENCODER and config.embedding_cache > 0:
                self._cache = collections.OrderedDict()
                self._doc_cache = collections.OrderedDict() if document_model is not None else self._cache
        self.model, self.tokenizer = model, tokenizer
        #: a query-tower-only bi-encoder's document tower (the frozen start model); None: one tower for both
        self.document_model = document_model
        self._left = getattr(tokenizer, "padding_side", "right") == "left"
        folder = local_model(config.model) if model is None else config.model
        self.pooling = bi_encoder_pooling(folder, config.pooling) if self.family == BI_ENCODER else None
        self.max_length = input_length(config.max_length, folder)
        self.pad = {"input_ids": tokenizer.pad_token_id or 0,
                    "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0}
        if self.family == MONOT5:
            from inpars_ray.models.monot5 import true_false_ids

            self.true_false = true_false_ids(tokenizer)  # fail at load time, not on the first batch
        logger.info("%s ranker %s ready on %s", self.family, config.model, config.device)

    @classmethod
    def from_model(cls, model, tokenizer, family: str, max_length: int = 512, batch_size: int = 32,
                   pooling: str = "mean", document_model=None) -> Ranker:
        """A ranker around an in-memory model (training's dev evaluation); the caller sets eval/train mode.
        ``document_model``: a query-tower-only bi-encoder's frozen document tower."""
        config = RankerConfig(model="<in-memory>", family=family, max_length=max_length, batch_size=batch_size,
                              device=str(next(model.parameters()).device), pooling=pooling)
        return cls(config, model=model, tokenizer=tokenizer, document_model=document_model)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def score(self, queries: Sequence[str] | pa.Array, docs: Sequence[str] | pa.Array) -> np.ndarray:
        """Relevance scores of (query, document) pairs: P(true), logit or cosine by family."""
        torch = require("torch", "ranker scoring")
        if len(queries) != len(docs):
            raise ValueError(f"{len(queries)} queries but {len(docs)} documents")
        if len(queries) == 0:
            return np.zeros(0, dtype=np.float64)
        with torch.inference_mode():
            if self.family == BI_ENCODER:
                return self._score_bi(queries, docs)
            return self.score_tokens(pair_token_lists(self.family, self.tokenizer, as_text_list(queries), as_text_list(docs),
                                                      self.max_length))

    def score_tokens(self, columns: dict[str, pa.Array | pa.ChunkedArray]) -> np.ndarray:
        """Scores of pre-tokenised pairs (:func:`pair_token_lists`): length-sorted sub-batches, each padded
        to its own longest pair."""
        torch = require("torch", "ranker scoring")
        if self.family == BI_ENCODER:
            raise ConfigError("a bi-encoder embeds queries and documents apart: score it from texts")
        if self.family == MONOT5:
            t, f = self.true_false
            forward = lambda b: monot5_ptrue(self.model, b, t, f)  # noqa: E731
        else:
            forward = lambda b: cross_encoder_logits(self.model, b)  # noqa: E731
        tokens = TokenLists(columns)
        out = np.empty(len(tokens.lengths), dtype=np.float64)
        with torch.inference_mode():
            for rows in length_buckets(tokens.lengths, self.config.batch_size, self.config.sort_by_length):
                batch = {k: torch.from_numpy(v).to(self.device)
                         for k, v in padded_batch(tokens, rows, self.pad, self._left).items()}
                out[rows] = forward(batch).float().cpu().numpy()
        return out

    def embed(self, texts: Sequence[str] | pa.Array, documents: bool = False) -> np.ndarray:
        """Normalised embeddings (float32, one row per text) of a bi-encoder; ``documents`` embeds with the
        document tower (the same model unless it was trained query-tower-only)."""
        torch = require("torch", "bi-encoder scoring")
        if self.family != BI_ENCODER or self.pooling is None:
            raise ConfigError(f"embed() needs a bi-encoder, this ranker is a {self.family}")
        pooling = self.pooling
        enc = encode_texts(self.tokenizer, as_text_list(texts), self.max_length)
        lengths = enc["attention_mask"].sum(1)
        out = None
        with torch.inference_mode():
            for rows in length_buckets(lengths, self.config.batch_size, self.config.sort_by_length):
                tower = self.document_model if documents and self.document_model is not None else self.model
                e = embed(tower, trim_padding(enc, rows, torch, self.device, self._left), pooling).cpu().numpy()
                if out is None:
                    out = np.empty((len(lengths), e.shape[1]), dtype=np.float32)
                out[rows] = e
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)  # no text: no rows

    def _embed_distinct(self, texts, documents: bool = False) -> np.ndarray:
        """One embedding row per input text; each distinct text is embedded once (and, with the cache, once
        per actor: a document in many queries' hits, a query over many pairs)."""
        arr = pa.array(as_text_list(texts) if not isinstance(texts, (pa.Array, pa.ChunkedArray)) else texts, pa.string())
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        encoded = arr.dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        idx = encoded.indices.to_numpy(zero_copy_only=False)
        cache = self._doc_cache if documents else self._cache
        if cache is None:
            return self.embed(distinct, documents)[idx]
        todo = [t for t in distinct if t not in cache]
        if todo:
            for text, row in zip(todo, self.embed(todo, documents)):
                cache[text] = row
            while len(cache) > self.config.embedding_cache:
                cache.popitem(last=False)  # the oldest first
        rows = []
        for t in distinct:
            row = cache.get(t)
            if row is None:  # evicted within this very call (a batch larger than the cache)
                row = self.embed([t], documents)[0]
            else:
                cache.move_to_end(t)
            rows.append(row)
        return np.stack(rows)[idx]

    def _score_bi(self, queries, docs) -> np.ndarray:
        # a batch of rerank pairs holds few distinct queries, and a document recurs in many queries' hits
        q_emb, d_emb = self._embed_distinct(queries), self._embed_distinct(docs, documents=True)
        return np.einsum("ij,ij->i", q_emb, d_emb).astype(np.float64)

    def __str__(self) -> str:
        return f"{self.family}({self.config.model})"


class RankerUDF:
    """Ray Data UDF: adds a score column to batches of (query, text) rows; loads the ranker once per actor.

    Safe for two concurrent calls (:func:`score_dataset` with ``overlap``): tokenising and running the model
    each hold their own lock, so one call's tokenisation overlaps the other's forward passes (both release
    the GIL) while the model and the tokenizer each serve one call at a time.
    """

    def __init__(self, config: RankerConfig, query_column: str = S.QUERY, text_column: str = S.TEXT,
                 score_column: str = S.SCORE) -> None:
        self.ranker = Ranker(config)
        self.query_column, self.text_column, self.score_column = query_column, text_column, score_column
        self._tokenizing, self._computing = threading.Lock(), threading.Lock()

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not isinstance(batch, pa.Table):  # pandas batches, when a caller asks for them
            batch = pa.Table.from_pandas(batch, preserve_index=False)
        S.require_columns(batch.column_names, [self.query_column, self.text_column], f"{self.ranker} scoring")
        queries, docs = batch.column(self.query_column), batch.column(self.text_column)
        ranker = self.ranker
        if ranker.family == BI_ENCODER:  # embeds through its cache: one call at a time
            with self._computing:
                scores = ranker.score(queries, docs)
        else:
            with self._tokenizing:
                tokens = pair_token_lists(ranker.family, ranker.tokenizer, as_text_list(queries), as_text_list(docs),
                                          ranker.max_length)
            with self._computing:
                scores = ranker.score_tokens(tokens)
        if self.score_column in batch.column_names:
            batch = batch.drop_columns([self.score_column])
        return batch.append_column(self.score_column, pa.array(scores, pa.float64()))


def score_dataset(ds, config: RankerConfig, num_actors: int = 1, batch_rows: int = 256,
                  num_gpus_per_actor: float = 0.0, query_column: str = S.QUERY, text_column: str = S.TEXT,
                  score_column: str = S.SCORE, overlap: bool = True):
    """Score every row of a Ray Dataset with a pool of ``num_actors`` ranker actors.

    The family is resolved on the driver, so a bad checkpoint fails here and not in every actor. With
    ``overlap``, each actor runs two calls at once (Ray Data's ``max_concurrent_calls_per_actor``):
    :class:`RankerUDF` lets one tokenise its batch while the other runs the model, so tokenisation overlaps
    the forward passes without another stage or CPU; ``False`` runs one call at a time.
    """
    ray = require("ray", "ranker scoring on Ray")
    if num_actors < 1 or batch_rows < 1:
        raise ConfigError(f"num_actors and batch_rows must be >= 1, got {num_actors}, {batch_rows}")
    config = config.resolved()
    threads = dict(max_concurrent_calls_per_actor=2, enable_true_multi_threading=True) if overlap else {}
    return ds.map_batches(
        RankerUDF,
        fn_constructor_kwargs=dict(config=config, query_column=query_column, text_column=text_column,
                                   score_column=score_column),
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors, **threads),
        num_gpus=num_gpus_per_actor or None,
    )
