"""The one document text: title and body on one line, whitespace collapsed, the same for prompts and rankers."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from inpars_ray.io.text import document_text, document_texts

SPACED = [("A  title\n", "Coral\tbleaching   follows\n\nheat  stress.\r\n  "),
          (None, "  Use sorted(xs)\n    or xs.sort()\tto sort a list.  "),
          ("Lithium\u00a0batteries", "store  energy\u2003in  cells.")]


def test_title_and_body_on_one_line_with_whitespace_collapsed():
    assert document_text("A  title", "line one\nline two\r\n") == "A title line one line two"
    assert document_text(None, "x") == "x"
    assert document_text("  t ", None) == "t"
    assert document_text("", "") == document_text(None, None) == ""


def test_the_vectorised_form_is_the_per_row_one_and_keeps_unknown_documents_null():
    titles = [t for t, _ in SPACED] + ["  a ", "", None, None, "t"]
    texts = [x for _, x in SPACED] + ["b", " c", None, "", None]
    got = document_texts(pa.array(titles, pa.string()), pa.chunked_array([pa.array(texts, pa.string())]))
    assert got.to_pylist() == [document_text(t, x) for t, x in SPACED] + ["a b", "c", None, "", "t"]
    assert got.type == pa.string()


@pytest.mark.models
def test_collapsing_whitespace_leaves_the_packaged_minilm_tokens_and_scores_unchanged():
    """WordPiece splits on whitespace: a document with runs of spaces, tabs and line breaks and its collapsed
    text are the same input ids, so a ranker scores them the same (both families the engine loads it as)."""
    from inpars_ray.models import families
    from inpars_ray.models.local_models import MINILM, resolve_model
    from inpars_ray.models.rankers import Ranker, RankerConfig

    path = resolve_model(MINILM)
    spaced = [" ".join(p for p in (t, x) if p) for t, x in SPACED]  # what a whitespace-keeping join gave
    collapsed = [document_text(t, x) for t, x in SPACED]
    assert all(a != b for a, b in zip(spaced, collapsed))
    queries = ["coral bleaching", "how do I sort a list in python", "lithium battery"]
    for family in (families.BI_ENCODER, families.CROSS_ENCODER):
        ranker = Ranker(RankerConfig(str(path), family=family, max_length=64, batch_size=2))
        assert ranker.tokenizer(spaced)["input_ids"] == ranker.tokenizer(collapsed)["input_ids"]
        np.testing.assert_allclose(ranker.score(queries, spaced), ranker.score(queries, collapsed), rtol=0, atol=1e-6)
    # the one difference: whitespace that is a control character to BERT (form feed, vertical tab, \x1c-\x1f,
    # U+0085) is deleted by WordPiece, gluing its neighbours; here it separates words like any other space
    tokens = ranker.tokenizer([document_text(None, "energy\fin"), "energyin", "energy in"])["input_ids"]
    assert tokens[0] == tokens[2] != tokens[1]
