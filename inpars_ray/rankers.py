"""Ranker families behind one interface: monoT5, cross-encoders and bi-encoders.

Every consumer of a relevance model (the InPars-v2 filter, training's dev set, the rerank stage, the
consistency filter) scores (query, document) pairs through :class:`Ranker`; which family a checkpoint
belongs to is read from the checkpoint itself (:func:`detect_family`) or given explicitly.

* ``monot5``: a seq2seq model; the score is P(true) at the first decoder step, with the prompt and
  truncation of :mod:`inpars_ray.monot5` (the document is cut, never the ``Relevant:`` suffix).
* ``cross-encoder``: ``AutoModelForSequenceClassification`` with one label (BERT, MiniLM, ELECTRA,
  DeBERTa...); the query and the document are one input pair, the score is the raw logit. A checkpoint
  saved by :func:`save_cross_encoder` loads in ``sentence_transformers.CrossEncoder`` with the same scores.
* ``bi-encoder``: ``AutoModel`` + pooling (mean over tokens by default, as all-MiniLM-L6-v2 uses); the score
  is the cosine of the query and document embeddings. :func:`save_bi_encoder` writes the
  sentence-transformers files, so ``SentenceTransformer(path)`` loads it too.

Speed (issue 11): pairs are tokenised in one call of the fast tokenizer per batch and kept as token-id
lists (:func:`pair_token_lists`, no padding); the scorer orders a batch's pairs by token length, cuts
sub-batches and pads each only to its own longest pair (:func:`padded_batch`), so padding stays small;
scores are scattered back into the input order. On Ray, each scoring actor runs two calls at once, one
tokenising while the other runs the model (:class:`RankerUDF`), so tokenisation overlaps the forward passes
instead of running in series with them. A bi-encoder embeds each distinct query of a batch once (a rerank batch holds the hits of a
few queries).

Layers: pure functions (:func:`detect_family`, :func:`length_buckets`, the per-family ``encode`` /
``forward`` helpers that training reuses), :class:`Ranker` (loads once per actor), :class:`RankerUDF`
and :func:`score_dataset` (Ray Data wiring).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.deps import require
from inpars_ray.errors import ConfigError
from inpars_ray.stageconfig import Field, stage_config

logger = logging.getLogger(__name__)

MONOT5, CROSS_ENCODER, BI_ENCODER = "monot5", "cross-encoder", "bi-encoder"
FAMILIES = (MONOT5, CROSS_ENCODER, BI_ENCODER)
POOLINGS = ("mean", "cls")
#: files sentence-transformers writes for a bi-encoder (SentenceTransformer.save)
ST_MODULES = "modules.json"


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
        if self.max_length < 16:
            raise ConfigError(f"RankerConfig.max_length={self.max_length} is too small (>= 16)")
        if self.batch_size < 1:
            raise ConfigError(f"RankerConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"RankerConfig.torch_threads must be >= 1 or None, got {self.torch_threads}")

    def resolved(self) -> RankerConfig:
        """This config with ``family`` read from the checkpoint when it was None."""
        return self if self.family else dataclasses.replace(self, family=detect_family(self.model))


def local_model(model: str | Path) -> str:
    """A model this process can load: a published run artifact on an object store (``gs://...``) is copied
    once to this node (:func:`inpars_ray.storage.materialize`); local folders and hub ids are unchanged."""
    text = str(model)
    if "://" in text:
        from inpars_ray import storage

        return str(storage.materialize(text))
    return text


# --- family detection -------------------------------------------------------------------------------------
def family_of_config(config: dict[str, Any]) -> str:
    """The family a Hugging Face ``config.json`` describes (its ``architectures``, else its shape)."""
    archs = config.get("architectures") or []
    if config.get("is_encoder_decoder") or any("ConditionalGeneration" in a or "Seq2Seq" in a for a in archs):
        return MONOT5
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return CROSS_ENCODER
    if archs and all(a.endswith("Model") for a in archs):
        return BI_ENCODER
    raise ConfigError(f"cannot tell the ranker family from architectures={archs}; give family explicitly "
                      f"(one of {FAMILIES})")


def detect_family(model: str | Path) -> str:
    """``monot5``, ``cross-encoder`` or ``bi-encoder`` for a local folder or a (cached) Hugging Face id.

    A sentence-transformers bi-encoder folder (``modules.json``) is a bi-encoder; otherwise config.json's
    ``architectures`` decide: ``*ForConditionalGeneration`` (T5) is monoT5, ``*ForSequenceClassification``
    a cross-encoder, a bare encoder (``BertModel``) a bi-encoder.
    """
    if "://" in str(model):  # a published run artifact: read its config where it is
        from inpars_ray import storage

        loc = storage.location(str(model))
        if loc.join(ST_MODULES).is_file():
            return BI_ENCODER
        if not loc.join("config.json").is_file():
            raise ConfigError(f"{loc.uri} holds no config.json: not a Hugging Face checkpoint")
        return family_of_config(loc.join("config.json").read_json())
    folder = Path(model)
    if folder.is_dir():
        if (folder / ST_MODULES).exists():
            return BI_ENCODER
        if not (folder / "config.json").exists():
            raise ConfigError(f"{folder} holds no config.json: not a Hugging Face checkpoint")
        return family_of_config(json.loads((folder / "config.json").read_text()))
    transformers = require("transformers", "reading a checkpoint's config")
    try:
        config = transformers.AutoConfig.from_pretrained(str(model)).to_dict()
    except OSError as exc:
        raise ConfigError(f"cannot read the config of ranker {model!r}: {exc}") from exc
    return family_of_config(config)


# --- pure helpers -----------------------------------------------------------------------------------------
def length_buckets(lengths: np.ndarray, batch_size: int, sort: bool = True) -> Iterator[np.ndarray]:
    """Index arrays of sub-batches of at most ``batch_size``; by ascending length when ``sort``.

    The sort is stable, so equal lengths keep input order and the result does not depend on anything
    but the lengths.
    """
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(lengths))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _as_list(values: Sequence[str] | pa.Array | pa.ChunkedArray | np.ndarray) -> list[str]:
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
    """monoT5 encoder inputs (prompt built by :func:`inpars_ray.monot5.prompt_ids`), padded by ``tokenizer.pad``."""
    from inpars_ray.monot5 import prompt_ids

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


def _trim(enc: dict[str, np.ndarray], rows: np.ndarray, torch, device, left: bool = False) -> dict[str, Any]:
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
    from inpars_ray.monot5 import decoder_start_ids

    logits = model(**batch, decoder_input_ids=decoder_start_ids(model, batch["input_ids"].shape[0])).logits
    return torch.softmax(logits[:, 0, [true_id, false_id]].float(), dim=-1)[:, 0]


# --- loading ----------------------------------------------------------------------------------------------
def load_model(family: str, source: str | Path, training: bool = False):
    """(model, tokenizer) of ``family`` from a folder or Hugging Face id.

    A cross-encoder can start from a bare encoder (all-MiniLM-L6-v2): its one-label head is then new.
    """
    transformers = require("transformers", "loading a ranker")
    source = local_model(source)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    if family == MONOT5:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(source)
    elif family == CROSS_ENCODER:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    elif family == BI_ENCODER:
        model = transformers.AutoModel.from_pretrained(source)
    else:
        raise ConfigError(f"unknown ranker family {family!r}; one of {FAMILIES}")
    if not training:
        model.eval()
    return model, tokenizer


def bi_encoder_pooling(model: str | Path, default: str = "mean") -> str:
    """The pooling a sentence-transformers folder declares (``1_Pooling/config.json``), else ``default``."""
    folder = Path(model)
    modules = folder / ST_MODULES
    if not modules.exists():
        return default
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("Pooling"):
            cfg = json.loads((folder / module["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            raise ConfigError(f"{folder}: pooling {cfg} is not supported (mean or cls)")
    return default


def input_length(max_length: int, folder: str | Path) -> int:
    """Tokens per input: ``max_length``, capped by a sentence-transformers folder's own."""
    return min(max_length, st_max_length(folder) or max_length)


def st_max_length(model: str | Path) -> int | None:
    """The ``max_seq_length`` a sentence-transformers folder was trained with (all-MiniLM-L6-v2: 256)."""
    path = Path(model) / "sentence_bert_config.json"
    return json.loads(path.read_text()).get("max_seq_length") if path.exists() else None


# --- saving -----------------------------------------------------------------------------------------------
def save_cross_encoder(model, tokenizer, path: str | Path, state_dict=None) -> None:
    """Save a cross-encoder so ``CrossEncoder(path)`` loads it and predicts our raw logits.

    sentence-transformers applies a sigmoid to one-label models unless config.json names another
    activation; the identity makes its ``predict`` return exactly :meth:`Ranker.score`'s numbers.
    """
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)


def save_bi_encoder(model, tokenizer, path: str | Path, pooling: str = "mean", max_length: int = 512,
                    state_dict=None) -> None:
    """Save a bi-encoder as Hugging Face files plus the sentence-transformers module files."""
    path = Path(path)
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (path / ST_MODULES).write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                "do_lower_case": False}))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": model.config.hidden_size, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (path / "2_Normalize").mkdir(exist_ok=True)


def save_ranker(family: str, model, tokenizer, path: str | Path, pooling: str = "mean", max_length: int = 512,
                state_dict=None) -> None:
    """Save a trained ranker of any family in the format its loaders expect."""
    if family == CROSS_ENCODER:
        save_cross_encoder(model, tokenizer, path, state_dict)
    elif family == BI_ENCODER:
        save_bi_encoder(model, tokenizer, path, pooling, max_length, state_dict)
    else:
        model.save_pretrained(path, state_dict=state_dict)
        tokenizer.save_pretrained(path)


# --- the scorer -------------------------------------------------------------------------------------------
class Ranker:
    """A loaded ranker: ``score(queries, docs)`` returns one float64 per pair, in input order.

    Build it from a config (loads the checkpoint) or, for a model being trained, with :meth:`from_model`.
    """

    def __init__(self, config: RankerConfig, model=None, tokenizer=None) -> None:
        torch = require("torch", "ranker scoring")
        self.config = config = config.resolved()
        self.family = config.family
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        # embeddings are cached only for a checkpoint loaded here: a model handed in may still be training
        self._cache: collections.OrderedDict[str, np.ndarray] | None = None
        if model is None:
            model, tokenizer = load_model(self.family, config.model)
            model.to(torch.device(config.device))
            if self.family == BI_ENCODER and config.embedding_cache > 0:
                self._cache = collections.OrderedDict()
        self.model, self.tokenizer = model, tokenizer
        self._left = getattr(tokenizer, "padding_side", "right") == "left"
        folder = local_model(config.model) if model is None else config.model
        self.pooling = bi_encoder_pooling(folder, config.pooling) if self.family == BI_ENCODER else None
        self.max_length = input_length(config.max_length, folder)
        self.pad = {"input_ids": tokenizer.pad_token_id or 0,
                    "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0}
        if self.family == MONOT5:
            from inpars_ray.monot5 import true_false_ids

            self.true_false = true_false_ids(tokenizer)  # fail at load time, not on the first batch
        logger.info("%s ranker %s ready on %s", self.family, config.model, config.device)

    @classmethod
    def from_model(cls, model, tokenizer, family: str, max_length: int = 512, batch_size: int = 32,
                   pooling: str = "mean") -> Ranker:
        """A ranker around an in-memory model (training's dev evaluation); the caller sets eval/train mode."""
        config = RankerConfig(model="<in-memory>", family=family, max_length=max_length, batch_size=batch_size,
                              device=str(next(model.parameters()).device), pooling=pooling)
        return cls(config, model=model, tokenizer=tokenizer)

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
            return self.score_tokens(pair_token_lists(self.family, self.tokenizer, _as_list(queries), _as_list(docs),
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

    def embed(self, texts: Sequence[str] | pa.Array) -> np.ndarray:
        """Normalised embeddings (float32, one row per text) of a bi-encoder."""
        torch = require("torch", "bi-encoder scoring")
        if self.family != BI_ENCODER:
            raise ConfigError(f"embed() needs a bi-encoder, this ranker is a {self.family}")
        enc = encode_texts(self.tokenizer, _as_list(texts), self.max_length)
        lengths = enc["attention_mask"].sum(1)
        out = None
        with torch.inference_mode():
            for rows in length_buckets(lengths, self.config.batch_size, self.config.sort_by_length):
                e = embed(self.model, _trim(enc, rows, torch, self.device, self._left), self.pooling).cpu().numpy()
                if out is None:
                    out = np.empty((len(lengths), e.shape[1]), dtype=np.float32)
                out[rows] = e
        return out

    def _embed_distinct(self, texts) -> np.ndarray:
        """One embedding row per input text; each distinct text is embedded once (and, with the cache, once
        per actor: a document in many queries' hits, a query over many pairs)."""
        arr = pa.array(_as_list(texts) if not isinstance(texts, (pa.Array, pa.ChunkedArray)) else texts, pa.string())
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        encoded = arr.dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        idx = encoded.indices.to_numpy(zero_copy_only=False)
        if self._cache is None:
            return self.embed(distinct)[idx]
        todo = [t for t in distinct if t not in self._cache]
        if todo:
            for text, row in zip(todo, self.embed(todo)):
                self._cache[text] = row
            while len(self._cache) > self.config.embedding_cache:
                self._cache.popitem(last=False)  # the oldest first
        rows = []
        for t in distinct:
            row = self._cache.get(t)
            if row is None:  # evicted within this very call (a batch larger than the cache)
                row = self.embed([t])[0]
            else:
                self._cache.move_to_end(t)
            rows.append(row)
        return np.stack(rows)[idx]

    def _score_bi(self, queries, docs) -> np.ndarray:
        # a batch of rerank pairs holds few distinct queries, and a document recurs in many queries' hits
        q_emb, d_emb = self._embed_distinct(queries), self._embed_distinct(docs)
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
                tokens = pair_token_lists(ranker.family, ranker.tokenizer, _as_list(queries), _as_list(docs),
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
