"""The documents behind (query, doc_id) rows: the one place a stage gets the texts a ranker or trainer reads.

Filter, consistency, mine and rerank each hold rows that name documents by id (a generated query's source
document, a BM25 hit, a mined negative) and need the documents' texts. :func:`join_documents` is how every
one of them gets them, in one of two ways:

* by id from the corpus's document store (:mod:`inpars_ray.io.docstore`), on a one-node cluster: a lookup
  per batch, no pass over the corpus and no shuffle;
* else by a hash exchange of the rows with the corpus on the document id
  (:func:`inpars_ray.runtime.exchange.hash_exchange`): no process holds the corpus or all the rows.

Either way the stage's own pure function receives one part of its rows and a table of the documents
(``doc_id``, ``title``, ``text``) that holds every document the part names and the corpus has (unknown ids
are simply absent), and builds its output from them; :func:`document_texts` of those columns is the text a
model reads (:mod:`inpars_ray.io.text`). The pure per-stage functions are the same on both paths, so the
output does not depend on which one ran.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.text import document_texts

#: ``fn(rows, documents, **kwargs) -> pa.Table``: one part of a stage's rows and the documents they name
JoinFn = Callable[..., pa.Table]


def join_documents(rows: Any, collection: Collection, load_config: LoadConfig, fn: JoinFn, *, on: str = S.DOC_ID,
                   partitions: int = 4, use_store: bool | None = None, **kwargs: Any) -> Any:
    """``fn(part, documents, **kwargs)`` over the parts of the Ray Dataset ``rows``, where ``documents`` holds
    (doc_id, title, text) of the documents the part names in column ``on``.

    ``use_store`` None takes the document store when every Ray worker can read it
    (:func:`inpars_ray.io.docstore.store_for`: a one-node cluster), else the hash exchange over
    ``partitions``; True or False picks one (tests run both on one node).
    """
    from inpars_ray.io.docstore import ensure_store, store_for
    from inpars_ray.runtime.exchange import corpus_documents, hash_exchange

    store = (store_for(collection, load_config) if use_store is None else
             ensure_store(collection, load_config) if use_store else None)
    if store is not None:
        return rows.map_batches(_from_store, fn_kwargs={"store": str(store), "fn": fn, "on": on, "kwargs": kwargs},
                                batch_format="pyarrow")
    return hash_exchange([rows, corpus_documents(collection, load_config)], [on, S.DOC_ID], partitions, fn,
                         **kwargs)


def _from_store(batch: pa.Table, store: str, fn: JoinFn, on: str, kwargs: dict[str, Any]) -> pa.Table:
    from inpars_ray.io.docstore import open_store

    docs = open_store(store).fetch(pc.unique(batch.column(on)).drop_null())
    # the store gives null title and text for an id it lacks; the exchange would give no row: drop them
    return fn(batch, docs.filter(pc.or_(pc.is_valid(docs.column(S.TITLE)), pc.is_valid(docs.column(S.TEXT)))),
              **kwargs)


def text_of(rows: pa.Table, documents: pa.Table, key: str = S.DOC_ID) -> pa.Array:
    """The text (:func:`inpars_ray.io.text.document_texts`) of the document each row names in ``key``;
    null where ``documents`` lacks it."""
    where = pc.index_in(rows.column(key), value_set=documents.column(S.DOC_ID))
    return document_texts(documents.column(S.TITLE).take(where), documents.column(S.TEXT).take(where))


def query_of(rows: pa.Table, queries: pa.Table, column: str = S.QUERY) -> pa.ChunkedArray | pa.Array:
    """``column`` of the query each row names in ``query_id`` (``queries`` holds one row per query id);
    null where ``queries`` lacks it."""
    return queries.column(column).take(pc.index_in(rows.column(S.QUERY_ID), value_set=queries.column(S.QUERY_ID)))
