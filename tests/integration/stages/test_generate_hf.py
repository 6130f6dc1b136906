"""The hf backend on the tiny local Llama: log-probs, batching, first-line stop, error rows."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.io.catalog import BUNDLED_ROOT
from inpars_ray.models.backends import GenerationParams, make_backend
from inpars_ray.models.backends.hf import first_line
from inpars_ray.models.prompts import PromptBuilder, inpars_template
from inpars_ray.stages.generate_rows import generate_batch
from inpars_ray.testing.tiny_lm import tiny_lm_path


@pytest.fixture(scope="module")
def backend():
    return make_backend("hf", str(tiny_lm_path()))


@pytest.fixture(scope="module")
def docs():
    rows = [json.loads(line) for line in (BUNDLED_ROOT / "corpus.jsonl").read_text().splitlines()[:12]]
    return [f"Document: {r['text'][:200]}\nRelevant Query:" for r in rows]


def _teacher_forced(backend, prompt: str, text_ids: list[int]) -> list[float]:
    import torch

    ids = backend.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logits = backend.lm(torch.tensor([ids + text_ids])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return [logp[len(ids) - 1 + k, t].item() for k, t in enumerate(text_ids)]


def test_logprobs_match_forward_pass_on_emitted_tokens(backend, docs):
    import torch

    for temperature in (0.0, 1.3):
        params = GenerationParams(max_new_tokens=12, temperature=temperature, seed=5)
        batch = backend.tokenizer.pad({"input_ids": [backend.tokenizer(p)["input_ids"] for p in docs[:6]]},
                                      padding=True, return_tensors="pt")
        gens = backend.generate(docs[:6], params)
        torch.manual_seed(params.seed)
        kwargs = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if temperature else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            seqs = backend.lm.generate(**batch, max_new_tokens=12, pad_token_id=backend.tokenizer.pad_token_id,
                                       stopping_criteria=[backend._stopping(batch["input_ids"].shape[1])], **kwargs)
        for row, (prompt, g) in enumerate(zip(docs[:6], gens)):
            emitted = seqs[row, batch["input_ids"].shape[1]:].tolist()[: len(g.token_logprobs)]
            assert backend.tokenizer.decode(emitted, skip_special_tokens=True).strip() == g.text
            reference = _teacher_forced(backend, prompt, emitted)
            assert len(reference) == len(g.token_logprobs)
            assert max((abs(a - b) for a, b in zip(reference, g.token_logprobs)), default=0.0) < 1e-5


def test_batched_equals_one_by_one_and_answers_are_first_lines(backend, docs):
    params = GenerationParams(max_new_tokens=24)
    batched = backend.generate(docs, params)
    single = [backend.generate([p], params)[0] for p in docs]
    assert [g.text for g in batched] == [g.text for g in single]
    for a, b in zip(batched, single):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)
    assert all("\n" not in g.text for g in batched)
    # the tiny model ends some answers with a newline before the cap and runs others to it
    lengths = {len(g.token_logprobs) for g in batched}
    assert min(lengths) < 24


def test_over_long_prompt_is_an_error_for_that_prompt_only(backend, docs):
    longest = max(docs, key=len)
    limit = backend.count_tokens(longest) - 1
    gens = backend.generate([longest, "Document: short\nRelevant Query:"],
                            GenerationParams(max_new_tokens=4, max_prompt_tokens=limit))
    assert gens[0].error and "max_prompt_tokens" in gens[0].error and gens[0].text == ""
    assert gens[1].error is None


def test_first_line_cuts_on_decoded_newlines_for_any_vocabulary():
    pieces = {1: "how", 2: " do", 3: " reefs?\n", 4: "Example", 9: "<eos>"}

    def decode(ids):
        return "".join(pieces[i] for i in ids)

    # the newline hides inside a token with text before it: that text is kept, its log-prob is not
    assert first_line([1, 2, 3, 4], [-1.0, -2.0, -3.0, -4.0], decode, {9}) == ("how do reefs?", [-1.0, -2.0])
    assert first_line([1, 2, 9, 4], [-1.0, -2.0, -3.0, -4.0], decode, {9}) == ("how do", [-1.0, -2.0])
    assert first_line([1, 2], [-1.0, -2.0], decode, {9}) == ("how do", [-1.0, -2.0])


def test_generate_batch_accounts_for_every_document(backend):
    texts = ["coral bleaching " * 200, "larval settlement on reefs", "volcanic ash plumes"]
    batch = pa.table({S.DOC_ID: ["a", "b", "c"], S.TITLE: ["", "T", "U"], S.TEXT: texts})
    builder = PromptBuilder(inpars_template(), lambda t: backend.truncate(t, 2000))
    limit = backend.count_tokens(builder.build("T", texts[1])) + 5
    out = generate_batch(batch, builder, backend, GenerationParams(max_new_tokens=6, max_prompt_tokens=limit),
                         "inpars", "tiny", [])
    assert out.schema == S.GENERATED
    rows = out.to_pylist()
    assert [r[S.DOC_ID] for r in rows] == ["a", "b", "c"]
    assert rows[0][S.ERROR].startswith("prompt has") and rows[0][S.QUERY] is None
    for r in rows[1:]:
        if r[S.ERROR] is None:
            assert r[S.QUERY] and r[S.NUM_TOKENS] == len(r[S.TOKEN_LOGPROBS])
            assert r[S.MEAN_LOGPROB] == pytest.approx(sum(r[S.TOKEN_LOGPROBS]) / r[S.NUM_TOKENS])
        else:
            assert r[S.ERROR] == "the model generated an empty first line"
    # with the document cut to a few tokens the same long document fits
    short = PromptBuilder(inpars_template(), lambda t: backend.truncate(t, 8))
    out2 = generate_batch(batch.slice(0, 1), short, backend, GenerationParams(max_new_tokens=6, max_prompt_tokens=limit),
                          "inpars", "tiny", [])
    assert out2.column(S.ERROR).to_pylist()[0] in (None, "the model generated an empty first line")


def test_prefix_cache_gives_the_answers_and_logprobs_of_whole_prompts(backend):
    """Few-shot prompts share a long prefix: computed once and reused, it changes no answer and no log-prob
    (beyond float32 summation order), within a batch, in the next batch, and with sampling."""
    rows = [json.loads(line) for line in (BUNDLED_ROOT / "corpus.jsonl").read_text().splitlines()[:10]]
    builder = PromptBuilder(inpars_template(), lambda t: backend.truncate(t, 40))
    prompts = [builder.build(r.get("title"), r["text"][: 40 + 23 * i]) for i, r in enumerate(rows)]
    assert len({backend.count_tokens(p) for p in prompts}) > 3  # rows of several lengths: padding in the middle
    whole = make_backend("hf", str(tiny_lm_path()), prefix_cache=False)
    cached = make_backend("hf", str(tiny_lm_path()))
    for params in (GenerationParams(max_new_tokens=16), GenerationParams(max_new_tokens=16, temperature=1.2, seed=3)):
        for part in (prompts[:6], prompts[6:]):  # the second batch reuses the first one's prefix
            want, got = whole.generate(part, params), cached.generate(part, params)
            assert [g.text for g in got] == [g.text for g in want]
            for a, b in zip(got, want):
                assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-5)
                assert a.prompt_tokens == b.prompt_tokens
    assert len(cached._prefixes) == 1
    (prefix,) = cached._prefixes
    assert len(prefix) >= 100 and list(prefix) == cached.tokenizer(prompts[0])["input_ids"][: len(prefix)]
    # prompts without a shared prefix take the plain path
    plain = ["alpha beta", "gamma delta epsilon"]
    assert [x.text for x in cached.generate(plain, GenerationParams(max_new_tokens=8))] == [
        x.text for x in whole.generate(plain, GenerationParams(max_new_tokens=8))]
    assert len(cached._prefixes) == 1


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backend"):
        make_backend("nope", "m")


def test_several_queries_per_document_greedy_first_then_sampled(backend):
    """queries_per_doc: round 0 is the configured (greedy) decoding, later rounds sample with their own
    seeds (top-k and top-p honoured), every round a row with its own id; the same call gives the same rows."""
    from inpars_ray.stages.generate_parts import generated_query_id
    from inpars_ray.stages.generate_rows import SamplingParams, round_params

    texts = ["coral bleaching in warm water", "larval settlement on reefs", "volcanic ash plumes"]
    batch = pa.table({S.DOC_ID: ["a", "b", "c"], S.TITLE: ["", "", ""], S.TEXT: texts})
    builder = PromptBuilder(inpars_template(), lambda t: backend.truncate(t, 64))
    params = GenerationParams(max_new_tokens=8, seed=3)
    sampling = SamplingParams(temperature=1.0, top_p=0.95, top_k=25)
    one = generate_batch(batch, builder, backend, params, "inpars", "tiny", [])
    three = generate_batch(batch, builder, backend, params, "inpars", "tiny", [], queries_per_doc=3, sampling=sampling)
    assert three.num_rows == 9
    assert three.column(S.QUERY_ID).to_pylist() == [generated_query_id(d, r) for d in "abc" for r in range(3)]
    rows = three.to_pylist()
    assert [rows[3 * i][S.QUERY] for i in range(3)] == one.column(S.QUERY).to_pylist()
    prompts = [builder.build("", t) for t in texts]
    for r in (1, 2):
        expected = backend.generate(prompts, round_params(params, sampling, r))
        assert [rows[3 * i + r][S.QUERY] or "" for i in range(3)] == [g.text for g in expected]
    assert len({row[S.QUERY] for row in rows}) > 3  # the sampled rounds wrote other queries
    assert generate_batch(batch, builder, backend, params, "inpars", "tiny", [], queries_per_doc=3,
                          sampling=sampling).equals(three)
    # top_k reaches the model: sampling among the single most likely token is greedy decoding
    greedy_by_sampling = backend.generate(prompts, round_params(params, SamplingParams(top_k=1), 1))
    assert [g.text for g in greedy_by_sampling] == [g.text for g in backend.generate(prompts, params)]


def test_untitled_retry_asks_a_copied_answer_again_without_titles(backend, tmp_path):
    """An answer that copies its document (journaled here, as an earlier attempt would have left it) is asked
    again of the real model with the untitled prompt; an answer that does not copy is kept as it is."""
    import dataclasses

    from inpars_ray.io.journal import Journal, answer_key
    from inpars_ray.io.text import copies_document, document_text
    from inpars_ray.models.prompts import UNTITLED_SUFFIX
    from inpars_ray.stages.filter import FewShotQueries, builtin_fewshot_queries

    titled = inpars_template()
    builder = PromptBuilder(titled, lambda t: backend.truncate(t, 64))
    untitled = PromptBuilder(dataclasses.replace(titled, titles=False), lambda t: backend.truncate(t, 64))
    batch = pa.table({S.DOC_ID: ["d0", "d1"], S.TITLE: ["fputws(3)", "Beta"],
                      S.TEXT: ["write a wide-character string to a stream", "beta is a letter of an alphabet"]})
    journal, part = Journal("untitled-test", tmp_path), "p0"
    copied = {"text": "FPUTWS(3)", "token_logprobs": [-0.5, -0.5, -0.5]}  # the title, as SmolLM2 wrote on man pages
    own = {"text": "which letter follows alpha", "token_logprobs": [-0.1, -0.2, -0.3, -0.4]}
    for title, text, answer in [("fputws(3)", batch[S.TEXT][0].as_py(), copied), ("Beta", batch[S.TEXT][1].as_py(), own)]:
        journal.append(part, answer_key(builder.build(title, text)), answer)
    params = GenerationParams(max_new_tokens=8)
    rows = generate_batch(batch, builder, backend, params, "inpars", "tiny", None, journal, part,
                          untitled=lambda doc_id: untitled).to_pylist()

    expected = backend.generate([untitled.build(None, batch[S.TEXT][0].as_py())], params)[0]
    assert "fputws(3)" not in untitled.build("fputws(3)", batch[S.TEXT][0].as_py())
    assert copies_document(copied["text"], document_text("fputws(3)", batch[S.TEXT][0].as_py()))
    assert rows[0][S.QUERY] == expected.text and rows[0][S.QUERY] != copied["text"]
    assert rows[0][S.PROMPT_NAME] == "inpars" + UNTITLED_SUFFIX
    assert (rows[1][S.QUERY], rows[1][S.PROMPT_NAME]) == (own["text"], "inpars")
    # the filter's few-shot check still knows the retried row's prompt
    fewshot = FewShotQueries(builtin_fewshot_queries())
    assert fewshot.of(rows[0][S.PROMPT_NAME], None) == fewshot.of("inpars", None) != frozenset()
    # the retried answer is journaled under its own prompt: a second attempt asks the model nothing
    again = generate_batch(batch, builder, _NoCalls(backend), params, "inpars", "tiny", None, journal, part,
                           untitled=lambda doc_id: untitled).to_pylist()
    assert again == rows
    # an answer that ran to max_new_tokens is asked again only when "unfinished" is among the reasons
    run_on = {"text": "beta beta letter of", "token_logprobs": [-0.2] * params.max_new_tokens}
    journal.append(part, answer_key(builder.build("Beta", batch[S.TEXT][1].as_py())), run_on)
    kept = generate_batch(batch, builder, _NoCalls(backend), params, "inpars", "tiny", None, journal, part,
                          untitled=lambda doc_id: untitled).to_pylist()
    assert (kept[1][S.QUERY], kept[1][S.PROMPT_NAME]) == (run_on["text"], "inpars")
    retried = generate_batch(batch, builder, backend, params, "inpars", "tiny", None, journal, part,
                             untitled=lambda doc_id: untitled, retry_when=("copies", "unfinished")).to_pylist()
    expected = backend.generate([untitled.build(None, batch[S.TEXT][1].as_py())], params)[0]
    assert (retried[1][S.QUERY], retried[1][S.PROMPT_NAME]) == (expected.text, "inpars" + UNTITLED_SUFFIX)
    assert retried[0] == rows[0]


class _NoCalls:
    """The backend, refusing to generate: every answer must come from the journal."""

    def __init__(self, backend):
        self._backend, self.name = backend, backend.name

    def count_tokens(self, text):
        return self._backend.count_tokens(text)

    def generate_each(self, prompts, params, keep):
        raise AssertionError(f"asked the model for {len(prompts)} answers the journal holds")
