"""The contrastive loss over the whole batch by gradient caching: the same loss and gradients as one pass
over the whole batch, in micro-batches, with dropout replayed and with a frozen document tower."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from inpars_ray import schema as S  # noqa: E402
from inpars_ray.models.losses import cached_contrastive_backward, contrastive_loss_sum  # noqa: E402
from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder  # noqa: E402

QUERIES = ["coral bleaching", "larval settlement", "aragonite skeleton", "heat", "reef fish"]
DOCS = ["thermal stress bleaching in coral reefs " * 3, "settlement of larvae", "short",
        "heat waves and reef decline across the pacific " * 6, "lithium cathode", "fish counts on reefs"]


def _rows():
    # lists of uneven length (3, 2, 3, 2, 3 documents), as mining leaves them
    return [{S.QUERY_ID: f"q{i}", S.QUERY: q, S.POS_DOC_ID: f"p{i}", S.POS_TEXT: DOCS[i],
             "neg_doc_ids": [f"n{i}{j}" for j in range(2 - i % 2)],
             "neg_texts": [DOCS[(i + j + 1) % len(DOCS)] for j in range(2 - i % 2)]}
            for i, q in enumerate(QUERIES)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_bi_encoder(tmp_path_factory.mktemp("bi"))


def _load(path, train: bool, dropout: float = 0.0):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model.train(train)
    return model, AutoTokenizer.from_pretrained(path)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        # float32 sums in another order: absolute slack relative to the tensor's largest gradient
        atol = 1e-5 * float(b[name].abs().max()) + 1e-7
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=atol, msg=name)


def _assert_cached_is_one_pass(model_path, rows, micro):
    """Gradient caching in micro-batches of ``micro`` gives the loss and gradients of one pass over ``rows``."""
    model, tok = _load(model_path, train=False)
    full = contrastive_loss_sum(model, tok, rows, 64, "cpu")
    (full / len(rows)).backward()
    expected = _grads(model)

    model.zero_grad(set_to_none=True)
    cached = cached_contrastive_backward(model, tok, rows, micro, 64, "cpu", 1.0 / len(rows))
    assert cached.item() == pytest.approx(full.item(), rel=1e-5)
    _assert_same_grads(_grads(model), expected)
    return model, tok, full


@pytest.mark.parametrize("micro", [1, 2, 5])
def test_micro_batches_give_the_loss_and_gradients_of_one_pass_over_the_whole_batch(model_path, micro):
    rows = _rows()
    model, tok, full = _assert_cached_is_one_pass(model_path, rows, micro)

    # the micro-batch-only loss is not the same: its queries meet fewer in-batch negatives
    if micro < len(rows):
        split = sum(contrastive_loss_sum(model, tok, rows[i:i + micro], 64, "cpu").item()
                    for i in range(0, len(rows), micro))
        assert split < full.item()


def test_the_second_pass_replays_the_first_pass_dropout(model_path):
    rows = _rows()
    model, tok = _load(model_path, train=True, dropout=0.2)
    torch.manual_seed(7)
    (contrastive_loss_sum(model, tok, rows, 64, "cpu") / len(rows)).backward()
    expected = _grads(model)

    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # one micro-batch: the same dropout draws as the single pass, if the replay restores them
    cached_contrastive_backward(model, tok, rows, len(rows), 64, "cpu", 1.0 / len(rows))
    _assert_same_grads(_grads(model), expected)


def test_a_frozen_document_tower_gets_no_gradient_and_the_query_tower_the_full_batch_one(model_path):
    rows = _rows()
    model, tok = _load(model_path, train=False)
    documents, _ = _load(model_path, train=False)
    documents.requires_grad_(False)
    (contrastive_loss_sum(model, tok, rows, 64, "cpu", document_encoder=documents, doc_cache={})
     / len(rows)).backward()
    expected = _grads(model)

    model.zero_grad(set_to_none=True)
    cache: dict = {}
    cached_contrastive_backward(model, tok, rows, 2, 64, "cpu", 1.0 / len(rows), document_encoder=documents,
                                doc_cache=cache)
    _assert_same_grads(_grads(model), expected)
    assert all(p.grad is None for p in documents.parameters())
    assert set(cache) == {t for r in rows for t in [r[S.POS_TEXT], *r["neg_texts"]]}


def test_a_worker_without_rows_still_joins_and_contributes_nothing(model_path):
    model, tok = _load(model_path, train=False)
    calls = []

    def gather(tensor):
        calls.append(tuple(tensor.shape))
        return tensor, 0

    loss = cached_contrastive_backward(model, tok, [], 4, 64, "cpu", 1.0, gather_rows=gather)
    assert loss.item() == 0.0 and calls == [(0, model.config.hidden_size), (0,)]  # embeddings, then keys
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def _rows_sharing_a_positive():
    # q0 and q1 were written for the same document (several queries per document); q2's negative is it too
    rows = _rows()[:3]
    rows[1] = {**rows[1], S.POS_DOC_ID: "p0", S.POS_TEXT: DOCS[0]}
    rows[2] = {**rows[2], "neg_doc_ids": ["p0", "n21"], "neg_texts": [DOCS[0], DOCS[5]]}
    return rows


def test_another_copy_of_a_querys_positive_is_not_one_of_its_negatives(model_path):
    from inpars_ray.models.losses import contrastive_from_embeddings, list_doc_keys, list_embeddings

    rows = _rows_sharing_a_positive()
    model, tok = _load(model_path, train=False)
    with torch.no_grad():
        q, d, pos_at = list_embeddings(model, tok, rows, 64, "cpu")
        keys = list_doc_keys(rows, None, "cpu")
        masked = contrastive_from_embeddings(q, d, pos_at, 0.05, keys)
        unmasked = contrastive_from_embeddings(q, d, pos_at, 0.05)
        # by hand: q0 and q1 leave out each other's positive and q2's negative "p0"; q2 leaves nothing out
        logits = q @ d.T / 0.05
        p0 = [i for i, k in enumerate(keys.tolist()) if k == keys[0].item()]
        assert len(p0) == 3
        expected = 0.0
        for i, at in enumerate(pos_at.tolist()):
            keep = [j for j in range(d.shape[0]) if j == at or not (i < 2 and j in p0)]
            expected -= torch.log_softmax(logits[i, keep], 0)[keep.index(at)].item()
    assert masked.item() == pytest.approx(expected, rel=1e-5)
    assert masked.item() < unmasked.item()  # the copies were counted as negatives before
    assert contrastive_loss_sum(model, tok, rows, 64, "cpu").item() == pytest.approx(masked.item(), rel=1e-5)


@pytest.mark.parametrize("micro", [1, 2])
def test_gradient_caching_leaves_the_same_copies_out_as_one_pass(model_path, micro):
    _assert_cached_is_one_pass(model_path, _rows_sharing_a_positive(), micro)
