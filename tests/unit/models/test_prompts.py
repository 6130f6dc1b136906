"""Prompt formats, few-shot draws and token-level truncation of documents (never of the template)."""
from __future__ import annotations

import dataclasses

import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.io.catalog import resolve
from inpars_ray.io.load import read_qrels, read_queries
from inpars_ray.io.text import document_text
from inpars_ray.models.prompts import (
    PromptBuilder,
    inpars_template,
    promptagator_template,
    promptagator_templates,
    resolve_template,
    resolve_templates,
    template_index,
    templates_fingerprint,
    user_template,
)


def test_inpars_prompt_structure():
    prompt = inpars_template().render("TARGET DOC")
    blocks = prompt.split("\n\n")
    assert len(blocks) == 4
    for n, block in enumerate(blocks[:3], 1):
        lines = block.split("\n")
        assert lines[0] == f"Example {n}:"
        assert lines[1].startswith("Document: ") and lines[2].startswith("Relevant Query: ")
    assert blocks[3] == "Example 4:\nDocument: TARGET DOC\nRelevant Query:"


def test_gbq_prompt_has_good_and_bad_questions_and_ends_with_good_question():
    prompt = inpars_template(gbq=True).render("TARGET DOC")
    assert prompt.endswith("Document: TARGET DOC\nGood Question:")
    for block in prompt.split("\n\n")[:3]:
        labels = [line.split(":")[0] for line in block.split("\n")]
        assert labels == [labels[0], "Document", "Good Question", "Bad Question"]
    assert inpars_template(gbq=True).fewshot_ids == ()  # MS MARCO-style examples are not collection queries


def test_document_text_is_one_line():
    assert document_text("A  title", "line one\nline two\r\n") == "A title line one line two"
    assert document_text(None, "x") == "x"


def test_user_template_needs_exactly_one_placeholder(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("Passage: {document}\nJSON stays {literal}\nQuestion:\n")
    template = user_template(good)
    assert template.name == "t.txt"
    assert template.render("DOC") == "Passage: DOC\nJSON stays {literal}\nQuestion:"
    assert resolve_template(str(good)) == template
    for text in ("no placeholder", "{document} twice {document}"):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(ConfigError, match="exactly once"):
            user_template(bad)
    with pytest.raises(ConfigError, match="neither"):
        resolve_template(str(tmp_path / "missing.txt"))


def test_promptagator_draws_seeded_in_domain_examples():
    collection = resolve("bundled/tiny-science")
    a = promptagator_template(collection, seed=3, num_examples=4)
    assert promptagator_template(collection, seed=3, num_examples=4) == a
    assert promptagator_template(collection, seed=4, num_examples=4).fewshot_ids != a.fewshot_ids
    assert len(a.fewshot_ids) == 4 and len(set(a.fewshot_ids)) == 4
    queries, _ = read_queries(collection)
    qrels, _ = read_qrels(collection, "train", queries)
    positive = {q for q, r in zip(qrels.column(S.QUERY_ID).to_pylist(), qrels.column(S.RELEVANCE).to_pylist()) if r > 0}
    assert set(a.fewshot_ids) <= positive
    text = dict(zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()))
    prompt = a.render("TARGET")
    for qid in a.fewshot_ids:
        assert f"Query: {text[qid]}" in prompt
    assert prompt.endswith("Abstract: TARGET\nQuery:")  # tiny-science labels from promptagator.json
    assert "Example" not in prompt


def test_several_few_shot_sets_are_disjoint_and_the_first_is_the_single_draw():
    collection = resolve("bundled/tiny-science")
    one = promptagator_template(collection, seed=3, num_examples=3)
    sets = promptagator_templates(collection, seed=3, num_examples=3, sets=4)
    assert len(sets) == 4 and sets[0] == one  # one set is the prompt a single draw gives (older runs' prompts)
    ids = [q for t in sets for q in t.fewshot_ids]
    assert all(len(t.fewshot_ids) == 3 for t in sets) and len(set(ids)) == 12
    assert len({t.render("X") for t in sets}) == 4
    assert resolve_templates("promptagator", collection, 3, 3, "train", 4) == sets
    assert resolve_templates("promptagator", collection, 3, 3, "train", 1) == (one,)
    assert templates_fingerprint((one,)) == one.fingerprint()  # one prompt keeps its fingerprint
    assert templates_fingerprint(sets) != templates_fingerprint(sets[:3]) != one.fingerprint()
    queries, _ = read_queries(collection)
    qrels, _ = read_qrels(collection, "train", queries)
    judged = len({q for q, r in zip(qrels.column(S.QUERY_ID).to_pylist(), qrels.column(S.RELEVANCE).to_pylist())
                  if r > 0})
    shared = promptagator_templates(collection, seed=3, num_examples=judged, sets=3)  # fewer than 3 x judged
    sizes = [len(t.fewshot_ids) for t in shared]
    assert sum(sizes) == judged and max(sizes) - min(sizes) <= 1  # shared out evenly
    assert len({q for t in shared for q in t.fewshot_ids}) == judged
    with pytest.raises(ConfigError, match="too few"):
        promptagator_templates(collection, seed=3, num_examples=1, sets=judged + 1)
    with pytest.raises(ConfigError, match="promptagator"):
        resolve_templates("inpars", collection, 3, 3, "train", 2)


def test_a_documents_prompt_is_a_seeded_hash_of_its_id():
    ids = [f"doc-{i}" for i in range(400)]
    which = [template_index(d, 7, 4) for d in ids]
    assert which == [template_index(d, 7, 4) for d in ids]  # the same on every call (node, rerun)
    assert all(0 <= w < 4 for w in which) and min(which.count(w) for w in range(4)) > 60  # all four used
    assert which != [template_index(d, 8, 4) for d in ids]  # another seed deals the documents out again
    assert {template_index(d, 7, 1) for d in ids} == {0}


def test_promptagator_needs_the_split(tmp_path, bundled_copy):
    with pytest.raises(ConfigError, match="dev.tsv"):
        promptagator_template(resolve(str(bundled_copy)), split="dev")


def test_builder_cuts_documents_by_tokens_never_the_template():
    from transformers import AutoTokenizer

    from inpars_ray.testing.tiny_lm import tiny_lm_path

    tok = AutoTokenizer.from_pretrained(tiny_lm_path())

    def n_tokens(t):
        return len(tok(t, add_special_tokens=False)["input_ids"])

    def cut(t):
        return tok.decode(tok(t, add_special_tokens=False)["input_ids"][:12])

    template = inpars_template()
    long_doc = "coral reef bleaching " * 50
    prompt = PromptBuilder(template, cut).build("Title", long_doc)
    assert prompt.endswith("Relevant Query:") and prompt.startswith("Example 1:")
    target = prompt.split("\n\n")[-1].split("\n")[1][len("Document: "):]
    assert n_tokens(target) <= 12
    for block in prompt.split("\n\n")[:3]:  # few-shot documents are cut to the same limit
        assert n_tokens(block.split("\n")[1][len("Document: "):]) <= 12
    short = PromptBuilder(template, cut).build("", "short")
    assert "Document: short\nRelevant Query:" in short


def test_titles_false_shows_documents_without_their_titles():
    collection = resolve("bundled/tiny-science")
    with_titles = promptagator_template(collection, seed=3, num_examples=6)
    without = promptagator_template(collection, seed=3, num_examples=6, titles=False)
    assert without.fewshot_ids == with_titles.fewshot_ids  # the same examples, drawn the same way
    pairs = list(zip(with_titles.examples, without.examples))
    assert all(a.document.endswith(b.document) for a, b in pairs)
    assert any(len(b.document) < len(a.document) for a, b in pairs)  # a title, cut off (some documents have none)
    assert resolve_templates("promptagator", collection, 3, 6, "train", 1, titles=False) == (without,)
    assert with_titles.fingerprint() == dataclasses.replace(with_titles, titles=True).fingerprint()
    assert without.fingerprint() != with_titles.fingerprint()  # another prompt: another generate key
    shown = PromptBuilder(without, lambda t: t).build("A TITLE", "the text")
    assert shown.endswith("Abstract: the text\nQuery:") and "A TITLE" not in shown
    assert PromptBuilder(with_titles, lambda t: t).build("A TITLE", "the text").endswith("Abstract: A TITLE the text\nQuery:")
    assert resolve_template("inpars", titles=False).titles is False
