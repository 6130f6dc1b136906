"""TREC run files (``qid Q0 docid rank score tag``), local or ``gs://``, and the manifest beside a run.

One reader and one writer for every stage that reads or writes a run (retrieve, rerank, evaluate). A run
file's manifest is ``<run>.manifest.json`` beside it (:func:`run_manifest_name`); :func:`run_spec`
declares such a stage for :func:`inpars_ray.io.stage.run_once`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from inpars_ray import schema as S
from inpars_ray.io import storage
from inpars_ray.io.stage import StageSpec

logger = logging.getLogger(__name__)


def read_trec_run(path: storage.PathLike) -> pa.Table:
    """Read a TREC run file (``qid Q0 docid rank score tag``, local or ``gs://``) as a :data:`schema.RUN` table."""
    loc = storage.location(path)
    if loc.size() == 0:
        return S.RUN.empty_table()
    with loc.open_input() as fh:
        table = _read_trec(fh)
    return pa.table({S.QUERY_ID: table["qid"], S.DOC_ID: table["docid"], S.RANK: table["rank"],
                     S.SCORE: table["score"]}, schema=S.RUN)


def _read_trec(source: Any) -> pa.Table:
    return pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(column_names=["qid", "q0", "docid", "rank", "score", "tag"]),
        parse_options=pacsv.ParseOptions(delimiter=" "),
        convert_options=pacsv.ConvertOptions(column_types={"qid": pa.string(), "docid": pa.string(),
                                                           "rank": pa.int64(), "score": pa.float64()}),
    )


def trec_lines(run: pa.Table, tag: str = "inpars-ray") -> list[str]:
    """The TREC run lines (``qid Q0 docid rank score tag``) of a :data:`schema.RUN` table."""
    cols = (run.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE))
    return [f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n" for qid, did, rank, score in zip(*cols)]


def write_trec_run(run: pa.Table, path: storage.PathLike, tag: str = "inpars-ray") -> None:
    """Write a :data:`schema.RUN` table as a TREC run file (atomically)."""
    write_trec_stream([run], path, tag)


def write_trec_stream(batches: Any, path: storage.PathLike, tag: str = "inpars-ray") -> tuple[int, set[str]]:
    """Stream :data:`schema.RUN` batches into a TREC run file, local or ``gs://``, whole or not at all;
    returns (hits, query ids seen). The driver holds one batch at a time, never the whole run.
    """
    hits, seen = 0, set()
    with storage.location(path).open_output() as fh:
        for batch in batches:
            fh.write("".join(trec_lines(batch, tag)).encode("utf-8"))
            seen.update(batch.column(S.QUERY_ID).to_pylist())
            hits += batch.num_rows
    return hits, seen


def run_manifest_name(run_path: Path | storage.Location) -> str:
    return f"{run_path.name}.manifest.json"


def run_spec(stage: str, run_path: storage.Location, key: Any) -> StageSpec:
    """The declaration of a stage whose output is one run file: its manifest is ``<run>.manifest.json`` beside
    it, so that several runs share a folder (a run's evaluation files live there too)."""
    return StageSpec(stage, run_path.parent, key, outputs=(run_path.name,), manifest_name=run_manifest_name(run_path))
