"""Distillation with hard labels beside it (``train.contrastive_weight``): the teacher's margins computed on
embeddings already taken, and the two losses together through gradient caching, against one pass."""
from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")

from inpars_ray import schema as S  # noqa: E402
from inpars_ray.errors import ConfigError  # noqa: E402
from inpars_ray.models.distill import bi_encoder_distill_sum, distill_from_embeddings  # noqa: E402
from inpars_ray.models.losses import (  # noqa: E402
    cached_contrastive_backward,
    contrastive_from_embeddings,
    list_doc_keys,
    list_embeddings,
)
from inpars_ray.stages.train_config import TrainConfig  # noqa: E402
from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder  # noqa: E402

QUERIES = ["coral bleaching", "larval settlement", "aragonite skeleton", "heat", "reef fish"]
DOCS = ["thermal stress bleaching in coral reefs " * 3, "settlement of larvae", "short",
        "heat waves and reef decline across the pacific " * 6, "lithium cathode", "fish counts on reefs"]


def _rows():
    # lists of 3, 2, 3, 2, 3 documents with a teacher's score for each, and one list without negatives
    rows = [{S.QUERY_ID: f"q{i}", S.QUERY: q, S.POS_DOC_ID: f"p{i}", S.POS_TEXT: DOCS[i],
             "neg_doc_ids": [f"n{i}{j}" for j in range(2 - i % 2)],
             "neg_texts": [DOCS[(i + j + 1) % len(DOCS)] for j in range(2 - i % 2)],
             "pos_score": 0.9 - 0.05 * i, "neg_scores": [0.5 - 0.1 * j + 0.03 * i for j in range(2 - i % 2)]}
            for i, q in enumerate(QUERIES)]
    rows.append({S.QUERY_ID: "q9", S.QUERY: "coral", S.POS_DOC_ID: "p9", S.POS_TEXT: DOCS[5],
                 "neg_doc_ids": [], "neg_texts": [], "pos_score": 0.7, "neg_scores": []})
    return rows


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_bi_encoder(tmp_path_factory.mktemp("bi"))


def _load(path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.train(False)
    return model, AutoTokenizer.from_pretrained(path)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_margins_on_embeddings_match_a_by_hand_margin_mse_and_the_per_group_loss(model_path):
    model, tok = _load(model_path)
    rows = _rows()
    with torch.no_grad():
        q, d, pos_at = list_embeddings(model, tok, rows, 64, "cpu")
        on_embeddings = distill_from_embeddings(rows, q, d, pos_at, "margin-mse", 0.05, 0.05, model=model)
        per_group = bi_encoder_distill_sum(model, tok, rows, 64, "cpu", "margin-mse", 0.05, 0.05)
    by_hand = 0.0
    for i, r in enumerate(rows):
        if not r["neg_texts"]:
            continue  # no margin to learn
        docs = d[pos_at[i]:pos_at[i] + 1 + len(r["neg_texts"])]
        cos = torch.nn.functional.cosine_similarity(q[i].unsqueeze(0), docs)
        margins = cos[0] - cos[1:]
        target = torch.tensor([r["pos_score"] - s for s in r["neg_scores"]])
        by_hand += float(((margins - target) ** 2).mean())
    assert on_embeddings.item() == pytest.approx(by_hand, rel=1e-5)
    assert on_embeddings.item() == pytest.approx(per_group.item(), rel=1e-4)


@pytest.mark.parametrize("loss", ["margin-mse", "kl"])
@pytest.mark.parametrize("max_negatives", [None, 1])
def test_the_teachers_loss_on_embeddings_is_the_per_group_one(model_path, loss, max_negatives):
    model, tok = _load(model_path)
    rows = _rows()
    with torch.no_grad():
        q, d, pos_at = list_embeddings(model, tok, rows, 64, "cpu", max_negatives)
        on_embeddings = distill_from_embeddings(rows, q, d, pos_at, loss, 0.05, 0.1, max_negatives, model)
        per_group = bi_encoder_distill_sum(model, tok, rows, 64, "cpu", loss, 0.05, 0.1,
                                           max_negatives=max_negatives)
    assert on_embeddings.item() == pytest.approx(per_group.item(), rel=1e-4) and per_group.item() > 0


def test_a_list_with_fewer_teacher_scores_than_negatives_is_named(model_path):
    model, tok = _load(model_path)
    rows = _rows()
    rows[2]["neg_scores"] = rows[2]["neg_scores"][:1]
    q, d, pos_at = list_embeddings(model, tok, rows, 64, "cpu")
    with pytest.raises(ConfigError, match="'q2': 2 negatives but 1 teacher scores"):
        distill_from_embeddings(rows, q, d, pos_at, "margin-mse", 0.05, 0.05, model=model)


def test_hard_labels_beside_the_teacher_through_gradient_caching_equal_one_pass(model_path):
    rows = _rows()
    weight = 0.3
    model, tok = _load(model_path)
    q, d, pos_at = list_embeddings(model, tok, rows, 64, "cpu")
    distill = distill_from_embeddings(rows, q, d, pos_at, "margin-mse", 0.05, 0.05, model=model)
    hard = contrastive_from_embeddings(q, d, pos_at, 0.05, list_doc_keys(rows, None, "cpu"))
    full = distill + weight * hard
    (full / len(rows)).backward()
    expected = _grads(model)

    model.zero_grad(set_to_none=True)
    extra = functools.partial(_margins, model)
    cached = cached_contrastive_backward(model, tok, rows, 2, 64, "cpu", 1.0 / len(rows), weight=weight,
                                         extra=extra)
    assert cached.item() == pytest.approx(full.item(), rel=1e-5)
    got = _grads(model)
    assert got.keys() == expected.keys() and got
    for name in got:
        atol = 1e-5 * float(expected[name].abs().max()) + 1e-7
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=atol, msg=name)
    # the teacher's term moved the gradient: hard labels alone give another one
    model.zero_grad(set_to_none=True)
    cached_contrastive_backward(model, tok, rows, 2, 64, "cpu", weight / len(rows))
    alone = _grads(model)
    assert any(not torch.allclose(alone[n], expected[n], rtol=1e-3, atol=1e-6) for n in expected)


def _margins(model, rows, q, d, pos_at):
    return distill_from_embeddings(rows, q, d, pos_at, "margin-mse", 0.05, 0.05, model=model)


def test_contrastive_weight_is_refused_where_there_is_no_distillation_to_add_it_to(model_path):
    with pytest.raises(ConfigError, match="contrastive_weight"):  # when the config is read, not at training
        TrainConfig(base_model="x", contrastive_weight=0.5)
    with pytest.raises(ConfigError, match="contrastive_weight"):
        TrainConfig(base_model=str(model_path), family="bi-encoder", loss="contrastive",
                    contrastive_weight=0.5).resolved()
    with pytest.raises(ConfigError, match="contrastive_weight"):
        TrainConfig(base_model=str(model_path), family="cross-encoder", loss="margin-mse",
                    contrastive_weight=0.5).resolved()
    config = TrainConfig(base_model=str(model_path), family="bi-encoder", loss="margin-mse",
                         contrastive_weight=0.5).resolved()
    assert config.in_batch_negatives and not TrainConfig(base_model="x", loss="margin-mse").in_batch_negatives


def test_the_micro_batch_loss_adds_the_weighted_hard_labels_to_the_teacher_margins(model_path):
    from inpars_ray.stages.train_loop import micro_loss

    rows = _rows()
    model, tok = _load(model_path)
    config = TrainConfig(base_model=str(model_path), family="bi-encoder", loss="margin-mse", max_length=64,
                         contrastive_weight=0.3).resolved()
    with torch.no_grad():
        loss, units, ids = micro_loss(config, model, tok, rows, "cpu", False)
        q, d, pos_at = list_embeddings(model, tok, rows, 64, "cpu")
        hard = contrastive_from_embeddings(q, d, pos_at, 0.05, list_doc_keys(rows, None, "cpu"))
        distill = bi_encoder_distill_sum(model, tok, rows, 64, "cpu", "margin-mse", 0.05, 0.05)
    assert units == len(rows) == len(set(ids))
    assert loss.item() == pytest.approx(distill.item() + 0.3 * hard.item(), rel=1e-4)
