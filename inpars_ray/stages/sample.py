"""The seeded document sample of the generate stage: which documents get a synthetic query.

A document is in the sample when ``hash(seed, doc_id)`` is among the N smallest. Each corpus block sends its
N best (hash, id) pairs (:func:`block_candidates`), the driver merges them in O(N) memory into a threshold
(:func:`merge_candidates`), and a second streamed pass keeps the documents at or below it
(:func:`below_threshold`). Blocks, cluster size and read order do not matter.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S

_CANDIDATES = pa.schema([("hashes", pa.list_(pa.uint64())), ("ids", pa.list_(pa.string())),
                         ("n_docs", pa.int64()), ("n_bad", pa.int64())])


def doc_hashes(doc_ids: list[str] | np.ndarray, seed: int) -> np.ndarray:
    """Seeded 64-bit hashes of document ids (SipHash keyed by the seed): the sample's ordering."""
    key = hashlib.sha256(f"inpars-ray-sample:{seed}".encode()).hexdigest()[:16]
    return pd.util.hash_array(np.asarray(doc_ids, dtype=object), hash_key=key, categorize=False)


def _good(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch.column("reason"))) if "reason" in batch.column_names else batch


def block_candidates(batch: pa.Table, n: int, seed: int) -> pa.Table:
    """One row per corpus block: its ``n`` smallest (hash, id) pairs and its good / bad row counts."""
    good = _good(batch)
    ids = np.asarray(good.column(S.DOC_ID).to_pylist(), dtype=str)
    hashes = doc_hashes(ids, seed)
    keep = np.lexsort((ids, hashes))[:n]
    return pa.table({"hashes": [hashes[keep].tolist()], "ids": [ids[keep].tolist()],
                     "n_docs": [good.num_rows], "n_bad": [batch.num_rows - good.num_rows]}, schema=_CANDIDATES)


def merge_candidates(rows: Any, n: int) -> tuple[tuple[int, str] | None, int, int]:
    """Merge :func:`block_candidates` rows into the sample's threshold (largest kept (hash, id)).

    Returns ``(threshold, good_docs, bad_rows)``; the threshold is None when the corpus has at most ``n``
    documents (all are kept). Memory stays O(n) whatever the number of blocks.
    """
    hashes = np.empty(0, dtype=np.uint64)
    ids = np.empty(0, dtype=str)
    total = bad = 0
    for row in rows:
        total += row["n_docs"]
        bad += row["n_bad"]
        hashes = np.concatenate([hashes, np.asarray(row["hashes"], dtype=np.uint64)])
        ids = np.concatenate([ids, np.asarray(row["ids"], dtype=str)])
        if len(hashes) > 2 * n:
            keep = np.lexsort((ids, hashes))[:n]
            hashes, ids = hashes[keep], ids[keep]
    if total <= n:
        return None, total, bad
    last = np.lexsort((ids, hashes))[n - 1]
    return (int(hashes[last]), str(ids[last])), total, bad


def below_threshold(batch: pa.Table, seed: int, threshold: tuple[int, str] | None) -> pa.Table:
    """The good documents of a corpus block that belong to the sample."""
    good = _good(batch)
    if threshold is None or good.num_rows == 0:
        return good.select(S.CORPUS.names)
    ids = np.asarray(good.column(S.DOC_ID).to_pylist(), dtype=str)
    hashes = doc_hashes(ids, seed)
    t_hash, t_id = np.uint64(threshold[0]), threshold[1]
    keep = (hashes < t_hash) | ((hashes == t_hash) & (ids <= t_id))
    return good.filter(pa.array(keep)).select(S.CORPUS.names)
