"""The pure parsers of the load stage: every bad-row kind is named with its file and line."""
from __future__ import annotations

import json

import pytest

from inpars_ray import schema as S
from inpars_ray.errors import FormatError
from inpars_ray.io.load import LoadConfig, id_hashes, parse_corpus_lines, parse_qrels_lines, parse_queries_lines


def lines(*rows) -> list[bytes]:
    return [r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode() for r in rows]


def test_good_rows_keep_their_line_numbers():
    table, bad = parse_corpus_lines(
        lines({"_id": "a", "title": "T", "text": "x"}, b"\n", {"_id": "b", "text": "y"}), "c.jsonl", 10)
    assert len(bad) == 0
    assert table.column(S.DOC_ID).to_pylist() == ["a", "b"]
    assert table.column(S.TITLE).to_pylist() == ["T", ""]  # a missing title is allowed (BEIR has such)
    assert table.column(S.SOURCE_LINE).to_pylist() == [10, 12]


@pytest.mark.parametrize(
    "row, reason",
    [
        (b'{"_id": "a", "text": broken}\n', "malformed JSON"),
        (b'["_id", "a"]\n', "expected a JSON object"),
        ({"title": "t", "text": "x"}, "missing field '_id'"),
        ({"_id": "a", "title": "t"}, "missing field 'text'"),
        ({"_id": "a", "text": 5}, "field 'text' must be a string"),
        ({"_id": " ", "text": "x"}, "empty '_id'"),
        ({"_id": "a b", "text": "x"}, "contains whitespace"),
        ({"_id": "a", "title": "", "text": "  "}, "is empty"),
        (b'{"_id": "a", "text": "caf\xe9"}\n', "not valid UTF-8"),
    ],
)
def test_each_bad_row_kind_is_reported_with_file_and_line(row, reason):
    table, bad = parse_corpus_lines(lines({"_id": "ok", "text": "fine"}, row), "corpus.jsonl", 1)
    assert table.num_rows == 1
    assert len(bad) == 1
    path, line, why = bad.rows[0]
    assert (path, line) == ("corpus.jsonl", 2)
    assert reason in why
    with pytest.raises(FormatError, match=r"corpus\.jsonl:2: "):
        bad.raise_first()


def test_huge_document_is_a_bad_row():
    _, bad = parse_corpus_lines(lines({"_id": "a", "text": "x" * 101}), "c", 1, LoadConfig(max_doc_chars=100))
    assert "over max_doc_chars=100" in bad.rows[0][2]


def test_numeric_ids_are_read_as_strings():
    table, bad = parse_corpus_lines(lines({"_id": 42, "text": "x"}), "c", 1)
    assert not len(bad) and table.column(S.DOC_ID).to_pylist() == ["42"]


def test_queries_duplicate_ids_and_empty_text():
    table, bad = parse_queries_lines(
        lines({"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}, {"_id": "q2", "text": ""}), "queries.jsonl")
    assert table.column(S.QUERY_ID).to_pylist() == ["q1"]
    assert [(r[1], r[2].split(" (")[0]) for r in bad.rows] == [(2, "duplicate query id 'q1'"), (3, "query 'q2' has empty text")]


def test_qrels_header_bad_fields_duplicates_and_unknown_queries():
    raw = [b"query-id\tcorpus-id\tscore\n", b"q1\td1\t2\n", b"q1\td1\t1\n", b"q1\td2\n", b"q1\td3\tx\n",
           b"q9\td1\t1\n", b"q2\td4\t0\n"]
    table, bad = parse_qrels_lines(raw, "test.tsv", known_queries={"q1", "q2"})
    assert list(zip(*(table.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RELEVANCE))))  == [
        ("q1", "d1", 2), ("q2", "d4", 0)]
    assert [r[1] for r in bad.rows] == [3, 4, 5, 6]
    assert "not in queries.jsonl" in bad.rows[-1][2]


def test_id_hashes_are_stable_and_distinguish_ids():
    h1 = id_hashes(["a", "b", "a"])
    assert h1[0] == h1[2] and h1[0] != h1[1]
    assert (id_hashes(["a"]) == h1[:1]).all()
