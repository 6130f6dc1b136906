"""The one document join of the stages, on a real document store (no Ray): what each stage's function sees."""
from __future__ import annotations

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import InparsError
from inpars_ray.io import docstore as D
from inpars_ray.stages import mine, rerank
from inpars_ray.stages.ranker_input import _from_store, query_of, text_of

DOCS = pa.table({S.DOC_ID: ["d1", "d2", "d3"], S.TITLE: ["Coral  reefs", "", "Lithium"],
                 S.TEXT: ["bleach\nunder heat.", " sorted(xs) sorts ", "stores energy"]})


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("store")
    D.build_store([DOCS], path)
    return str(path)


def test_the_stage_function_sees_only_the_documents_the_store_holds(store):
    seen = []

    def fn(rows: pa.Table, documents: pa.Table, tag: str) -> pa.Table:
        seen.append((tag, sorted(documents.column(S.DOC_ID).to_pylist())))
        return rows

    batch = pa.table({S.NEG_DOC_ID: ["d3", "nope", "d1", "d3", None]})
    assert _from_store(batch, store, fn, S.NEG_DOC_ID, {"tag": "x"}) is batch
    assert seen == [("x", ["d1", "d3"])]  # distinct ids, unknown ones absent as in the hash exchange


def test_rerank_pairs_get_the_one_document_text_and_null_where_unknown(store):
    run = pa.table({S.QUERY_ID: ["q1", "q1", "q2"], S.DOC_ID: ["d1", "gone", "d2"], S.RANK: [1, 2, 1],
                    S.SCORE: [3.0, 2.0, 1.0]})
    queries = pa.table({S.QUERY_ID: ["q2", "q1"], S.QUERY: ["sort a list", "coral bleaching"]})
    pairs = _from_store(run, store, rerank.attach_texts, S.DOC_ID, {"queries": queries})
    assert pairs.column(S.TEXT).to_pylist() == ["Coral reefs bleach under heat.", None, "sorted(xs) sorts"]
    assert pairs.column(S.QUERY).to_pylist() == ["coral bleaching", "coral bleaching", "sort a list"]


def test_mine_refuses_a_triple_whose_document_the_store_lacks(store):
    rows = pa.table({S.POS_DOC_ID: ["d3", "d2"]})
    out = _from_store(rows, store, mine.attach_text, S.POS_DOC_ID, {"key": S.POS_DOC_ID, "column": S.POS_TEXT})
    assert out.column(S.POS_TEXT).to_pylist() == ["Lithium stores energy", "sorted(xs) sorts"]
    with pytest.raises(InparsError, match="'nope' \\(pos_doc_id\\)"):
        _from_store(pa.table({S.POS_DOC_ID: ["d1", "nope"]}), store, mine.attach_text, S.POS_DOC_ID,
                    {"key": S.POS_DOC_ID, "column": S.POS_TEXT})


def test_text_of_and_query_of_look_up_by_id():
    rows = pa.table({S.QUERY_ID: ["b", "z", "a"], S.DOC_ID: ["d2", "d1", "x"]})
    assert text_of(rows, DOCS).to_pylist() == ["sorted(xs) sorts", "Coral reefs bleach under heat.", None]
    queries = pa.table({S.QUERY_ID: ["a", "b"], S.QUERY: ["qa", "qb"], S.DOC_ID: ["pa", "pb"]})
    assert query_of(rows, queries).to_pylist() == ["qb", None, "qa"]
    assert query_of(rows, queries, S.DOC_ID).to_pylist() == ["pb", None, "pa"]
