"""Training examples and losses of the ranker families (used by the train stage's workers).

* ``monot5`` (InPars-v1 recipe, arXiv 2202.05144 §4): input ``Query: {q} Document:
  {d} Relevant:``, target ``true`` for the positive and ``false`` for the negative of each triple
  (:func:`expand_triples`); the loss covers only the target tokens (:func:`loss_sum`), and the document
  (never the ``Relevant:`` suffix) is truncated — the encoder input is built by :mod:`inpars_ray.models.monot5`.
* ``cross-encoder`` with ``listwise`` (InPars-light, arXiv 2301.02998): softmax cross-entropy over one
  positive and its BM25 negatives, one list per (query, positive); or ``pointwise``: binary cross-entropy
  on the logit, positive 1, negative 0.
* ``bi-encoder`` with ``contrastive`` (GPL / Promptagator style, as sentence-transformers'
  MultipleNegativesRankingLoss): softmax cross-entropy of a query's cosine to its positive against its BM25
  negatives and every other document of the batch (never a copy of its own positive: another query of the
  same document, or that document mined as another query's negative), scaled by ``1 / temperature``: of
  the whole batch, on every worker, through gradient caching (:func:`cached_contrastive_backward`,
  ``train.in_batch: batch``, the default), or of the micro-batch only (``in_batch: micro-batch``).

Listwise and contrastive losses take a query's triples together, as one grouped row
(:func:`group_triples`). Each loss is a *sum* over examples; the training loop divides by the global count.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.models.monot5 import TARGET_FALSE, TARGET_TRUE, prompt_ids
from inpars_ray.runtime.deps import require

#: columns of a grouped training row: one (query, positive) with all its negatives
NEG_DOC_IDS, NEG_TEXTS = "neg_doc_ids", "neg_texts"


def triple_id(query_id: str, pos_doc_id: str, neg_doc_id: str) -> str:
    """A triple's identity (a query may have several triples)."""
    return f"{query_id}\t{pos_doc_id}\t{neg_doc_id}"


def expand_triples(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str], list[str]]:
    """Two examples per triple: (query, positive, ``true``) and (query, negative, ``false``), with ids."""
    queries, docs, targets, ids = [], [], [], []
    for r in rows:
        tid = triple_id(r[S.QUERY_ID], r[S.POS_DOC_ID], r[S.NEG_DOC_ID])
        queries += [r[S.QUERY], r[S.QUERY]]
        docs += [r[S.POS_TEXT], r[S.NEG_TEXT]]
        targets += [TARGET_TRUE, TARGET_FALSE]
        ids += [tid + "\t+", tid + "\t-"]
    return queries, docs, targets, ids


def encode_examples(tokenizer, queries: list[str], docs: list[str], targets: list[str], max_length: int):
    """Encoder inputs and labels (target ids + EOS; padding set to -100 so it carries no loss)."""
    torch = require("torch", "monoT5 training")
    enc_ids = prompt_ids(tokenizer, queries, docs, max_length)
    lab_ids = tokenizer(targets, add_special_tokens=True)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def pad_to(rows: list[list[int]], value: int):
        out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    input_ids = pad_to(enc_ids, pad)
    return {"input_ids": input_ids, "attention_mask": (pad_to(enc_ids, -1) != -1).long(),
            "labels": pad_to(lab_ids, -100)}


def loss_sum(model, batch: dict[str, Any]):
    """Sum over examples of each example's mean cross-entropy on its target tokens."""
    torch = require("torch", "monoT5 training")
    labels = batch["labels"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
    tok = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                            reduction="none")
    counts = (labels != -100).sum(1).clamp(min=1)
    return (tok.sum(1) / counts).sum()


# --- listwise / contrastive: a query's triples as one list ----------------------------------------------
def group_id(query_id: str, pos_doc_id: str) -> str:
    """A list's identity: one (query, positive)."""
    return f"{query_id}\t{pos_doc_id}"


def group_triples(rows: pa.Table) -> pa.Table:
    """The triples of one (query, positive) as one row with lists of negatives, by ascending BM25 rank.

    A Ray Data ``map_groups`` function; a negative mined twice appears once.
    """
    from inpars_ray.models.distill import NEG_SCORES, POS_SCORE

    rows = rows.sort_by([(S.NEG_RANK, "ascending"), (S.NEG_DOC_ID, "ascending")])
    scored = POS_SCORE in rows.column_names  # the teacher stage's triples: its scores travel with the list
    neg_scores = rows.column("neg_score").to_pylist() if scored else [None] * rows.num_rows
    seen, ids, texts, scores = set(), [], [], []
    for did, text, score in zip(rows.column(S.NEG_DOC_ID).to_pylist(), rows.column(S.NEG_TEXT).to_pylist(),
                                neg_scores):
        if did not in seen:
            seen.add(did)
            ids.append(did)
            texts.append(text)
            scores.append(score)
    first = rows.slice(0, 1)
    columns = {S.QUERY_ID: first.column(S.QUERY_ID), S.QUERY: first.column(S.QUERY),
               S.POS_DOC_ID: first.column(S.POS_DOC_ID), S.POS_TEXT: first.column(S.POS_TEXT),
               NEG_DOC_IDS: pa.array([ids], pa.list_(pa.string())),
               NEG_TEXTS: pa.array([texts], pa.list_(pa.string()))}
    if scored:
        columns[POS_SCORE] = first.column(POS_SCORE)
        columns[NEG_SCORES] = pa.array([scores], pa.list_(pa.float64()))
    return pa.table(columns)


def unit_id(row: dict[str, Any], grouped: bool) -> str:
    """The id a checkpoint records for a consumed training row (a triple, or a list)."""
    if grouped:
        return group_id(row[S.QUERY_ID], row[S.POS_DOC_ID])
    return triple_id(row[S.QUERY_ID], row[S.POS_DOC_ID], row[S.NEG_DOC_ID])


def _negatives(row: dict[str, Any], column: str, max_negatives: int | None) -> list:
    """A grouped row's negatives (``column``: their texts or ids), the first ``max_negatives`` of them."""
    return row[column][:max_negatives] if max_negatives else row[column]


def _lists(rows: list[dict[str, Any]], max_negatives: int | None):
    """(queries, [positive, negatives...] texts per list) of grouped rows."""
    queries, docs = [], []
    for r in rows:
        queries.append(r[S.QUERY])
        docs.append([r[S.POS_TEXT], *_negatives(r, NEG_TEXTS, max_negatives)])
    return queries, docs


def _tensors(enc: dict, device) -> dict:
    import torch

    return {k: torch.from_numpy(v).to(device) for k, v in enc.items()}


def listwise_loss_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device,
                      max_negatives: int | None = None):
    """InPars-light's loss, summed over lists: -log softmax(positive) among (positive, negatives) logits.

    Lists of different lengths are padded with -inf logits, which take no probability.
    """
    import torch

    from inpars_ray.models.encoding import cross_encoder_logits, encode_pairs

    queries, docs = _lists(rows, max_negatives)
    sizes = [len(d) for d in docs]
    flat_q = [q for q, n in zip(queries, sizes) for _ in range(n)]
    flat_d = [d for ds in docs for d in ds]
    logits = cross_encoder_logits(model, _tensors(encode_pairs(tokenizer, flat_q, flat_d, max_length), device)).float()
    table = torch.full((len(sizes), max(sizes)), float("-inf"), device=logits.device)
    rows_idx = torch.repeat_interleave(torch.arange(len(sizes), device=logits.device),
                                       torch.tensor(sizes, device=logits.device))
    cols_idx = torch.cat([torch.arange(n, device=logits.device) for n in sizes])
    table = table.index_put((rows_idx, cols_idx), logits)
    return -torch.log_softmax(table, dim=1)[:, 0].sum()


def pointwise_loss_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device):
    """Binary cross-entropy on the cross-encoder logit, summed over examples (positive 1, negative 0)."""
    import torch

    from inpars_ray.models.encoding import cross_encoder_logits, encode_pairs

    queries = [r[S.QUERY] for r in rows for _ in (0, 1)]
    docs = [t for r in rows for t in (r[S.POS_TEXT], r[S.NEG_TEXT])]
    labels = torch.tensor([1.0, 0.0] * len(rows), device=device)
    logits = cross_encoder_logits(model, _tensors(encode_pairs(tokenizer, queries, docs, max_length), device))
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum")


def list_embeddings(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device,
                    max_negatives: int | None = None, pooling: str = "mean", document_encoder=None,
                    doc_cache: dict | None = None):
    """(query embeddings, document embeddings, index of each query's positive among the documents) of
    grouped rows: every list's positive and negatives, one after the other."""
    import torch

    from inpars_ray.models.distill import _embed_documents
    from inpars_ray.models.encoding import embed, encode_texts

    queries, docs = _lists(rows, max_negatives)
    flat = [d for ds in docs for d in ds]
    pos_at = torch.tensor([0] + [len(d) for d in docs[:-1]], device=device).cumsum(0)
    q = embed(model, _tensors(encode_texts(tokenizer, queries, max_length), device), pooling)
    d = _embed_documents(flat, model, document_encoder, tokenizer, max_length, device, pooling, doc_cache)
    return q, d, pos_at


def list_doc_keys(rows: list[dict[str, Any]], max_negatives: int | None, device):
    """An int64 key per document of grouped rows, in :func:`list_embeddings`' order (each list's positive,
    then its negatives): equal documents get equal keys, wherever they sit in the batch or on which worker."""
    import hashlib

    import torch

    ids = [d for r in rows for d in (r[S.POS_DOC_ID], *_negatives(r, NEG_DOC_IDS, max_negatives))]
    keys = [int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little", signed=True)
            for d in ids]
    return torch.tensor(keys, dtype=torch.int64, device=device)


def contrastive_from_embeddings(q, d, pos_at, temperature: float, doc_keys=None):
    """Softmax cross-entropy of each query's cosine to its positive against every document of ``d``
    (its own negatives and every other list's documents), over ``1 / temperature``; summed.

    With ``doc_keys`` (:func:`list_doc_keys` of the rows behind ``d``), the other copies of a query's
    positive are left out of its negatives: another query of the same document (several queries per
    document), or that document mined as another query's negative, is not a negative of this one."""
    import torch

    logits = q @ d.T / temperature
    if doc_keys is not None:
        copies = doc_keys.unsqueeze(0) == doc_keys[pos_at].unsqueeze(1)
        copies[torch.arange(len(pos_at), device=copies.device), pos_at] = False
        logits = logits.masked_fill(copies, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, pos_at, reduction="sum")


def contrastive_loss_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device,
                         max_negatives: int | None = None, temperature: float = 0.05, pooling: str = "mean",
                         document_encoder=None, doc_cache: dict | None = None):
    """Bi-encoder loss summed over lists: each query's positive against its own BM25 negatives and every
    other document of the micro-batch (in-batch negatives) but its positive's copies, softmax over
    cosines / ``temperature``. With ``document_encoder`` the documents are embedded by that frozen model
    (query-tower-only training)."""
    q, d, pos_at = list_embeddings(model, tokenizer, rows, max_length, device, max_negatives, pooling,
                                   document_encoder, doc_cache)
    return contrastive_from_embeddings(q, d, pos_at, temperature, list_doc_keys(rows, max_negatives, d.device))


class _RandomState:
    """The torch random state of ``device`` (CPU, and the GPU's where training runs on one), to replay
    a forward pass with the same dropout. An XLA device's generator is not saved: on TPU the replayed pass
    draws fresh dropout masks, so its gradient is that of a slightly different pass (exact with dropout 0)."""

    def __init__(self, device) -> None:
        import torch

        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    def restore(self) -> None:
        import torch

        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)


def _single_process_gather(tensor):
    return tensor, 0


def _single_process_sum(tensor):
    return tensor


def cached_contrastive_backward(model, tokenizer, rows: list[dict[str, Any]], micro: int, max_length: int,
                                device, scale: float, *, max_negatives: int | None = None,
                                temperature: float = 0.05, pooling: str = "mean", document_encoder=None,
                                doc_cache: dict | None = None, gather_rows=_single_process_gather,
                                sum_=_single_process_sum, autocast=None, weight: float = 1.0, extra=None):
    """The contrastive loss with every document of the *whole* batch as a negative, on every worker's
    share of it, in the memory of one micro-batch: gradient caching (Gao et al., arXiv 2101.06983), the
    method of sentence-transformers' CachedMultipleNegativesRankingLoss.

    1. every micro-batch of ``rows`` is embedded without a graph (its random state kept);
    2. the documents of all workers are gathered (``gather_rows``: this worker's rows -> every worker's
       rows and where this worker's begin), with their documents' keys; each of this worker's queries is
       scored against all of them but its positive's other copies, and the loss (times ``scale``) is
       differentiated with respect to the embeddings only; the document gradients are summed over workers
       (``sum_``), since every worker's queries see every document;
    3. each micro-batch is embedded again with its graph and the same dropout, and the cached embedding
       gradients are back-propagated through it: the parameter gradients are those of the full-batch loss.

    ``weight`` multiplies the contrastive loss; ``extra(rows, q, d, pos_at)``, when given, adds a loss of this
    worker's own lists on their embeddings (a teacher's margins: :func:`inpars_ray.models.distill.
    distill_from_embeddings`), taken in step 2 with the contrastive one, so both reach the model in one replay.

    Accumulates into the parameters' ``.grad`` and returns this worker's summed loss (detached). Every
    worker calls it at every step, with rows or without (a worker that ran dry still joins the gather).
    The library's loss takes a ``SentenceTransformer`` and lists as columns of equal length (anchor,
    positive, negative_1..n): the engine's lists have as many negatives as mining found, and query-tower
    training embeds documents with a frozen second model, so the caching is written here.
    """
    import contextlib

    import torch

    autocast = autocast or contextlib.nullcontext
    chunks = [rows[i:i + micro] for i in range(0, len(rows), micro)]
    states, qs, ds, pos = [], [], [], []
    offset = 0
    for chunk in chunks:
        states.append(_RandomState(device))
        with torch.no_grad(), autocast():
            q, d, pos_at = list_embeddings(model, tokenizer, chunk, max_length, device, max_negatives, pooling,
                                           document_encoder, doc_cache)
        qs.append(q.float())
        ds.append(d.float())
        pos.append(pos_at + offset)
        offset += d.shape[0]
    dim = _embedding_dim(model)
    local_q = (torch.cat(qs) if qs else torch.zeros((0, dim), device=device)).requires_grad_(True)
    local_d = torch.cat(ds) if ds else torch.zeros((0, dim), device=device)
    all_d, start = gather_rows(local_d.contiguous())
    all_d = all_d.detach().requires_grad_(True)
    all_keys, _ = gather_rows(list_doc_keys(rows, max_negatives, local_d.device))
    local_pos = torch.cat(pos) if pos else torch.zeros((0,), dtype=torch.long, device=device)
    loss = (weight * contrastive_from_embeddings(local_q, all_d, local_pos + start, temperature, all_keys)
            if local_q.shape[0] else (all_d.sum() * 0.0))
    if extra is not None and local_q.shape[0]:
        loss = loss + extra(rows, local_q, all_d[start:start + local_d.shape[0]], local_pos)
    (loss * scale).backward()
    d_grad = sum_(all_d.grad.clone())[start:start + local_d.shape[0]]
    q_grad = local_q.grad
    q_at = d_at = 0
    for chunk, state in zip(chunks, states):
        state.restore()
        with autocast():
            q, d, _ = list_embeddings(model, tokenizer, chunk, max_length, device, max_negatives, pooling,
                                      document_encoder, doc_cache)
        surrogate = (q.float() * q_grad[q_at:q_at + q.shape[0]]).sum()
        if d.requires_grad:  # a frozen document tower has no gradient to pass on
            surrogate = surrogate + (d.float() * d_grad[d_at:d_at + d.shape[0]]).sum()
        surrogate.backward()
        q_at, d_at = q_at + q.shape[0], d_at + d.shape[0]
    return loss.detach()


def _embedding_dim(model) -> int:
    """The width of the model's pooled embedding (its hidden size: mean and cls pooling keep it)."""
    return int(model.config.hidden_size)
