"""monoT5 scoring: P(true) of a (query, document) pair, shared by the InPars-v2 filter and the reranker.

monoT5 (Nogueira et al., 2020) reads ``Query: {q} Document: {d} Relevant:`` and is trained to emit the
token ``true`` or ``false``. The relevance score is the softmax over the logits of those two tokens at the
first decoder step, which needs one forward pass and no ``generate`` (REFERENCE.md, "rerank").

Two upstream defects are avoided on purpose (REFERENCE.md, "Known upstream defects"):

* truncating the whole prompt can cut the ``Relevant:`` suffix the model was trained to answer; here the
  prompt is assembled from token ids, and only the document (and, if it alone overflows, the query) is
  truncated;
* the ids of ``true`` / ``false`` are derived from the tokenizer, never hard-coded.

Three layers: :func:`format_inputs` / :func:`score_pairs` (pure, no Ray), :class:`MonoT5Scorer` (loads
the model once per Ray actor) and :func:`score_dataset` (wires it into Ray Data).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.deps import require
from inpars_ray.errors import ConfigError
from inpars_ray.stageconfig import Field, stage_config

logger = logging.getLogger(__name__)

PREFIX_QUERY = "Query:"
PREFIX_DOC = "Document:"
SUFFIX = "Relevant:"
TARGET_TRUE = "true"
TARGET_FALSE = "false"


@stage_config
class MonoT5Config:
    """Which monoT5 to load and how to feed it."""

    model: str = Field(description="Hugging Face id or local folder of a seq2seq checkpoint (e.g. "
                       "castorini/monot5-base-msmarco)")
    max_length: int = Field(512, description="encoder input length in tokens, prompt included; the document "
                            "is truncated to fit")
    batch_size: int = Field(16, description="pairs per forward pass")
    device: str = Field("cpu", description="torch device string (cpu, cuda, cuda:1)")

    def __post_init__(self) -> None:
        if self.max_length < 16:
            raise ConfigError(f"MonoT5Config.max_length={self.max_length} leaves no room for the prompt")
        if self.batch_size < 1:
            raise ConfigError(f"MonoT5Config.batch_size must be >= 1, got {self.batch_size}")


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, queries: list[str], docs: list[str], max_length: int) -> list[list[int]]:
    """Token ids of ``Query: {q} Document: {d} Relevant:`` (+ EOS), at most ``max_length`` each.

    The prompt is assembled from separately tokenized pieces so that the cut falls inside the document:
    the fixed words and the suffix always survive. A query is cut only when it would take more than half
    of the room left beside the fixed words.
    """
    if len(queries) != len(docs):
        raise ValueError(f"{len(queries)} queries but {len(docs)} documents")
    q_word, d_word, suffix = _ids(tokenizer, [PREFIX_QUERY, PREFIX_DOC, SUFFIX])
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    fixed = len(q_word) + len(d_word) + len(suffix) + len(eos)
    if fixed >= max_length:
        raise ConfigError(f"max_length={max_length} cannot hold the monoT5 prompt ({fixed} tokens)")
    query_cap = (max_length - fixed) // 2
    out = []
    for q, d in zip(_ids(tokenizer, list(queries)), _ids(tokenizer, list(docs))):
        q = q[:query_cap]
        budget = max_length - fixed - len(q)
        out.append(q_word + q + d_word + d[:budget] + suffix + eos)
    return out


def format_inputs(tokenizer, queries: list[str], docs: list[str], max_length: int = 512) -> dict[str, Any]:
    """Encoder inputs (``input_ids``, ``attention_mask`` as padded torch tensors) for monoT5 pairs."""
    torch = require("torch", "monoT5 scoring")
    ids = prompt_ids(tokenizer, queries, docs, max_length)
    width = max((len(x) for x in ids), default=0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def true_false_ids(tokenizer) -> tuple[int, int]:
    """Ids of the first token of ``true`` and of ``false`` in this tokenizer (``▁true``/``▁false`` in T5's)."""
    out = []
    for word in (TARGET_TRUE, TARGET_FALSE):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if not ids or ids[0] == tokenizer.unk_token_id:
            raise ConfigError(f"the tokenizer has no token for {word!r}; is this a monoT5-style vocabulary?")
        out.append(ids[0])
    if out[0] == out[1]:
        raise ConfigError(f"'true' and 'false' start with the same token id {out[0]}; P(true) is undefined")
    return out[0], out[1]


def decoder_start_ids(model, batch: int):
    """A (batch, 1) tensor of the decoder start token, the input of the first decoder step."""
    torch = require("torch", "monoT5 scoring")
    start = model.config.decoder_start_token_id
    if start is None:
        start = model.config.pad_token_id
    return torch.full((batch, 1), start, dtype=torch.long, device=model.device)


def score_pairs(model, tokenizer, queries: list[str], docs: list[str], max_length: int = 512) -> np.ndarray:
    """P(true) of each (query, document) pair: one forward pass, softmax over the (true, false) logits."""
    torch = require("torch", "monoT5 scoring")
    if not queries:
        return np.zeros(0, dtype=np.float64)
    true_id, false_id = true_false_ids(tokenizer)
    enc = {k: v.to(model.device) for k, v in format_inputs(tokenizer, queries, docs, max_length).items()}
    with torch.inference_mode():
        logits = model(**enc, decoder_input_ids=decoder_start_ids(model, len(queries))).logits
        pair = logits[:, 0, [true_id, false_id]].float()
        probs = torch.softmax(pair, dim=-1)[:, 0]
    return probs.cpu().numpy().astype(np.float64)


class MonoT5Scorer:
    """Ray Data UDF: adds a P(true) column to batches of (query, text) rows; loads the model once per actor."""

    def __init__(self, config: MonoT5Config, query_column: str = S.QUERY, text_column: str = S.TEXT,
                 score_column: str = S.SCORE) -> None:
        transformers = require("transformers", "monoT5 scoring")
        torch = require("torch", "monoT5 scoring")
        self.config = config
        self.query_column, self.text_column, self.score_column = query_column, text_column, score_column
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(config.model)
        self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(config.model).to(torch.device(config.device))
        self.model.eval()
        true_false_ids(self.tokenizer)  # fail at load time, not on the first batch
        logger.info("monoT5 %s loaded on %s", config.model, config.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not isinstance(batch, pa.Table):  # pandas batches, when a caller asks for them
            batch = pa.Table.from_pandas(batch, preserve_index=False)
        S.require_columns(batch.column_names, [self.query_column, self.text_column], "monoT5 scoring")
        queries = batch.column(self.query_column).to_pylist()
        docs = batch.column(self.text_column).to_pylist()
        scores = np.zeros(len(queries), dtype=np.float64)
        step = self.config.batch_size
        for start in range(0, len(queries), step):
            scores[start:start + step] = score_pairs(self.model, self.tokenizer, queries[start:start + step],
                                                     docs[start:start + step], self.config.max_length)
        if self.score_column in batch.column_names:
            batch = batch.drop_columns([self.score_column])
        return batch.append_column(self.score_column, pa.array(scores, pa.float64()))

    def __str__(self) -> str:
        return f"monoT5({self.config.model})"


def score_dataset(ds, config: MonoT5Config, num_actors: int = 1, batch_rows: int = 256,
                  query_column: str = S.QUERY, text_column: str = S.TEXT, score_column: str = S.SCORE,
                  num_gpus_per_actor: float = 0.0):
    """Score every row of a Ray Dataset with monoT5 over a pool of ``num_actors`` actors."""
    ray = require("ray", "monoT5 scoring on Ray")
    return ds.map_batches(
        MonoT5Scorer,
        fn_constructor_kwargs=dict(config=config, query_column=query_column, text_column=text_column,
                                   score_column=score_column),
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=num_gpus_per_actor or None,
    )
