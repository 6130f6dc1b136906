"""Stage 1 — load: read a BEIR-layout collection into validated Arrow tables and Ray Datasets.

Three layers, as every stage:

* pure parsers over lines (:func:`parse_corpus_lines`, :func:`parse_queries_lines`,
  :func:`parse_qrels_lines`) that turn raw bytes into rows of :mod:`inpars_ray.schema` and report every
  bad row with its file and 1-based line;
* a Ray datasource (:class:`CorpusJsonlDatasource`) that streams ``corpus.jsonl`` in blocks of lines,
  so no process ever holds the whole corpus;
* :func:`read_corpus`, which wires the datasource into a Ray Dataset.

A bad row (malformed JSON, non-UTF-8 bytes, missing ``_id`` / ``text``, an empty or oversized document)
is an error naming file and line, unless ``skip_bad_rows`` is set: then it is kept out of the data, and
reported (file, line, reason) in the stage's error report, and counted in its manifest.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import FormatError
from inpars_ray.io.catalog import Collection
from inpars_ray.stageconfig import Field, stage_config

logger = logging.getLogger(__name__)

#: columns of an error report: one row per input row that was not used
BAD_ROWS = pa.schema(
    [
        pa.field(S.SOURCE_FILE, pa.string()),
        pa.field(S.SOURCE_LINE, pa.int64()),
        pa.field("reason", pa.string()),
    ]
)


@stage_config
class LoadConfig:
    """How strictly a collection is read."""

    skip_bad_rows: bool = Field(False, description="report bad rows and go on without them, instead of "
                                "failing on the first one")
    max_doc_chars: int = Field(1_000_000, ge=1, description="a document whose title + text is longer is a bad "
                               "row (guards the indexer and the generator against runaway inputs)")
    lines_per_block: int = Field(20_000, ge=1, description="corpus lines parsed per Ray block")


@dataclasses.dataclass
class BadRows:
    """Bad rows found while parsing: (file, line, reason) each."""

    rows: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)

    def add(self, path: str, line: int, reason: str) -> None:
        self.rows.append((path, line, reason))

    def extend(self, other: BadRows) -> None:
        self.rows.extend(other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def raise_first(self) -> None:
        if self.rows:
            path, line, reason = self.rows[0]
            more = f" (and {len(self.rows) - 1} more bad rows; pass --skip-bad-rows to skip them)" if len(self) > 1 else \
                " (pass --skip-bad-rows to skip bad rows)"
            raise FormatError(path, line, reason + more)

    def to_table(self) -> pa.Table:
        cols: list[Sequence[Any]] = list(zip(*self.rows)) if self.rows else [[], [], []]
        return pa.table(dict(zip(BAD_ROWS.names, cols)), schema=BAD_ROWS)


#: a UTF-8 byte order mark, which some editors write at the start of a file
BOM = b"\xef\xbb\xbf"


def _without_bom(lines: Iterable[bytes], first_line: int) -> Iterator[bytes]:
    """``lines`` with a byte order mark removed from the file's first line (a BOM is not data)."""
    for offset, raw in enumerate(lines):
        yield raw[len(BOM):] if offset == 0 and first_line == 1 and raw.startswith(BOM) else raw


def _decode_json_object(raw: bytes, path: str, line: int, bad: BadRows) -> dict[str, Any] | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad.add(path, line, f"not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})")
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        bad.add(path, line, f"malformed JSON: {exc.msg} at column {exc.colno}")
        return None
    except (ValueError, RecursionError) as exc:  # a number of more than 4,300 digits; nesting too deep
        bad.add(path, line, f"malformed JSON: {type(exc).__name__}: {str(exc)[:120]}")
        return None
    if not isinstance(obj, dict):
        bad.add(path, line, f"expected a JSON object, got {type(obj).__name__}")
        return None
    return obj


def _string_field(obj: dict[str, Any], key: str, path: str, line: int, bad: BadRows,
                  required: bool) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            bad.add(path, line, f"missing field {key!r}")
        return None if required else ""
    value = obj[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "_id":
        if isinstance(value, float) and not math.isfinite(value):
            bad.add(path, line, f"field {key!r} is the number {value}, not an id")
            return None
        return str(value)  # some BEIR-like dumps write numeric ids
    if not isinstance(value, str):
        bad.add(path, line, f"field {key!r} must be a string, got {type(value).__name__}")
        return None
    try:  # JSON may escape a lone surrogate ("\\ud800"), which no UTF-8 file or Arrow string can hold
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad.add(path, line, f"field {key!r} holds a lone surrogate ({value[exc.start]!r}), not valid Unicode")
        return None
    return value


def _json_objects(lines: Iterable[bytes], path: str, first_line: int, bad: BadRows) -> Iterator[tuple[int, dict]]:
    """(1-based line, object) of every non-blank line that holds a JSON object; the rest go to ``bad``."""
    for offset, raw in enumerate(_without_bom(lines, first_line)):
        if not raw.strip():
            continue
        obj = _decode_json_object(raw, path, first_line + offset, bad)
        if obj is not None:
            yield first_line + offset, obj


def parse_corpus_lines(lines: Iterable[bytes], path: str, first_line: int,
                       config: LoadConfig = LoadConfig()) -> tuple[pa.Table, BadRows]:
    """Parse corpus JSONL lines into a :data:`schema.CORPUS` table plus the bad rows found.

    Blank lines are skipped silently (they carry no row). ``first_line`` is the 1-based number of the
    first line given.
    """
    ids, titles, texts, lines_out = [], [], [], []
    bad = BadRows()
    for line, obj in _json_objects(lines, path, first_line, bad):
        doc_id = _string_field(obj, "_id", path, line, bad, required=True)
        if doc_id is None:
            continue
        if (problem := _id_problem(doc_id)) is not None:
            bad.add(path, line, problem)
            continue
        text = _string_field(obj, "text", path, line, bad, required=True)
        title = _string_field(obj, "title", path, line, bad, required=False)
        if text is None or title is None:
            continue
        if not text.strip() and not title.strip():
            bad.add(path, line, f"document {doc_id!r} is empty (no title, no text)")
            continue
        if len(text) + len(title) > config.max_doc_chars:
            bad.add(path, line, f"document {doc_id!r} has {len(text) + len(title)} characters, "
                                f"over max_doc_chars={config.max_doc_chars}")
            continue
        ids.append(doc_id)
        titles.append(title)
        texts.append(text)
        lines_out.append(line)
    table = pa.table(
        {S.DOC_ID: ids, S.TITLE: titles, S.TEXT: texts, S.SOURCE_FILE: [path] * len(ids), S.SOURCE_LINE: lines_out},
        schema=S.CORPUS,
    )
    return table, bad


def _id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a document or query id (empty, or whitespace a TREC run cannot carry), or None."""
    if not value.strip():
        return "empty '_id'"
    if any(c.isspace() for c in value):
        return f"'_id' {value!r} contains whitespace, which TREC run files cannot carry"
    return None


def parse_queries_lines(lines: Iterable[bytes], path: str, first_line: int = 1) -> tuple[pa.Table, BadRows]:
    """Parse ``queries.jsonl`` lines into a :data:`schema.QUERIES` table plus bad rows."""
    ids, texts = [], []
    bad = BadRows()
    seen: dict[str, int] = {}
    for line, obj in _json_objects(lines, path, first_line, bad):
        qid = _string_field(obj, "_id", path, line, bad, required=True)
        text = _string_field(obj, "text", path, line, bad, required=True) if qid is not None else None
        if qid is None or text is None:
            continue
        if (problem := _id_problem(qid)) is not None:
            bad.add(path, line, problem)
            continue
        if not text.strip():
            bad.add(path, line, f"query {qid!r} has empty text")
            continue
        if qid in seen:
            bad.add(path, line, f"duplicate query id {qid!r} (first at line {seen[qid]})")
            continue
        seen[qid] = line
        ids.append(qid)
        texts.append(text)
    return pa.table({S.QUERY_ID: ids, S.QUERY: texts}, schema=S.QUERIES), bad


def parse_qrels_lines(lines: Iterable[bytes], path: str, first_line: int = 1,
                      known_queries: set[str] | None = None) -> tuple[pa.Table, BadRows]:
    """Parse a BEIR qrels TSV (``query-id corpus-id score`` with a header line) into :data:`schema.QRELS`.

    A header is recognised by a non-numeric third field on the first non-blank line. With
    ``known_queries``, a judgement for any other query id is a bad row.
    """
    qids, dids, rels = [], [], []
    bad = BadRows()
    seen: dict[tuple[str, str], int] = {}
    header_checked = False
    for offset, raw in enumerate(_without_bom(lines, first_line)):
        line = first_line + offset
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            bad.add(path, line, f"not valid UTF-8 (byte {exc.start})")
            continue
        fields = text.split("\t")
        if not header_checked:
            header_checked = True
            if len(fields) == 3 and not _is_int(fields[2]):
                continue
        if len(fields) != 3:
            bad.add(path, line, f"expected 3 tab-separated fields (query-id, corpus-id, score), got {len(fields)}")
            continue
        qid, did, score = fields
        if not qid or not did:
            bad.add(path, line, "empty query-id or corpus-id")
            continue
        if not _is_int(score):
            bad.add(path, line, f"score {score!r} is not an integer")
            continue
        if known_queries is not None and qid not in known_queries:
            bad.add(path, line, f"query-id {qid!r} is not in queries.jsonl")
            continue
        if (qid, did) in seen:
            bad.add(path, line, f"duplicate judgement for ({qid!r}, {did!r}) (first at line {seen[qid, did]})")
            continue
        seen[qid, did] = line
        qids.append(qid)
        dids.append(did)
        rels.append(int(score))
    return pa.table({S.QUERY_ID: qids, S.DOC_ID: dids, S.RELEVANCE: rels}, schema=S.QRELS), bad


_INT = re.compile(r"\s*[-+]?[0-9]+\s*", re.ASCII)


def _is_int(value: str) -> bool:
    # not int(): it also takes "1_0" (10) and non-ASCII digits ("\u0661"), which no qrels file means
    return _INT.fullmatch(value) is not None


def id_hashes(ids: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
    """Stable 64-bit hashes of ids, for duplicate and membership checks without holding every id."""
    values = ids.to_numpy(zero_copy_only=False) if hasattr(ids, "to_numpy") else np.asarray(ids, dtype=object)
    return pd.util.hash_array(values.astype(object), categorize=False)


def iter_lines(collection: Collection, path: str) -> Iterator[bytes]:
    """Stream the lines of a file of the collection (local or remote) as bytes."""
    with collection.filesystem.open_input_stream(path) as raw:
        yield from io.BufferedReader(raw, buffer_size=1 << 20)


def read_queries(collection: Collection, config: LoadConfig = LoadConfig()) -> tuple[pa.Table, BadRows]:
    """Read and validate ``queries.jsonl`` (queries are small: read in one process)."""
    path = collection.queries_path()
    table, bad = parse_queries_lines(iter_lines(collection, path), collection.display("queries.jsonl"))
    if not config.skip_bad_rows:
        bad.raise_first()
    if table.num_rows == 0:
        raise FormatError(collection.display("queries.jsonl"), 0, "no queries")
    return table, bad


def read_qrels(collection: Collection, split: str, queries: pa.Table | None = None,
               config: LoadConfig = LoadConfig()) -> tuple[pa.Table, BadRows]:
    """Read and validate ``qrels/{split}.tsv``; with ``queries``, every query-id must name a query."""
    shown = collection.display("qrels", f"{split}.tsv")
    known = set(queries.column(S.QUERY_ID).to_pylist()) if queries is not None else None
    table, bad = parse_qrels_lines(iter_lines(collection, collection.qrels_path(split)), shown, known_queries=known)
    if not config.skip_bad_rows:
        bad.raise_first()
    if table.num_rows == 0:
        raise FormatError(shown, 0, "no relevance judgements")
    return table, bad


# --- the corpus as a Ray Dataset ----------------------------------------------------------------------
#: a corpus block as the datasource yields it: good rows have a null ``reason``, bad rows a reason and
#: empty id/title/text, so that every input line is accounted for downstream.
CORPUS_WITH_REASON = S.CORPUS.append(pa.field("reason", pa.string()))


def _with_bad_rows(good: pa.Table, bad: BadRows) -> pa.Table:
    good = good.append_column("reason", pa.nulls(good.num_rows, pa.string()))
    if not len(bad):
        return good
    n = len(bad)
    files, lines, reasons = (list(col) for col in zip(*bad.rows))
    bad_table = pa.table(
        {S.DOC_ID: [""] * n, S.TITLE: [""] * n, S.TEXT: [""] * n, S.SOURCE_FILE: files, S.SOURCE_LINE: lines,
         "reason": reasons},
        schema=CORPUS_WITH_REASON,
    )
    return pa.concat_tables([good, bad_table])


def _datasource_class() -> type:
    """Build the datasource class lazily, so importing this module does not import Ray."""
    from ray.data.datasource import FileBasedDatasource

    class CorpusJsonlDatasource(FileBasedDatasource):
        """Streams a BEIR ``corpus.jsonl`` as validated blocks of ``lines_per_block`` lines."""

        _FILE_EXTENSIONS = ["jsonl", "json"]

        def __init__(self, paths: str | list[str], config: LoadConfig, display_prefix: str, **kwargs: Any):
            super().__init__(paths, **kwargs)
            self._config = config
            self._display_prefix = display_prefix

        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            shown = f"{self._display_prefix}{path}"
            reader = io.BufferedReader(f, buffer_size=1 << 20)
            first = 1
            while True:
                chunk = [line for _, line in zip(range(self._config.lines_per_block), reader)]
                if not chunk:
                    return
                good, bad = parse_corpus_lines(chunk, shown, first, self._config)
                if len(bad) and not self._config.skip_bad_rows:
                    bad.raise_first()
                first += len(chunk)
                yield _with_bad_rows(good, bad)

    return CorpusJsonlDatasource


def read_corpus(collection: Collection, config: LoadConfig = LoadConfig()) -> Any:
    """The collection's corpus as a streamed Ray Dataset of :data:`CORPUS_WITH_REASON` rows.

    Rows with a non-null ``reason`` are bad rows (only present with ``skip_bad_rows``); use
    :func:`split_bad_rows` on batches to separate them.
    """
    import ray

    collection.check_layout()
    source = _datasource_class()(
        collection.corpus_path(), config, "" if collection.is_local else "gs://",
        filesystem=collection.filesystem,
    )
    return ray.data.read_datasource(source)


def split_bad_rows(batch: pa.Table) -> tuple[pa.Table, BadRows]:
    """Separate a corpus block into its good rows (:data:`schema.CORPUS`) and its bad rows."""
    import pyarrow.compute as pc

    is_bad = pc.is_valid(batch.column("reason"))
    bad = BadRows()
    bad_rows = batch.filter(is_bad)
    for f, ln, r in zip(*(bad_rows.column(c).to_pylist() for c in (S.SOURCE_FILE, S.SOURCE_LINE, "reason"))):
        bad.add(f, ln, r)
    return batch.filter(pc.invert(is_bad)).drop_columns(["reason"]), bad
