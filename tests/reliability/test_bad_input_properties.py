"""Bad input, property-based: the corpus, queries and qrels parsers over random files.

Each generated file mixes good rows (known), bad rows of every kind the loader names (malformed JSON,
random bytes, non-UTF-8, JSON values that are not objects, missing or mistyped fields, empty texts,
whitespace in ids, oversized documents, lone surrogates, numbers too long to convert, deep nesting,
duplicates, unknown query ids), blank lines, CRLF line ends and a leading BOM. The property:

* strict (the default): the file parses with every good row kept, in order, with its line number, or
  fails with a :class:`FormatError` naming the file and the line of the first bad row;
* with ``skip_bad_rows``: every non-blank line (the qrels header aside) is either kept or listed in the
  bad rows with its line: ``kept + bad == lines``, never a silent drop.

Files go through the real readers (``read_queries``, ``read_qrels``, the corpus datasource's block
reader with a block of a few lines, so block boundaries fall anywhere), not only the pure parsers.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from inpars_ray.errors import FormatError
from inpars_ray.io import catalog
from inpars_ray.io.load import CORPUS_WITH_REASON, LoadConfig, _datasource_class, read_qrels, read_queries
from tests.reliability.conftest import FULL

MAX_DOC_CHARS = 60  # small, so "oversized" rows are cheap to generate
SETTINGS = settings(max_examples=300 if FULL else 60, deadline=None, derandomize=not FULL, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- strategies ---------------------------------------------------------------------------------------
_chars = st.characters(codec="utf-8")  # every code point but surrogates
ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Z")), min_size=1, max_size=8).filter(
    lambda s: not any(c.isspace() for c in s))
texts = st.text(_chars, min_size=1, max_size=30).filter(lambda s: s.strip())
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(_chars, max_size=10)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(_chars, max_size=5), inner, max_size=3), max_leaves=8)
line_ends = st.sampled_from([b"\n", b"\r\n"])
blanks = st.sampled_from([b"", b"   ", b"\t", b"\r"])


def _dump(obj: object, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8")


def _random_bytes(tabs_ok: bool = True) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=40).filter(
        lambda b: b"\n" not in b and b.strip() and (tabs_ok or b.count(b"\t") != 2))


#: JSON lines that are never a good corpus or queries row, whatever the parser's other rules
_bad_json_lines = (
    _random_bytes(),
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: _dump(v, True)),
    st.dictionaries(st.text(_chars, max_size=5).filter(lambda k: k != "_id"), json_values, max_size=3).map(
        lambda d: _dump(d, False)),
    st.builds(lambda i, v: _dump({"_id": i, "text": v}, True), ids,
              json_values.filter(lambda v: v is not None and not isinstance(v, str))),
    st.builds(lambda v, t: _dump({"_id": v, "text": t}, True), st.booleans() | st.lists(st.integers(), max_size=2), texts),
    st.builds(lambda i: _dump({"_id": i, "text": "  "}, True), ids),                       # empty text
    st.builds(lambda i, t: _dump({"_id": i + " x", "text": t}, True), ids, texts),         # whitespace in id
    st.builds(lambda i: b'{"_id": "%s", "text": "a\\ud83d"}' % i.encode(), st.sampled_from(["s1", "s2"])),  # lone surrogate
    st.just(b'{"_id": "big", "text": "x", "n": ' + b"7" * 5000 + b"}"),                   # int too long to convert
    st.just(b"[" * 5000 + b"]" * 5000),                                                    # nesting too deep
    st.just(b'{"_id": NaN, "text": "x"}'),                                                # a number, not finite
    st.just(b'{"_id": "\xff\xfe", "text": "x"}'),                                          # not UTF-8
)
#: and those that are bad corpus rows only
_bad_corpus_lines = (
    st.builds(lambda i: _dump({"_id": i, "text": "x" * (MAX_DOC_CHARS + 1)}, True), ids),  # oversized
    st.builds(lambda i: _dump({"_id": i, "text": "x", "title": 3}, True), ids),            # title not a string
)


@st.composite
def jsonl_files(draw, kind: str) -> tuple[bytes, list[tuple[int, str, str, str]], set[int]]:
    """(file bytes, good rows as (line, id, title, text), lines that are bad rows) of a corpus or queries file."""
    items = draw(st.lists(st.one_of(
        st.tuples(st.just("good"), ids, texts, st.text(_chars, max_size=10) if kind == "corpus" else st.just(""),
                  st.booleans()),
        st.tuples(st.just("bad"), st.one_of(*_bad_json_lines, *(_bad_corpus_lines if kind == "corpus" else ()))),
        st.tuples(st.just("blank"), blanks),
    ), max_size=12))
    bom = draw(st.booleans())
    good: list[tuple[int, str, str, str]] = []
    seen: set[str] = set()

    def good_row(n: int, item: tuple) -> tuple[bytes, bool]:
        _, doc_id, text, title, ascii_only = item
        raw = _dump({"_id": doc_id, "text": text, **({"title": title} if kind == "corpus" else {})}, ascii_only)
        if kind == "corpus" and len(text) + len(title) > MAX_DOC_CHARS:
            return raw, False
        if kind == "queries" and doc_id in seen:
            return raw, False  # a duplicate query id
        seen.add(doc_id)
        good.append((n, doc_id, title, text))
        return raw, True

    data, bad = _file_bytes(draw, items, bom, good_row)
    return data, good, bad


def _file_bytes(draw, items: list[tuple], bom: bool, good_row) -> tuple[bytes, set[int]]:
    """The file ``items`` make (a line each, with a drawn line end; a BOM first when ``bom``) and the numbers of
    its lines that are bad rows: every "bad" item, and each "good" one that ``good_row(n, item)`` refuses."""
    out, bad = [], set()
    for n, item in enumerate(items, start=1):
        raw, ok = good_row(n, item) if item[0] == "good" else (item[1], item[0] != "bad")
        if not ok:
            bad.add(n)
        out.append(raw + draw(line_ends))
    data = b"".join(out)
    return (b"\xef\xbb\xbf" + data if bom else data), bad


@st.composite
def qrels_files(draw) -> tuple[bytes, set[str], list[tuple[int, str, str, int]], set[int]]:
    """(file bytes, known query ids, good judgements as (line, qid, did, rel), bad lines) of a qrels TSV."""
    known = draw(st.sets(ids, min_size=1, max_size=4))
    qid = st.sampled_from(sorted(known))
    good_row = st.tuples(st.just("good"), qid, ids, st.integers(-2, 3))
    bad_row = st.one_of(
        _random_bytes(tabs_ok=False),
        st.builds(lambda q, d: f"{q}\t{d}".encode(), qid, ids),                            # two fields
        st.builds(lambda q, d, r: f"{q}\t{d}\t{r}\t{r}".encode(), qid, ids, st.integers()),  # four
        st.builds(lambda q, d, s: f"{q}\t{d}\t{s}".encode(), qid, ids,
                  st.sampled_from(["x", "1.5", "1_0", "\u0661", "", "1e3"])),             # not an integer
        st.builds(lambda d: f"\t{d}\t1".encode(), ids),                                    # empty query-id
        st.builds(lambda q, d: f"{q}?unknown\t{d}\t1".encode(), qid, ids),                 # unknown query
        st.builds(lambda q: q.encode() + b"\t\xe9\t1", qid),                                # not UTF-8
    ).map(lambda b: ("bad", b))
    header = draw(st.booleans())
    first = [("header", b"query-id\tcorpus-id\tscore")] if header else [draw(good_row)]
    items = first + draw(st.lists(st.one_of(good_row, bad_row, st.tuples(st.just("blank"), blanks)), max_size=12))
    bom = draw(st.booleans())
    good: list[tuple[int, str, str, int]] = []
    seen: set[tuple[str, str]] = set()

    def good_row(n: int, item: tuple) -> tuple[bytes, bool]:
        _, q, d, rel = item
        if (q, d) in seen:
            return f"{q}\t{d}\t{rel}".encode(), False  # a duplicate judgement
        seen.add((q, d))
        good.append((n, q, d, rel))
        return f"{q}\t{d}\t{rel}".encode(), True

    data, bad = _file_bytes(draw, items, bom, good_row)
    return data, known, good, bad


# --- the collection folder a file is read from -----------------------------------------------------------
def _collection(files: dict[str, bytes]) -> tuple[catalog.Collection, Path]:
    root = Path(tempfile.mkdtemp(prefix="inpars-prop-"))
    defaults = {"corpus.jsonl": b'{"_id": "d", "text": "t"}\n', "queries.jsonl": b'{"_id": "q", "text": "t"}\n',
                "qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq\td\t1\n"}
    for name, data in {**defaults, **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return catalog.resolve(str(root)), root


def _expect_first_bad(exc: FormatError, name: str, bad: set[int]) -> None:
    assert exc.path.endswith(name), exc
    assert exc.line == min(bad), f"first bad row is line {min(bad)}, the error names {exc.line}: {exc}"


# --- queries --------------------------------------------------------------------------------------------
@SETTINGS
@given(jsonl_files("queries"), st.booleans())
@example((b"\xef\xbb\xbf" + b'{"_id": "q1", "text": "a question"}\r\n', [(1, "q1", "", "a question")], set()), False)
@example((b'{"_id": "a", "text": "x \\udc80"}\n', [], {1}), True)
def test_queries_keep_every_good_row_or_name_the_bad_line(case, skip):
    data, good, bad = case
    collection, root = _collection({"queries.jsonl": data})
    try:
        if not skip and bad:
            with pytest.raises(FormatError) as err:
                read_queries(collection)
            _expect_first_bad(err.value, "queries.jsonl", bad)
            return
        if not good:
            with pytest.raises(FormatError, match="no queries"):
                read_queries(collection, LoadConfig(skip_bad_rows=skip))
            return
        table, found = read_queries(collection, LoadConfig(skip_bad_rows=skip))
        assert list(zip(table.column("query_id").to_pylist(), table.column("query").to_pylist())) == \
            [(i, t) for _, i, _, t in good]
        assert sorted(line for _, line, _ in found.rows) == sorted(bad)  # every other line, listed
        assert all(path.endswith("queries.jsonl") for path, _, _ in found.rows)
    finally:
        shutil.rmtree(root)


# --- qrels ----------------------------------------------------------------------------------------------
@SETTINGS
@given(qrels_files(), st.booleans())
@example((b"\xef\xbb\xbfq1\td1\t1\n", {"q1"}, [(1, "q1", "d1", 1)], set()), False)
@example((b"q1\td1\t1_0\n", {"q1"}, [], {1}), True)
def test_qrels_keep_every_good_row_or_name_the_bad_line(case, skip):
    data, known, good, bad = case
    queries = b"".join(_dump({"_id": q, "text": "t"}, False) + b"\n" for q in sorted(known))
    collection, root = _collection({"queries.jsonl": queries, "qrels/test.tsv": data})
    try:
        qtable, _ = read_queries(collection)
        config = LoadConfig(skip_bad_rows=skip)
        if not skip and bad:
            with pytest.raises(FormatError) as err:
                read_qrels(collection, "test", qtable, config)
            _expect_first_bad(err.value, "test.tsv", bad)
            return
        if not good:
            with pytest.raises(FormatError, match="no relevance judgements"):
                read_qrels(collection, "test", qtable, config)
            return
        table, found = read_qrels(collection, "test", qtable, config)
        assert table.to_pylist() == [{"query_id": q, "doc_id": d, "relevance": r} for _, q, d, r in good]
        assert sorted(line for _, line, _ in found.rows) == sorted(bad)
    finally:
        shutil.rmtree(root)


# --- corpus, through the datasource's block reader --------------------------------------------------------
def _read_corpus_file(path: Path, config: LoadConfig):
    """Every block the corpus datasource yields for one file (the code a Ray read task runs)."""
    source = _datasource_class()(str(path), config, "", filesystem=pafs.LocalFileSystem())
    with pafs.LocalFileSystem().open_input_stream(str(path)) as f:
        return list(source._read_stream(f, str(path)))


@SETTINGS
@given(jsonl_files("corpus"), st.booleans(), st.integers(1, 4))
@example((b'{"_id": "d1", "title": "", "text": "' + b"w " * 600_000 + b'"}\n', [], {1}), True, 2)  # a huge line
@example((b"\xef\xbb\xbf" + b'{"_id": "d1", "text": "doc"}\r\n\r\n{"_id": "d2", "text": "\\ud800"}\n',
          [(1, "d1", "", "doc")], {3}), True, 2)
def test_corpus_blocks_keep_every_good_row_or_name_the_bad_line(case, skip, lines_per_block):
    data, good, bad = case
    root = Path(tempfile.mkdtemp(prefix="inpars-prop-"))
    path = root / "corpus.jsonl"
    path.write_bytes(data)
    config = LoadConfig(skip_bad_rows=skip, max_doc_chars=MAX_DOC_CHARS, lines_per_block=lines_per_block)
    try:
        if not skip and bad:
            with pytest.raises(FormatError) as err:
                _read_corpus_file(path, config)
            _expect_first_bad(err.value, "corpus.jsonl", bad)
            return
        blocks = _read_corpus_file(path, config)
        rows = [r for b in blocks for r in b.to_pylist()]
        assert all(b.schema.equals(CORPUS_WITH_REASON) for b in blocks)
        kept = [(r["source_line"], r["doc_id"], r["title"], r["text"]) for r in rows if r["reason"] is None]
        assert kept == good
        assert sorted(r["source_line"] for r in rows if r["reason"] is not None) == sorted(bad)
        assert all(r["source_file"] == str(path) for r in rows)
    finally:
        shutil.rmtree(root)
