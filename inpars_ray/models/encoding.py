"""Model inputs and outputs of the ranker families: tokenised pairs, padding, pooling and score heads.

Speed: pairs are tokenised in one call of the fast tokenizer per batch and kept as token-id
lists (:func:`pair_token_lists`, no padding); the scorer orders a batch's pairs by token length, cuts
sub-batches (:func:`length_buckets`) and pads each only to its own longest pair (:func:`padded_batch`), so
padding stays small. The per-family forward helpers (:func:`cross_encoder_logits`, :func:`embed`,
:func:`monot5_ptrue`) are shared by scoring (:mod:`inpars_ray.models.rankers`) and training
(:mod:`inpars_ray.models.losses`).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray.errors import ConfigError
from inpars_ray.models.families import CROSS_ENCODER, MONOT5
from inpars_ray.runtime.deps import require


# --- pure helpers -----------------------------------------------------------------------------------------
def length_buckets(lengths: np.ndarray, batch_size: int, sort: bool = True) -> Iterator[np.ndarray]:
    """Index arrays of sub-batches of at most ``batch_size``; by ascending length when ``sort``.

    The sort is stable, so equal lengths keep input order and the result does not depend on anything
    but the lengths.
    """
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def as_text_list(values: Sequence[str] | pa.Array | pa.ChunkedArray | np.ndarray) -> list[str]:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def encode_pairs(tokenizer, queries: list[str], docs: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Cross-encoder inputs for all pairs in one fast-tokenizer call: int64 arrays padded to the longest.

    Truncation is ``longest_first`` as in ``sentence_transformers.CrossEncoder``, which in practice cuts the
    document (queries are short).
    """
    enc = tokenizer(queries, docs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Bi-encoder inputs for single texts (queries or documents), padded to the longest."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def encode_monot5(tokenizer, queries: list[str], docs: list[str], max_length: int) -> dict[str, np.ndarray]:
    """monoT5 encoder inputs (prompt built by :func:`inpars_ray.models.monot5.prompt_ids`), padded by ``tokenizer.pad``."""
    from inpars_ray.models.monot5 import prompt_ids

    ids = prompt_ids(tokenizer, queries, docs, max_length)
    enc = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def to_token_lists(enc: dict[str, np.ndarray]) -> dict[str, pa.ListArray]:
    """A padded encoding (any padding side) as one list<int32> array per key but the attention mask: each
    row's real tokens, in order, without padding."""
    mask = enc["attention_mask"].astype(bool)
    offsets = pa.array(np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32))
    return {k: pa.ListArray.from_arrays(offsets, pa.array(v[mask].astype(np.int32)))
            for k, v in enc.items() if k != "attention_mask"}


def pair_token_lists(family: str, tokenizer, queries: list[str], docs: list[str],
                     max_length: int) -> dict[str, pa.ListArray]:
    """Token-id lists of (query, document) pairs as ``family`` reads them (monoT5 prompt or cross-encoder
    pair), truncated to ``max_length``: the input of :meth:`Ranker.score_tokens`."""
    if family == MONOT5:
        return to_token_lists(encode_monot5(tokenizer, queries, docs, max_length))
    if family == CROSS_ENCODER:
        return to_token_lists(encode_pairs(tokenizer, queries, docs, max_length))
    raise ConfigError(f"pairs are tokenised for monot5 and cross-encoder rankers, not {family!r}")


class TokenLists:
    """Token-id list columns (name -> list array) of a batch, flattened once for :func:`padded_batch`."""

    def __init__(self, columns: dict[str, pa.Array | pa.ChunkedArray]) -> None:
        if not columns or "input_ids" not in columns:
            raise ValueError(f"token lists need an input_ids column, got {sorted(columns)}")
        self.values: dict[str, np.ndarray] = {}
        lengths = None
        for name, col in columns.items():
            arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            n = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            if lengths is not None and not np.array_equal(n, lengths):
                raise ValueError(f"token column {name!r} has other lengths than input_ids")
            lengths = n
            self.values[name] = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        assert lengths is not None  # input_ids is among the columns (checked above)
        self.lengths = lengths.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


def padded_batch(tokens: TokenLists, rows: np.ndarray, pad: dict[str, int], left: bool = False) -> dict[str, np.ndarray]:
    """Rows ``rows`` of ``tokens`` padded to their own longest sequence (int64), with the attention mask;
    ``pad`` gives each column's pad value (0 where absent); ``left`` pads on the left."""
    n = tokens.lengths[rows]
    width = max(int(n.max()), 1) if len(rows) else 1
    pos = np.arange(width)[None, :]
    shift = (width - n)[:, None] if left else 0
    index = tokens.starts[rows][:, None] + pos - shift
    valid = (pos >= shift) & (pos - shift < n[:, None])
    out = {}
    for name, values in tokens.values.items():
        picked = values[np.clip(index, 0, max(len(values) - 1, 0))] if len(values) else np.zeros_like(index)
        out[name] = np.where(valid, picked, pad.get(name, 0)).astype(np.int64)
    out["attention_mask"] = valid.astype(np.int64)
    return out


def trim_padding(enc: dict[str, np.ndarray], rows: np.ndarray, torch, device, left: bool = False) -> dict[str, Any]:
    """Rows ``rows`` of a padded encoding, cut to their own longest sequence, as torch tensors.

    Works for right padding (the first ``width`` columns) and left padding (the last ``width``)."""
    mask = enc["attention_mask"][rows]
    width = max(int(mask.sum(1).max()), 1)
    cols = slice(mask.shape[1] - width, None) if left else slice(0, width)
    return {k: torch.from_numpy(np.ascontiguousarray(v[rows][:, cols])).to(device) for k, v in enc.items()}


def mean_pool(hidden, mask):
    """Mean of the token embeddings where ``mask`` is 1 (sentence-transformers' mean pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def pool(hidden, mask, how: str):
    """Sentence embedding from the last hidden state: ``mean`` or ``cls`` (first token)."""
    return mean_pool(hidden, mask) if how == "mean" else hidden[:, 0]


def cross_encoder_logits(model, batch: dict[str, Any]):
    """The single relevance logit of each pair (shape ``(n,)``)."""
    return model(**batch).logits[:, 0]


def embed(model, batch: dict[str, Any], pooling: str = "mean", normalize: bool = True):
    """Pooled (and L2-normalised) embeddings of a batch of texts."""
    torch = require("torch", "bi-encoder scoring")
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   **({"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {})
                   ).last_hidden_state
    out = pool(hidden, batch["attention_mask"], pooling)
    return torch.nn.functional.normalize(out.float(), dim=-1) if normalize else out


def monot5_ptrue(model, batch: dict[str, Any], true_id: int, false_id: int):
    """P(true) at the first decoder step (softmax over the true/false logits)."""
    torch = require("torch", "monoT5 scoring")
    from inpars_ray.models.monot5 import decoder_start_ids

    logits = model(**batch, decoder_input_ids=decoder_start_ids(model, batch["input_ids"].shape[0])).logits
    return torch.softmax(logits[:, 0, [true_id, false_id]].float(), dim=-1)[:, 0]
