"""The stages' one document join on a local Ray: the document store and the hash exchange give the same rows."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.io import catalog
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.text import document_text
from inpars_ray.stages import filter as F
from inpars_ray.stages import mine, rerank
from inpars_ray.stages.ranker_input import join_documents
from tests.conftest import BUNDLED


def _rows(ray, ids: list[str]):
    table = pa.table({S.QUERY_ID: [f"q{i % 5}" for i in range(len(ids))], S.DOC_ID: ids,
                      S.RANK: list(range(1, len(ids) + 1)), S.SCORE: [float(-i) for i in range(len(ids))]})
    return ray.data.from_arrow([table.slice(0, 7), table.slice(7, 20), table.slice(27)])  # uneven blocks


def _sorted(ds) -> list[dict]:
    return sorted(ds.take_all(), key=lambda r: json.dumps(r, sort_keys=True))


@pytest.mark.parametrize("kind", ["rerank", "filter", "mine"])
def test_store_and_exchange_give_the_same_rows(ray_session, kind):
    collection = catalog.resolve(str(BUNDLED))
    corpus = {d["_id"]: d for d in map(json.loads, (BUNDLED / "corpus.jsonl").read_text().splitlines())}
    known = sorted(corpus)[::9]
    ids = known + (["not-a-doc", "nor-this"] if kind != "mine" else []) + known[:3]  # repeats, unknowns
    queries = pa.table({S.QUERY_ID: [f"q{i}" for i in range(4)], S.QUERY: [f"query {i}" for i in range(4)]})
    fn, kwargs = {"rerank": (rerank.attach_texts, {"queries": queries}), "filter": (F._with_document, {}),
                  "mine": (mine.attach_text, {"key": S.DOC_ID, "column": S.POS_TEXT})}[kind]
    got = {use_store: _sorted(join_documents(_rows(ray_session, ids), collection, LoadConfig(), fn, partitions=3,
                                             use_store=use_store, **kwargs)) for use_store in (True, False)}
    assert got[True] == got[False] and len(got[True]) == len(ids)
    text_column = {"rerank": S.TEXT, "filter": S.TEXT, "mine": S.POS_TEXT}[kind]
    for row in got[True]:
        doc = corpus.get(row[S.DOC_ID])
        if kind == "filter":
            assert (row[S.TITLE], row[S.TEXT]) == ((doc["title"], doc["text"]) if doc else (None, None))
        else:
            assert row[text_column] == (document_text(doc["title"], doc["text"]) if doc else None)
    if kind == "rerank":
        assert {r[S.QUERY] for r in got[True] if r[S.QUERY_ID] == "q4"} == {None}  # a query the table lacks
