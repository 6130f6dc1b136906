"""monoT5 scoring: P(true) of a (query, document) pair, shared by the InPars-v2 filter and the reranker.

monoT5 (Nogueira et al., 2020) reads ``Query: {q} Document: {d} Relevant:`` and is trained to emit the
token ``true`` or ``false``. The relevance score is the softmax over the logits of those two tokens at the
first decoder step, which needs one forward pass and no ``generate``.

Two defects of the InPars toolkit (github.com/zetaalphavector/InPars) are avoided on purpose:

* truncating the whole prompt can cut the ``Relevant:`` suffix the model was trained to answer; here the
  prompt is assembled from token ids, and only the document (and, if it alone overflows, the query) is
  truncated;
* the ids of ``true`` / ``false`` are derived from the tokenizer, never hard-coded.

Pure functions only (no Ray): :func:`format_inputs` / :func:`score_pairs`; the Ray actor that loads a
monoT5 once and scores batches is :class:`inpars_ray.models.rankers.RankerUDF`, shared by every ranker family.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from inpars_ray.errors import ConfigError
from inpars_ray.runtime.deps import require

logger = logging.getLogger(__name__)

PREFIX_QUERY = "Query:"
PREFIX_DOC = "Document:"
SUFFIX = "Relevant:"
TARGET_TRUE = "true"
TARGET_FALSE = "false"


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
