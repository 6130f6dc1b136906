"""monoT5 prompt building and scoring against the tiny local model (real transformers, no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from inpars_ray.errors import ConfigError
from inpars_ray.models.monot5 import format_inputs, prompt_ids, score_pairs, true_false_ids
from inpars_ray.testing.tiny_t5 import build_tiny_monot5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = build_tiny_monot5(tmp_path_factory.mktemp("tiny-monot5"))
    return path, AutoModelForSeq2SeqLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_true_false_are_single_distinct_tokens_from_the_tokenizer(tiny):
    _, _, tok = tiny
    t, f = true_false_ids(tok)
    assert t != f
    assert tok.convert_ids_to_tokens([t, f]) == ["true", "false"]


def test_true_false_ids_refuses_a_vocabulary_without_them(tiny):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0, "yes": 1}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ConfigError, match="true"):
        true_false_ids(PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>"))


def test_prompt_keeps_the_suffix_and_truncates_the_document(tiny):
    _, _, tok = tiny
    long_doc = " ".join(["coral"] * 1000)
    ids = prompt_ids(tok, ["bleaching"], [long_doc], max_length=32)[0]
    assert len(ids) == 32
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.startswith("query : bleaching document :")
    assert text.endswith("relevant :")
    assert ids[-1] == tok.eos_token_id
    # a short pair is left whole
    short = prompt_ids(tok, ["bleaching"], ["coral reefs"], max_length=32)[0]
    assert tok.decode(short, skip_special_tokens=True) == "query : bleaching document : coral reefs relevant :"


def test_overlong_query_is_cut_but_never_the_suffix(tiny):
    _, _, tok = tiny
    ids = prompt_ids(tok, [" ".join(["algae"] * 500)], ["coral reefs"], max_length=24)[0]
    assert len(ids) <= 24
    assert tok.decode(ids, skip_special_tokens=True).endswith("coral reefs relevant :")


def test_format_inputs_pads_and_masks(tiny):
    _, _, tok = tiny
    enc = format_inputs(tok, ["a", "coral bleaching"], ["x y z", "reefs"], max_length=64)
    assert enc["input_ids"].shape == enc["attention_mask"].shape
    lengths = enc["attention_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1]
    assert (enc["input_ids"][enc["attention_mask"] == 0] == tok.pad_token_id).all()


def test_score_pairs_is_a_probability_independent_of_batching(tiny):
    _, model, tok = tiny
    qs = ["coral bleaching", "larval settlement", "aragonite skeleton"]
    ds = ["thermal stress bleaching in coral", "settlement of larvae", "short"]
    together = score_pairs(model, tok, qs, ds, max_length=64)
    alone = np.array([score_pairs(model, tok, [q], [d], max_length=64)[0] for q, d in zip(qs, ds)])
    assert together.shape == (3,) and ((together > 0) & (together < 1)).all()
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-6)  # padding must not change scores
    assert len(set(np.round(together, 6))) > 1  # different pairs, different scores


def test_score_pairs_matches_the_first_decoder_step_softmax(tiny):
    import torch

    _, model, tok = tiny
    t, f = true_false_ids(tok)
    enc = format_inputs(tok, ["coral"], ["reef bleaching"], 64)
    with torch.no_grad():
        logits = model(**enc, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits[0, 0]
    expected = torch.softmax(logits[[t, f]], -1)[0].item()
    assert score_pairs(model, tok, ["coral"], ["reef bleaching"], 64)[0] == pytest.approx(expected, rel=1e-5)


