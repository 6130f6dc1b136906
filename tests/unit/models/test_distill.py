"""Distillation losses: they equal a hand computation, push the student toward the teacher's margins, and
sentence-transformers' losses are the ones used for bi-encoders."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from inpars_ray import schema as S  # noqa: E402
from inpars_ray.models import distill  # noqa: E402
from inpars_ray.models.families import load_model  # noqa: E402


@pytest.fixture(scope="module")
def bi(tmp_path_factory):
    from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder as build_tiny_bert

    path = build_tiny_bert(tmp_path_factory.mktemp("bert") / "bi")
    return load_model("bi-encoder", path, training=True)


def _rows(n_neg=2):
    return [{S.QUERY: f"query {i}", S.POS_TEXT: f"good document {i}", "neg_texts": [f"bad {i} {j}" for j in range(n_neg)],
             distill.POS_SCORE: 0.9, distill.NEG_SCORES: [0.1 * (j + 1) for j in range(n_neg)]} for i in range(3)]


def _student_scores(model, tok, rows, n):
    from inpars_ray.models.encoding import embed, encode_texts
    from inpars_ray.models.losses import _tensors

    q = embed(model, _tensors(encode_texts(tok, [r[S.QUERY] for r in rows], 64), "cpu"))
    out = []
    for i, r in enumerate(rows):
        d = embed(model, _tensors(encode_texts(tok, [r[S.POS_TEXT], *r["neg_texts"][:n]], 64), "cpu"))
        out.append(d @ q[i])
    return torch.stack(out)


@pytest.mark.parametrize("loss", ["margin-mse", "kl"])
def test_bi_encoder_loss_equals_a_hand_computation(bi, loss):
    model, tok = bi
    model.eval()
    rows = _rows()
    got = distill.bi_encoder_distill_sum(model, tok, rows, 64, "cpu", loss, 0.05, 0.1)
    s = _student_scores(model, tok, rows, 2)
    t = torch.tensor([[r[distill.POS_SCORE], *r[distill.NEG_SCORES]] for r in rows])
    if loss == "margin-mse":
        want = (((s[:, :1] - s[:, 1:]) - (t[:, :1] - t[:, 1:])) ** 2).mean(1).sum()
    else:  # sentence-transformers scales its KL by the student temperature squared (Hinton et al.)
        want = torch.nn.functional.kl_div(torch.log_softmax(s / 0.05, 1), torch.softmax(t / 0.1, 1),
                                          reduction="sum") * 0.05 ** 2
    assert got.item() == pytest.approx(want.item(), rel=1e-4, abs=1e-7)


def test_a_frozen_document_tower_gets_no_gradient_and_embeds_each_text_once(bi, tmp_path):
    from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder as build_tiny_bert

    model, tok = bi
    docs, _ = load_model("bi-encoder", build_tiny_bert(tmp_path / "docs", seed=1))
    docs.requires_grad_(False)
    cache: dict = {}
    rows = _rows(1) + _rows(1)  # every text twice
    loss = distill.bi_encoder_distill_sum(model, tok, rows, 64, "cpu", "margin-mse", 0.05, 0.05,
                                          document_encoder=docs, doc_cache=cache)
    loss.backward()
    assert len(cache) == 6  # 3 positives + 3 negatives, once each
    assert all(p.grad is None for p in docs.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_a_few_steps_move_the_student_toward_the_teacher_margins(bi):
    model, tok = bi
    model.train()
    rows = _rows(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = distill.bi_encoder_distill_sum(model, tok, rows, 64, "cpu", "margin-mse", 0.05, 0.05)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_cross_encoder_and_monot5_losses_are_finite_and_differentiable(tmp_path):
    from inpars_ray.testing.tiny_bert import build_tiny_cross_encoder
    from inpars_ray.testing.tiny_t5 import build_tiny_monot5

    ce, ce_tok = load_model("cross-encoder", build_tiny_cross_encoder(tmp_path / "ce"), training=True)
    loss = distill.cross_encoder_distill_sum(ce, ce_tok, _rows(), 64, "cpu", "margin-mse", 1.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss)
    t5, t5_tok = load_model("monot5", build_tiny_monot5(tmp_path / "t5"), training=True)
    for name in ("margin-mse", "kl"):
        loss = distill.monot5_distill_sum(t5, t5_tok, _rows(), 64, "cpu", name, 1.0, 1.0)
        loss.backward()
        assert torch.isfinite(loss) and loss.item() >= 0


def test_rows_without_teacher_scores_are_refused():
    rows = _rows()
    rows[0][distill.POS_SCORE] = None
    with pytest.raises(Exception, match="teacher"):
        distill.scored_lists(rows, None)
