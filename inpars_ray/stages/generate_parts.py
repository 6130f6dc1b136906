"""The generate stage's part files: how a batch's rows are written (whole, named by its documents) and read back.

``<out>/parts/part-<hash of the batch's doc ids>.parquet`` holds the rows (queries and error rows) of one
backend batch. Used by :mod:`.generate` (write, resume, publish) and by whatever reads a generate output.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inpars_ray import schema as S
from inpars_ray.errors import ArtifactDamagedError
from inpars_ray.io import artifacts, storage

logger = logging.getLogger(__name__)

PARTS = "parts"
#: prefix of error rows the backend reported (API refused, quota, out of memory...): unlike the stage's own
#: deterministic errors (prompt too long, empty answer), these documents are generated again on a rerun
BACKEND_ERROR = "backend error: "
#: the prompt and few-shot query ids a run used (kept out of evaluation)
FEWSHOT_FILE = "fewshot.json"


def part_name(doc_ids: list[str]) -> str:
    """A part file's name: a hash of its documents, so a retried batch overwrites its own file."""
    return f"part-{hashlib.sha256(chr(0).join(sorted(doc_ids)).encode()).hexdigest()[:20]}.parquet"


def write_part(table: pa.Table, parts_dir: storage.PathLike) -> str:
    """Write ``table`` as a part file, whole or not at all (local or object store); return its name."""
    name = part_name(table.column(S.DOC_ID).to_pylist())
    with storage.location(parts_dir).join(name).open_output() as fh:
        pq.write_table(table, fh, **artifacts.PARQUET_WRITE)
    return name


def read_parts(parts_dir: storage.Location) -> list[pa.Table]:
    """Every part file, read whole with its page checksums verified.

    Every part a writer left is whole (written by one upload or one rename), so all of them count. A part
    damaged later (truncated, overwritten, a flipped bit) fails its footer or a page checksum: it is deleted,
    and its documents are generated again, rather than failing every rerun or being read as done.
    """
    out = []
    for name in parts_dir.files(recursive=False, suffix=".parquet"):
        if not name.startswith("part-"):
            continue
        part = parts_dir.join(name)
        try:
            out.append(artifacts.read_parquet(part, schema=S.GENERATED))
        except ArtifactDamagedError:
            logger.warning("generate: deleting the damaged %s: its documents are generated again", part)
            part.delete()
    return out


def needs_retry(table: pa.Table) -> pa.ChunkedArray:
    """Per row: whether it is a backend error (asked again on a rerun)."""
    return pc.fill_null(pc.starts_with(table.column(S.ERROR), BACKEND_ERROR), False)


def completed_doc_ids(out_dir: storage.PathLike, queries_per_doc: int = 1) -> set[str]:
    """Documents that have a final row (a query or a deterministic error) for each of their
    ``queries_per_doc`` queries in complete part files.

    A document with a query whose only row is a backend error is not done: a rerun generates it again.
    """
    final: dict[str, set[str]] = {}
    for t in read_parts(storage.location(out_dir).join(PARTS)):
        t = t.filter(pc.invert(needs_retry(t)))
        for doc, qid in zip(t.column(S.DOC_ID).to_pylist(), t.column(S.QUERY_ID).to_pylist()):
            final.setdefault(doc, set()).add(qid)
    return {doc for doc, qids in final.items() if len(qids) >= queries_per_doc}


def read_generated(out_dir: storage.PathLike) -> pa.Table:
    """All rows of a generate output (queries and error rows), one per generated query, sorted by doc id
    and query id.

    A query retried after a backend error has two rows; its later, final one is kept.
    """
    tables = read_parts(storage.location(out_dir).join(PARTS))
    if not tables:
        return S.GENERATED.empty_table()
    table = pa.concat_tables(tables)
    table = table.append_column("_retry", needs_retry(table)).sort_by(
        [(S.DOC_ID, "ascending"), (S.QUERY_ID, "ascending"), ("_retry", "ascending")])
    table = table.drop_columns(["_retry"])
    ids = table.column(S.QUERY_ID).to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return table.filter(pa.array(first))


def generated_query_id(doc_id: str, round_: int = 0) -> str:
    """The id of query ``round_`` generated for ``doc_id`` (round 0: the first, decoded as configured)."""
    return f"gen-{doc_id}" if round_ == 0 else f"gen-{doc_id}~s{round_}"


def max_new_tokens(manifest: dict[str, Any]) -> int | None:
    """The ``max_new_tokens`` a generate run decoded with, from its manifest (whose key pins the stage's
    ``GenerateConfig`` under ``config``, as ``run_generate`` builds it); None if it names none."""
    limit = (manifest.get("config", {}).get("config", {}).get("generation", {}) or {}).get("max_new_tokens")
    return int(limit) if limit is not None else None


def fewshot_query_ids(generate_dir: storage.PathLike) -> list[str]:
    """The query ids of the few-shot examples a generate output (or published data read in its place) used."""
    return list((storage.location(generate_dir) / FEWSHOT_FILE).read_json()["fewshot_query_ids"])
