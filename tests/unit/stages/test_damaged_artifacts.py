"""Stages read the Parquet artifacts of other stages (and their own outputs) through
:func:`inpars_ray.io.artifacts.read_parquet`: a byte flipped in a file that keeps its size is an
:class:`ArtifactDamagedError` naming the file, never wrong rows (no Ray, no JVM: each read happens before
any Ray work, or is tested on its own)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ArtifactDamagedError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.catalog import resolve
from inpars_ray.io.manifest import StageRecord, read_manifest
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stages import filter as F
from inpars_ray.stages import mine as M
from inpars_ray.stages.consistency import ConsistencyConfig, run_consistency
from tests.unit.io.test_damage import flip_a_data_byte

ROWS = 300  # enough rows that the flipped byte lands in a data page, not in the encoding's header


def _publish(root: Path, subdir: str, stage: str, table: pa.Table) -> Path:
    """``table`` as ``root/subdir/part-0.parquet`` (with page checksums), listed by a complete ``stage``
    manifest in ``root``."""
    (root / subdir).mkdir(parents=True)
    part = root / subdir / "part-0.parquet"
    pq.write_table(table, part, **artifacts.PARQUET_WRITE)
    StageRecord(stage, {"k": 1}).write(root, files=artifacts.snapshot(root, subdir))
    return part


def _kept_queries() -> pa.Table:
    n = ROWS
    return pa.table({S.DOC_ID: [f"d{i}" for i in range(n)], S.QUERY_ID: [f"q{i}" for i in range(n)],
                     S.QUERY: [f"query {i}" for i in range(n)], S.TOKEN_LOGPROBS: [[-0.5]] * n,
                     S.MEAN_LOGPROB: [-0.5] * n, S.NUM_TOKENS: [1] * n, S.PROMPT_NAME: ["inpars"] * n,
                     S.MODEL: ["m"] * n, S.BACKEND: ["hf"] * n, S.FEWSHOT_IDS: [[]] * n, S.ERROR: [None] * n,
                     S.FILTER_SCORE: [float(i) for i in range(n)]}, schema=S.FILTERED)


def _triples() -> pa.Table:
    n = ROWS
    return pa.table({S.QUERY_ID: [f"q{i:03d}" for i in range(n)], S.QUERY: [f"query {i}" for i in range(n)],
                     S.POS_DOC_ID: [f"p{i}" for i in range(n)], S.POS_TEXT: [f"positive text {i}" for i in range(n)],
                     S.NEG_DOC_ID: [f"n{i}" for i in range(n)], S.NEG_TEXT: [f"negative text {i}" for i in range(n)],
                     S.NEG_RANK: [1 + i % 7 for i in range(n)], S.FILTER_SCORE: [0.0] * n}, schema=S.TRIPLES)


def test_consistency_stops_on_a_damaged_candidate_part_and_marks_the_filter_for_redoing(tmp_path):
    part = _publish(tmp_path / "filter", F.KEPT_DIR, "filter", _kept_queries())
    StageRecord("index", {"k": 1}).write(tmp_path / "index", files={})  # read for its key only
    flip_a_data_byte(part)
    with pytest.raises(ArtifactDamagedError, match="kept/part-0.parquet"):
        run_consistency(tmp_path / "filter", resolve("bundled/tiny-science"), tmp_path / "index",
                        tmp_path / "out", ConsistencyConfig(ranker=RankerConfig(model="some/ranker")))
    manifest = read_manifest(tmp_path / "filter")
    assert manifest["status"] == "damaged" and manifest["damaged"] == ["kept/part-0.parquet"]


def test_mine_exports_its_triples_and_stops_on_a_damaged_part(tmp_path):
    part = _publish(tmp_path / "mine", M.TRIPLES_DIR, "mine", _triples())
    lines = M.export_tsv(tmp_path / "mine").read_text().splitlines()
    assert len(lines) == ROWS and lines[0] == "query 0\tpositive text 0\tnegative text 0"
    flip_a_data_byte(part)
    with pytest.raises(ArtifactDamagedError, match="triples/part-0.parquet"):
        M.export_tsv(tmp_path / "mine", tmp_path / "again.tsv")
    assert read_manifest(tmp_path / "mine")["status"] == "damaged"
    assert not (tmp_path / "again.tsv").exists()


def flip_a_byte_of(path: Path, column: str) -> None:
    """Flip one byte in the middle of ``column``'s pages (the column the reader under test reads)."""
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(0).column(meta.schema.names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + chunk.total_compressed_size // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def _written(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "data-0.parquet", **artifacts.PARQUET_WRITE)
    return folder / "data-0.parquet"


def test_filter_counts_what_it_wrote_and_stops_on_a_damaged_output(tmp_path):
    out = tmp_path / "filter"
    kept = _written(out / F.KEPT_DIR, _kept_queries())
    reasons = ["too_short"] * 200 + ["duplicate"] * 100
    dropped = _written(out / F.DROPPED_DIR, pa.table({S.QUERY_ID: [f"x{i}" for i in range(ROWS)],
                                                      S.DROP_REASON: reasons}))
    assert F._count_rows(storage.location(out / F.KEPT_DIR)) == ROWS
    assert F._count_reasons(storage.location(out / F.DROPPED_DIR)) == {"too_short": 200, "duplicate": 100}
    assert F._count_rows(storage.location(tmp_path / "nothing")) == 0
    assert F._count_reasons(storage.location(tmp_path / "nothing")) == {}
    for part, count, column in ((kept, F._count_rows, S.QUERY_ID), (dropped, F._count_reasons, S.DROP_REASON)):
        flip_a_byte_of(part, column)
        with pytest.raises(ArtifactDamagedError, match=f"{part.parent.name}/data-0.parquet"):
            count(storage.location(part.parent))
