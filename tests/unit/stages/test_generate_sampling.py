"""The seeded document sample: the N smallest hash(seed, doc_id), whatever the blocking."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.stages.sample import below_threshold, block_candidates, doc_hashes, merge_candidates


def _corpus(n: int, bad: int = 0) -> pa.Table:
    ids = [f"doc{i:05d}" for i in range(n)] + [""] * bad
    return pa.table({
        S.DOC_ID: ids, S.TITLE: ["t"] * (n + bad), S.TEXT: ["x"] * (n + bad),
        S.SOURCE_FILE: ["c.jsonl"] * (n + bad), S.SOURCE_LINE: list(range(1, n + bad + 1)),
        "reason": [None] * n + ["malformed JSON"] * bad,
    })


def _sample(table: pa.Table, n: int, seed: int, block: int) -> tuple[set[str], int, int]:
    blocks = [table.slice(i, block) for i in range(0, table.num_rows, block)]
    rows = [r for b in blocks for r in block_candidates(b, n, seed).to_pylist()]
    threshold, good, bad = merge_candidates(iter(rows), n)
    kept = {d for b in blocks for d in below_threshold(b, seed, threshold).column(S.DOC_ID).to_pylist()}
    return kept, good, bad


def test_sample_is_the_n_smallest_hashes_for_any_blocking():
    table = _corpus(1000)
    ids = table.column(S.DOC_ID).to_pylist()
    order = np.lexsort((np.asarray(ids), doc_hashes(ids, 7)))
    expected = {ids[i] for i in order[:100]}
    for block in (1000, 333, 64, 7):
        kept, good, bad = _sample(table, 100, 7, block)
        assert kept == expected
        assert (good, bad) == (1000, 0)


def test_seed_changes_the_sample_and_small_corpora_are_taken_whole():
    table = _corpus(500)
    a, _, _ = _sample(table, 50, 1, 128)
    b, _, _ = _sample(table, 50, 2, 128)
    assert len(a) == len(b) == 50 and a != b
    everything, good, _ = _sample(table, 5000, 1, 128)
    assert len(everything) == good == 500


def test_bad_rows_are_counted_and_never_sampled():
    kept, good, bad = _sample(_corpus(40, bad=5), 100, 1, 16)
    assert (len(kept), good, bad) == (40, 40, 5)
    assert "" not in kept


def test_backend_errors_are_retried_and_superseded(tmp_path):
    from inpars_ray.stages.generate_parts import BACKEND_ERROR, PARTS, completed_doc_ids, read_generated, write_part

    def rows(doc_ids, errors):
        n = len(doc_ids)
        return pa.table({
            S.DOC_ID: doc_ids, S.QUERY_ID: [f"gen-{d}" for d in doc_ids],
            S.QUERY: [None if e else f"q {d}" for d, e in zip(doc_ids, errors)],
            S.TOKEN_LOGPROBS: [None if e else [-1.0] for e in errors],
            S.MEAN_LOGPROB: [None if e else -1.0 for e in errors], S.NUM_TOKENS: [None if e else 1 for e in errors],
            S.PROMPT_NAME: ["inpars"] * n, S.MODEL: ["m"] * n, S.BACKEND: ["openai"] * n, S.FEWSHOT_IDS: [[]] * n,
            S.ERROR: errors,
        }, schema=S.GENERATED)

    parts = tmp_path / PARTS
    parts.mkdir()
    write_part(rows(["a", "b", "c"], [None, BACKEND_ERROR + "HTTP 429", "prompt has 3000 tokens"]), parts)
    assert completed_doc_ids(tmp_path) == {"a", "c"}  # b failed in the backend: generate it again
    write_part(rows(["b"], [None]), parts)
    assert completed_doc_ids(tmp_path) == {"a", "b", "c"}
    final = read_generated(tmp_path)
    assert final.column(S.DOC_ID).to_pylist() == ["a", "b", "c"]
    assert final.column(S.ERROR).to_pylist() == [None, None, "prompt has 3000 tokens"]


def test_a_document_is_done_only_when_every_one_of_its_queries_is(tmp_path):
    from inpars_ray.stages.generate_parts import (
        BACKEND_ERROR,
        PARTS,
        completed_doc_ids,
        generated_query_id,
        read_generated,
        write_part,
    )

    def rows(pairs):
        n = len(pairs)
        return pa.table({
            S.DOC_ID: [d for d, _, _ in pairs], S.QUERY_ID: [generated_query_id(d, r) for d, r, _ in pairs],
            S.QUERY: [None if e else f"q {d} {r}" for d, r, e in pairs],
            S.TOKEN_LOGPROBS: [None if e else [-1.0] for _, _, e in pairs],
            S.MEAN_LOGPROB: [None if e else -1.0 for _, _, e in pairs],
            S.NUM_TOKENS: [None if e else 1 for _, _, e in pairs],
            S.PROMPT_NAME: ["inpars"] * n, S.MODEL: ["m"] * n, S.BACKEND: ["hf"] * n, S.FEWSHOT_IDS: [[]] * n,
            S.ERROR: [e for _, _, e in pairs],
        }, schema=S.GENERATED)

    parts = tmp_path / PARTS
    parts.mkdir()
    write_part(rows([("a", 0, None), ("a", 1, None), ("b", 0, None), ("b", 1, BACKEND_ERROR + "HTTP 500")]), parts)
    assert completed_doc_ids(tmp_path, queries_per_doc=2) == {"a"}
    assert completed_doc_ids(tmp_path, queries_per_doc=1) == {"a", "b"}
    write_part(rows([("b", 0, None), ("b", 1, None)]), parts)
    assert completed_doc_ids(tmp_path, queries_per_doc=2) == {"a", "b"}
    final = read_generated(tmp_path)
    assert final.column(S.QUERY_ID).to_pylist() == ["gen-a", "gen-a~s1", "gen-b", "gen-b~s1"]
    assert final.column(S.ERROR).null_count == 4
