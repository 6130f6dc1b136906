"""Hash-partitioned exchange on plain Ray tasks: the distributed join and group-by the stages share.

``Dataset.join`` and ``groupby().map_groups`` on Ray 2.60 crashed workers on this project's machines
(SIGABRT, "Mutex corrupt") and were slow at small sizes; this exchange co-partitions Ray Datasets by a
stable hash of a key column and runs one function per partition, on Ray tasks and object refs, so no
process holds more than one partition of each input. Used to join documents to queries (filter, mine,
rerank) and to regroup rows by query (rerank) or by normalised query text (filter's duplicate check).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.errors import FormatError
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig, read_corpus, split_bad_rows


def hash_split(block: pa.Table, key: str, parts: int) -> tuple[pa.Table, ...] | pa.Table:
    """Split a block into ``parts`` tables by a stable hash of ``key`` (one Ray return per part)."""
    import pandas as pd

    values = block.column(key).to_numpy(zero_copy_only=False).astype(object)
    part = pd.util.hash_array(values, categorize=False) % np.uint64(parts)
    pieces = tuple(block.filter(pa.array(part == p)) for p in range(parts))
    return pieces if parts > 1 else pieces[0]


def _reduce_partition(fn: Any, counts: list[int], schemas: list[pa.Schema], kwargs: dict[str, Any],
                      *tables: pa.Table) -> pa.Table:
    grouped, start = [], 0
    for count, schema in zip(counts, schemas):
        mine = [t.cast(schema) if t.schema != schema else t for t in tables[start:start + count]]
        grouped.append(pa.concat_tables(mine) if mine else schema.empty_table())
        start += count
    return fn(*grouped, **kwargs)


def hash_exchange(datasets: list[Any], keys: list[str], parts: int, fn: Any, **kwargs: Any) -> Any:
    """Co-partition Ray Datasets by hash of their key columns, then run ``fn(*tables)`` once per partition.

    Partition ``p`` of every input goes to the same Ray task, so ``fn`` sees all rows of each key it is
    given (a distributed join or group-by). It runs on plain Ray tasks and object refs: no process holds
    more than one partition of each input.
    """
    import ray

    split = ray.remote(hash_split)
    reduce = ray.remote(_reduce_partition)
    per_input, counts, schemas = [], [], []
    for ds, key in zip(datasets, keys):
        refs = ds.to_arrow_refs()
        schemas.append(_arrow_schema(ds))
        per_input.append([[r] if parts == 1 else r for r in
                          (split.options(num_returns=parts).remote(b, key, parts) for b in refs)])
        counts.append(len(refs))
    results = [reduce.remote(fn, counts, schemas, kwargs, *[blk[p] for refs in per_input for blk in refs])
               for p in range(parts)]
    return ray.data.from_arrow_refs(results)


def _arrow_schema(ds: Any) -> pa.Schema:
    schema = ds.schema()
    return schema.base_schema if hasattr(schema, "base_schema") else schema


def left_join_unique(left: pa.Table, right: pa.Table, key: str, right_key: str | None = None) -> pa.Table:
    """``left`` with the columns of ``right`` whose ``right_key`` equals its ``key`` (null where none does).

    ``right_key`` must be unique in ``right`` (a document id in a corpus); a repeated id is an error.
    """
    right_key = right_key or key
    ids = right.column(right_key).cast(pa.string())
    if right.num_rows and pc.count_distinct(ids).as_py() != right.num_rows:
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise FormatError("corpus.jsonl", 0, f"duplicate document id {dup!r}; "
                                             "run 'inpars-ray index' to list every bad row")
    picked = right.drop_columns([right_key]).take(pc.index_in(left.column(key).cast(pa.string()), value_set=ids))
    for name in picked.column_names:
        left = left.append_column(name, picked.column(name))
    return left


def corpus_documents(collection: Collection, load_config: LoadConfig) -> Any:
    """The corpus as a Ray Dataset of (doc_id, title, text); bad rows are left to the loader's rules."""
    return read_corpus(collection, load_config).map_batches(
        lambda b: split_bad_rows(b)[0].select([S.DOC_ID, S.TITLE, S.TEXT]), batch_format="pyarrow")
