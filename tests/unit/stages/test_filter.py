"""Pure functions of the filter stage, on small hand-made Arrow tables (no Ray)."""
from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, FormatError
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.runtime import exchange
from inpars_ray.stages import filter as F


def joined_rows(rows: list[dict]) -> pa.Table:
    """Generated rows already joined with their document (title/text null when the doc is unknown)."""
    full = []
    for i, r in enumerate(rows):
        lp = r.get("lp")
        full.append({S.DOC_ID: r.get("doc", f"d{i}"), S.QUERY_ID: r.get("qid", f"q{i}"), S.QUERY: r.get("q"),
                     S.TOKEN_LOGPROBS: lp, S.MEAN_LOGPROB: (sum(lp) / len(lp)) if lp else None,
                     S.NUM_TOKENS: r.get("ntok", len(lp) if lp else None), S.PROMPT_NAME: "inpars", S.MODEL: "m",
                     S.BACKEND: "hf", S.FEWSHOT_IDS: [], S.ERROR: r.get("error"),
                     S.TITLE: r.get("title", "A title"), S.TEXT: r.get("text", "some document text about cells")})
    schema = S.GENERATED.append(pa.field(S.TITLE, pa.string())).append(pa.field(S.TEXT, pa.string()))
    return pa.Table.from_pylist(full, schema=schema)


def reasons(table: pa.Table) -> list:
    return table.column(S.DROP_REASON).to_pylist()


def test_classify_assigns_first_applicable_reason():
    lp = [-0.1, -0.2, -0.3]
    t = joined_rows([
        {"q": None, "error": "prompt too long"},                      # generation error
        {"q": "   ", "lp": lp},                                       # empty
        {"q": "what is x", "lp": lp, "title": None, "text": None},    # unknown document
        {"q": "DOCUMENT   Text", "lp": lp},                           # copied, modulo case and spaces
        {"q": "a title some", "lp": lp},                              # copied across title and text
        {"q": "why cells", "lp": [-0.1, -0.2]},                       # 2 tokens < 3
        {"q": "why do cells divide", "lp": lp},                       # fine
    ])
    out = F.classify(t, F.FilterConfig())
    assert reasons(out) == [F.GENERATION_ERROR, F.EMPTY_QUERY, F.UNKNOWN_DOCUMENT, F.COPIED, F.COPIED,
                            F.TOKEN_LENGTH, None]
    assert out.column(S.FILTER_SCORE)[6].as_py() == pytest.approx(-0.2)
    assert S.TEXT not in out.column_names and S.TITLE not in out.column_names


def test_classify_token_range_and_aggregates():
    lp = [-1.0, -2.0, -6.0]
    t = joined_rows([{"q": "why do cells divide", "lp": lp}, {"q": "why do cells divide", "lp": lp, "ntok": 9}])
    cfg = F.FilterConfig(aggregate="min", min_tokens=1, max_tokens=5)
    out = F.classify(t, cfg)
    assert reasons(out) == [None, F.TOKEN_LENGTH]
    assert out.column(S.FILTER_SCORE)[0].as_py() == -6.0
    assert F.classify(t, F.FilterConfig(aggregate="sum")).column(S.FILTER_SCORE)[0].as_py() == -9.0


def test_reranker_classify_carries_document_text_not_score():
    t = joined_rows([{"q": "why do cells divide", "lp": [-1.0] * 4, "title": "T", "text": " body "}])
    out = F.classify(t, F.FilterConfig(strategy="reranker", ranker=RankerConfig(model="m")))
    assert out.column(F._DOC).to_pylist() == ["T body"]
    assert S.FILTER_SCORE not in out.column_names


def test_aggregate_logprobs_handles_missing_and_non_finite():
    assert math.isnan(F.aggregate_logprobs(None, None, "mean"))
    assert F.aggregate_logprobs(None, -0.5, "mean") == -0.5
    assert math.isnan(F.aggregate_logprobs(None, -0.5, "sum"))
    assert math.isnan(F.aggregate_logprobs([-1.0, float("-inf")], None, "mean"))


def test_mark_duplicates_keeps_smallest_query_id_whatever_the_order():
    rows = pa.table({S.QUERY_ID: ["q9", "q2", "q5", "q7"], S.DOC_ID: ["a", "b", "c", "d"],
                     F._QNORM: ["x y", "x y", "z", "x y"], S.DROP_REASON: pa.nulls(4, pa.string())})
    for seed in range(3):
        order = list(range(4))
        random.Random(seed).shuffle(order)
        out = F.mark_duplicates(rows.take(order))
        dup = {q for q, r in zip(out.column(S.QUERY_ID).to_pylist(), reasons(out)) if r == F.DUPLICATE}
        assert dup == {"q9", "q7"}


def test_top_k_threshold_matches_full_sort_with_ties():
    rng = random.Random(0)
    n, k = 200, 37
    table = pa.table({S.FILTER_SCORE: [float(rng.randint(0, 20)) for _ in range(n)],  # many ties
                      S.QUERY_ID: [f"q{rng.randint(0, 60):03d}" for _ in range(n)],
                      S.DOC_ID: [f"d{i:03d}" for i in range(n)], S.DROP_REASON: pa.nulls(n, pa.string())})
    brute = sorted(table.to_pylist(), key=lambda r: (-r[S.FILTER_SCORE], r[S.QUERY_ID], r[S.DOC_ID]))[:k]
    # candidates from 5 uneven "blocks", as the stage merges them
    cuts = [0, 3, 50, 51, 140, n]
    cand = pa.concat_tables([F.local_top_k(table.slice(a, b - a), k) for a, b in zip(cuts, cuts[1:])])
    threshold = F.threshold_of(cand, k)
    marked = pa.concat_tables([F.apply_threshold(table.slice(a, b - a), threshold) for a, b in zip(cuts, cuts[1:])])
    kept = {r[S.DOC_ID] for r in marked.to_pylist() if r[S.DROP_REASON] is None}
    assert kept == {r[S.DOC_ID] for r in brute}


def test_one_block_threshold_still_cuts_the_rest():
    table = pa.table({S.FILTER_SCORE: [3.0, 1.0, 2.0, 5.0], S.QUERY_ID: ["a", "b", "c", "d"],
                      S.DOC_ID: ["x"] * 4, S.DROP_REASON: pa.nulls(4, pa.string())})
    marked = F.apply_threshold(table, F.threshold_of(F.local_top_k(table, 2), 2))
    assert reasons(marked) == [None, F.BELOW_TOP_K, F.BELOW_TOP_K, None]


def test_threshold_none_when_fewer_than_k():
    cand = pa.table({S.FILTER_SCORE: [1.0], S.QUERY_ID: ["q"], S.DOC_ID: ["d"]})
    assert F.threshold_of(cand, 5) is None


def test_left_join_unique_fills_nulls_and_rejects_duplicate_ids():
    left = pa.table({S.DOC_ID: ["b", "zz", "a"], "x": [1, 2, 3]})
    right = pa.table({S.DOC_ID: ["a", "b"], S.TEXT: ["ta", "tb"]})
    assert exchange.left_join_unique(left, right, S.DOC_ID).column(S.TEXT).to_pylist() == ["tb", None, "ta"]
    with pytest.raises(FormatError, match="duplicate document id 'a'"):
        exchange.left_join_unique(left, pa.table({S.DOC_ID: ["a", "a"], S.TEXT: ["1", "2"]}), S.DOC_ID)


def test_hash_split_is_a_partition():
    t = pa.table({S.DOC_ID: [f"d{i}" for i in range(50)]})
    parts = exchange.hash_split(t, S.DOC_ID, 4)
    assert sum(p.num_rows for p in parts) == 50
    assert set().union(*(set(p.column(0).to_pylist()) for p in parts)) == set(t.column(0).to_pylist())
    again = exchange.hash_split(t.take(list(range(49, -1, -1))), S.DOC_ID, 4)
    assert [set(p.column(0).to_pylist()) for p in parts] == [set(p.column(0).to_pylist()) for p in again]


def test_config_validation():
    with pytest.raises(ConfigError, match="needs a ranker"):
        F.FilterConfig(strategy="reranker")
    with pytest.raises(ConfigError):
        F.FilterConfig(aggregate="median")
    with pytest.raises(ConfigError):
        F.FilterConfig(keep_top_k=0)


def test_a_query_repeating_a_fewshot_example_is_dropped_with_its_own_reason():
    import json

    from inpars_ray.models.prompts import PROMPT_DIR

    example = json.loads((PROMPT_DIR / "inpars_examples.json").read_text())["examples"][0]
    t = joined_rows([
        {"q": "  " + example["good_question"].upper() + " ", "lp": [-0.1] * 4},   # the built-in example, renormalised
        {"q": example["bad_question"], "lp": [-0.1] * 4},                         # a gbq example: shown only by inpars-gbq
        {"q": "what do promptagator examples ask", "lp": [-0.1] * 4},             # names its few-shot ids
        {"q": "what do promptagator examples ask", "lp": [-0.1] * 4},             # same text, other prompt: kept
        {"q": "why do cells divide", "lp": [-0.1] * 4},
    ])
    t = t.set_column(t.schema.get_field_index(S.PROMPT_NAME), S.PROMPT_NAME,
                     pa.array(["inpars", "inpars", "promptagator", "inpars", "inpars-gbq"]))
    t = t.set_column(t.schema.get_field_index(S.FEWSHOT_IDS), S.FEWSHOT_IDS,
                     pa.array([[], [], ["q7", "q9"], [], []], pa.list_(pa.string())))
    fewshot = F.FewShotQueries(F.builtin_fewshot_queries(), {"q9": F.normalise("What do Promptagator examples ask")})
    out = F.classify(t, F.FilterConfig(), fewshot)
    assert reasons(out) == [F.FEWSHOT_REPEAT, None, F.FEWSHOT_REPEAT, None, None]
    assert F.FEWSHOT_REPEAT in F.REASONS
    # the built-in examples are known without being told
    assert reasons(F.classify(t, F.FilterConfig()))[0] == F.FEWSHOT_REPEAT
    gbq = t.set_column(t.schema.get_field_index(S.PROMPT_NAME), S.PROMPT_NAME, pa.array(["inpars-gbq"] * 5))
    assert reasons(F.classify(gbq, F.FilterConfig(), fewshot))[1] == F.FEWSHOT_REPEAT


def test_a_query_that_used_every_new_token_is_unfinished_only_when_a_limit_is_given():
    t = joined_rows([{"q": "why do cells divide so", "ntok": 8, "lp": [-0.1] * 8},
                     {"q": "why do cells divide", "ntok": 7, "lp": [-0.1] * 7}])
    assert reasons(F.classify(t, F.FilterConfig(), token_limit=8)) == [F.UNFINISHED, None]
    assert reasons(F.classify(t, F.FilterConfig())) == [None, None]
    # the length check comes first: a query over max_tokens is dropped for its length
    assert reasons(F.classify(t, F.FilterConfig(max_tokens=7), token_limit=8)) == [F.TOKEN_LENGTH, None]
