"""Distillation losses: the student learns a teacher's scores (GPL, arXiv 2112.07577), not hard labels.

A training list is one (query, positive, negatives...) with the teacher's score of every pair
(:mod:`inpars_ray.stages.teacher`). Two losses, for every family:

* ``margin-mse`` (Hofstätter et al., arXiv 2010.02666; GPL's loss): the squared error between the
  student's margins ``s(q, pos) - s(q, neg_i)`` and the teacher's, averaged over a list's negatives;
* ``kl``: the KL divergence from the teacher's softmax over the list (its scores / ``teacher_temperature``)
  to the student's (its scores / ``temperature``).

The student's score is the family's own: the cosine of the two embeddings (bi-encoder), the logit
(cross-encoder), or monoT5's log-odds ``logit(true) - logit(false)`` at the first decoder step (the
quantity whose softmax is the P(true) that reranking uses).

For bi-encoders the losses are sentence-transformers' own (``MarginMSELoss``, ``DistillKLDivLoss``,
through their ``compute_loss_from_embeddings``), fed with the engine's embeddings: the train loop keeps
its own model and tokenisation (monoT5 and cross-encoders share it) and only the loss is the library's.
sentence-transformers' cross-encoder losses take a ``CrossEncoder`` and raw texts (they tokenise inside)
and it has none for seq2seq models; for those families the margin and KL are the two lines below, on the
logits the loop already computes.

With ``document_encoder`` (query-tower-only training) the documents are embedded by the frozen start model
under ``no_grad``, each distinct text once per worker (``doc_cache``): the corpus side never changes.
Every function returns a *sum* over lists; the train loop divides by the global count.
"""
from __future__ import annotations

from typing import Any

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.runtime.deps import require

DISTILL_LOSSES = ("margin-mse", "kl")
#: columns of a grouped training row that carry the teacher's scores (:func:`inpars_ray.models.losses.group_triples`)
POS_SCORE, NEG_SCORES = "pos_score", "neg_scores"


def scored_lists(rows: list[dict[str, Any]], max_negatives: int | None) -> list[list[dict[str, Any]]]:
    """The rows cut to ``max_negatives`` and split into groups of equal list length (the library losses
    take a (batch, negatives) label matrix)."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_list_negatives(r, max_negatives), []).append(r)
    return [groups[n] for n in sorted(groups) if n > 0]


def _labels(rows: list[dict[str, Any]], n: int, device):
    import torch

    return torch.tensor([[r[POS_SCORE], *r[NEG_SCORES][:n]] for r in rows], dtype=torch.float32, device=device)


def _from_scores(student, teacher, loss: str, temperature: float, teacher_temperature: float):
    """Summed over lists: margin-MSE or KL of a (lists, 1 + negatives) student score matrix."""
    import torch

    if loss == "margin-mse":
        margins = student[:, :1] - student[:, 1:]
        target = teacher[:, :1] - teacher[:, 1:]
        return ((margins - target) ** 2).mean(1).sum()
    log_p = torch.log_softmax(student / temperature, dim=1)
    q = torch.softmax(teacher / teacher_temperature, dim=1)
    return torch.nn.functional.kl_div(log_p, q, reduction="sum")


def _library_loss(loss: str, model, temperature: float, teacher_temperature: float):
    st_losses = require("sentence_transformers.sentence_transformer.losses", "bi-encoder distillation")
    util = require("sentence_transformers.util", "bi-encoder distillation")
    if loss == "margin-mse":
        return st_losses.MarginMSELoss(model, similarity_fct=util.pairwise_cos_sim)
    return st_losses.DistillKLDivLoss(model, similarity_fct=util.pairwise_cos_sim, student_temperature=temperature,
                                      teacher_temperature=teacher_temperature)


def _embed_documents(texts: list[str], model, document_encoder, tokenizer, max_length: int, device, pooling: str,
                     doc_cache: dict[str, Any] | None):
    """Document embeddings: by the model being trained, or by the frozen document tower (each text once)."""
    import torch

    from inpars_ray.models.encoding import embed, encode_texts
    from inpars_ray.models.losses import _tensors

    if document_encoder is None:
        return embed(model, _tensors(encode_texts(tokenizer, texts, max_length), device), pooling)
    cache = doc_cache if doc_cache is not None else {}
    todo = list(dict.fromkeys(t for t in texts if t not in cache))
    if todo:
        with torch.no_grad():
            new = embed(document_encoder, _tensors(encode_texts(tokenizer, todo, max_length), device), pooling)
        cache.update(zip(todo, new.detach()))
    return torch.stack([cache[t] for t in texts])


def bi_encoder_distill_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device, loss: str,
                           temperature: float, teacher_temperature: float, pooling: str = "mean",
                           max_negatives: int | None = None, document_encoder=None,
                           doc_cache: dict[str, Any] | None = None):
    """sentence-transformers' MarginMSELoss / DistillKLDivLoss on cosine scores, summed over lists."""
    from inpars_ray.models.encoding import embed, encode_texts
    from inpars_ray.models.losses import _tensors

    library = _library_loss(loss, model, temperature, teacher_temperature)
    total = None
    for group in scored_lists(rows, max_negatives):
        n = _list_negatives(group[0], max_negatives)
        q = embed(model, _tensors(encode_texts(tokenizer, [r[S.QUERY] for r in group], max_length), device), pooling)
        flat = [t for r in group for t in (r[S.POS_TEXT], *r["neg_texts"][:n])]
        d = _embed_documents(flat, model, document_encoder, tokenizer, max_length, device, pooling, doc_cache)
        part = _group_loss(library, group, q, d.view(len(group), n + 1, -1), n, device)
        total = part if total is None else total + part
    return total if total is not None else _zero(model)


def _list_negatives(row: dict[str, Any], max_negatives: int | None) -> int:
    """How many of a list's negatives train (its texts, cut to ``max_negatives``), each with a teacher score."""
    if row.get(NEG_SCORES) is None or row.get(POS_SCORE) is None:
        raise ConfigError("a distillation loss needs the teacher's scores: set inpars.teacher (or train on "
                          "the teacher stage's triples)")
    n = len(row["neg_texts"][:max_negatives] if max_negatives else row["neg_texts"])
    if len(row[NEG_SCORES][:n]) != n:
        raise ConfigError(f"list {row.get(S.QUERY_ID)!r}: {n} negatives but {len(row[NEG_SCORES])} teacher scores")
    return n


def _group_loss(library, group: list[dict[str, Any]], q, d, n: int, device):
    """The library loss of lists of equal length, summed: ``q`` (lists, dim), ``d`` (lists, 1 + n, dim)."""
    columns = [q] + [d[:, j] for j in range(n + 1)]
    return library.compute_loss_from_embeddings(columns, _labels(group, n, device)) * len(group)


def distill_from_embeddings(rows: list[dict[str, Any]], q, d, pos_at, loss: str, temperature: float,
                            teacher_temperature: float, max_negatives: int | None = None, model=None):
    """:func:`bi_encoder_distill_sum` on embeddings already taken: ``q``, ``d`` and ``pos_at`` as
    :func:`inpars_ray.models.losses.list_embeddings` returns them for ``rows`` (each list's positive, then its
    negatives, one list after the other). Summed over lists; lists without negatives add nothing."""
    import torch

    library = _library_loss(loss, model, temperature, teacher_temperature)
    by_length: dict[int, list[int]] = {}  # positions of the lists with n negatives, for lists with any
    for i, r in enumerate(rows):
        if n := _list_negatives(r, max_negatives):
            by_length.setdefault(n, []).append(i)
    total = q.sum() * 0.0 + d.sum() * 0.0
    for n, positions in sorted(by_length.items()):
        lists = torch.tensor(positions, device=pos_at.device)
        docs = d[pos_at[lists].unsqueeze(1) + torch.arange(n + 1, device=pos_at.device)]
        total = total + _group_loss(library, [rows[i] for i in positions], q[lists], docs, n, d.device)
    return total


def _zero(model):
    return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)


def _pairwise_distill_sum(model, rows: list[dict[str, Any]], score_pairs, loss: str, temperature: float,
                          teacher_temperature: float, max_negatives: int | None, device):
    """Margin-MSE or KL, summed over lists, for a family that scores (query, document) pairs jointly:
    ``score_pairs(queries, docs)`` returns one score per pair, with gradients."""
    total = None
    for group in scored_lists(rows, max_negatives):
        n = len(group[0][NEG_SCORES][:max_negatives] if max_negatives else group[0][NEG_SCORES])
        queries = [r[S.QUERY] for r in group for _ in range(n + 1)]
        docs = [t for r in group for t in (r[S.POS_TEXT], *r["neg_texts"][:n])]
        scores = score_pairs(queries, docs).float().view(len(group), n + 1)
        part = _from_scores(scores, _labels(group, n, device), loss, temperature, teacher_temperature)
        total = part if total is None else total + part
    return total if total is not None else _zero(model)


def cross_encoder_distill_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device, loss: str,
                              temperature: float, teacher_temperature: float, max_negatives: int | None = None):
    """Margin-MSE or KL on the cross-encoder's logits, summed over lists."""
    from inpars_ray.models.encoding import cross_encoder_logits, encode_pairs
    from inpars_ray.models.losses import _tensors

    def logits(queries, docs):
        return cross_encoder_logits(model, _tensors(encode_pairs(tokenizer, queries, docs, max_length), device))

    return _pairwise_distill_sum(model, rows, logits, loss, temperature, teacher_temperature, max_negatives, device)


def monot5_log_odds(model, tokenizer, queries: list[str], docs: list[str], max_length: int, device):
    """monoT5's ``logit(true) - logit(false)`` at the first decoder step, with gradients."""
    import torch

    from inpars_ray.models.monot5 import decoder_start_ids, prompt_ids, true_false_ids

    ids = prompt_ids(tokenizer, queries, docs, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, r in enumerate(ids):
        input_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    true_id, false_id = true_false_ids(tokenizer)
    input_ids, mask = input_ids.to(device), mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=mask,
                   decoder_input_ids=decoder_start_ids(model, len(ids)).to(device)).logits[:, 0].float()
    return logits[:, true_id] - logits[:, false_id]


def monot5_distill_sum(model, tokenizer, rows: list[dict[str, Any]], max_length: int, device, loss: str,
                       temperature: float, teacher_temperature: float, max_negatives: int | None = None):
    """Margin-MSE or KL on monoT5's true/false log-odds, summed over lists."""
    def log_odds(queries, docs):
        return monot5_log_odds(model, tokenizer, queries, docs, max_length, device)

    return _pairwise_distill_sum(model, rows, log_odds, loss, temperature, teacher_temperature, max_negatives, device)
