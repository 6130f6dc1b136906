"""A dev set made from the synthetic data, for choosing a training recipe without the test judgements.

The filtered queries are split *by source document*: a seeded share of the documents that have synthetic
queries (``fraction``, default 10%) is held out, every query generated from them becomes a dev query, and
every triple whose positive is one of them leaves the training data. A dev query's BM25 hits (top
``depth``) are the pairs a trial reranks; its source document is its one relevant document. Splitting by
document rather than by query keeps a document's other queries (near-paraphrases) out of training, so a
trial cannot score by remembering the document.

Nothing here reads the collection's queries or qrels: the collection is seen through :class:`CorpusOnly`,
whose ``queries_path`` and ``qrels_path`` raise, so the test judgements are unreachable from a sweep by
construction (tests/integration/stages/test_tune.py poisons them and checks that nothing changes).

Layers: :func:`dev_documents` and :func:`split_triples` are pure; :func:`build_dev_set` wires BM25 (Ray
actors, :func:`inpars_ray.stages.retrieve.retrieve_dataset`), the document store and the manifest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inpars_ray import schema as S
from inpars_ray.errors import CollectionError, ConfigError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.manifest import StageRecord, published
from inpars_ray.io.stage import StageResult, StageSpec, run_once
from inpars_ray.stageconfig import Field, stage_config

logger = logging.getLogger(__name__)

STAGE = "devset"
TRAIN_DIR = "train_triples"  #: the training part of the triples (a folder train() reads)
PAIRS, QRELS = "dev_pairs.parquet", "dev_qrels.parquet"
FIRST_STAGE_SCORE = "first_stage_score"  #: BM25 score of a dev pair (for the first-stage blend)
Judge = Literal["source", "fused"]
JUDGES: tuple[str, ...] = get_args(Judge)


@stage_config
class DevSetConfig:
    """How the synthetic dev set is cut from the filtered queries."""

    fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of the source documents (with their "
                            "queries and triples) held out as the dev set")
    depth: int = Field(20, ge=1, description="BM25 hits per dev query that a trial reranks")
    max_queries: int = Field(200, ge=1, description="at most this many dev queries (a seeded choice): each "
                             "evaluation scores max_queries x depth pairs")
    seed: int = Field(0, ge=0, description="seed of the document split")
    judge: Judge = Field("source", description="what a dev query's relevant documents are: source (its source "
                       "document only) or fused (the source document plus the top pseudo_relevant documents of "
                       "the teacher's scores fused with BM25's, a pseudo-reference after LARMOR, arXiv "
                       "2402.04853; needs inpars.teacher)")
    pseudo_relevant: int = Field(2, ge=1, description="with judge: fused, the fused ranking's top documents "
                                 "(besides the source document) judged relevant")
    bm25_weight: float = Field(1.0, ge=0.0, description="with judge: fused, BM25's weight in the fusion against "
                               "the teacher's (its rankers' weights sum to 1)")


@dataclasses.dataclass(frozen=True)
class CorpusOnly(Collection):
    """A collection seen by the sweep: its corpus, and nothing of its queries or judgements."""

    @classmethod
    def of(cls, collection: Collection) -> CorpusOnly:
        return cls(collection.spec, collection.root, collection.filesystem)

    def check_layout(self, split: str | None = None) -> None:
        if not self.exists(self.corpus_path()):
            raise CollectionError(f"collection {self.spec!r} has no corpus.jsonl")

    def queries_path(self) -> str:
        raise CollectionError("a tune sweep never reads the collection's queries: it chooses the recipe on "
                              "synthetic data only, so the test judgements stay unseen")

    def qrels_path(self, split: str) -> str:
        raise CollectionError(f"a tune sweep never reads the collection's qrels ({split}): it chooses the "
                              "recipe on synthetic data only, so the test judgements stay unseen")


def _rank_key(text: str, seed: int) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8, key=str(seed).encode()).digest()


def dev_documents(doc_ids: list[str], fraction: float, seed: int) -> set[str]:
    """``round(fraction * n)`` (at least 1) of the distinct ``doc_ids``, chosen by a seeded hash of each id:
    the same documents whatever order or files the queries came in."""
    distinct = sorted(set(doc_ids), key=lambda d: (_rank_key(d, seed), d))
    if len(distinct) < 2:
        raise ConfigError(f"a dev split needs queries from at least 2 documents, got {len(distinct)}")
    n = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    return set(distinct[:n])


def split_triples(triples: pa.Table, dev_docs: set[str]) -> pa.Table:
    """The triples whose positive (source) document is not held out."""
    held = pc.is_in(triples.column(S.POS_DOC_ID), value_set=pa.array(sorted(dev_docs), pa.string()))
    return triples.filter(pc.invert(held))


def pseudo_qrels(pairs: pa.Table, fused: np.ndarray, sources: pa.Table, top: int) -> pa.Table:
    """Dev qrels judged by a fused pseudo-reference: for each dev query, its source document and the ``top``
    best documents of ``fused`` (one score per row of ``pairs``: query_id, doc_id), each with relevance 1.

    A ranker's dev score against the source document alone rewards finding one document; against a fusion of
    several rankers it tracks the true ranking of systems better (LARMOR, arXiv 2402.04853: Kendall tau about
    0.70 against 0.51). Ties break by document id, so the qrels do not depend on row order.
    """
    qids = pairs.column(S.QUERY_ID).to_pylist()
    docs = pairs.column(S.DOC_ID).to_pylist()
    order = sorted(range(len(qids)), key=lambda i: (qids[i], -float(fused[i]), docs[i]))
    judged: dict[str, list[str]] = {}
    for qid, doc in zip(sources.column(S.QUERY_ID).to_pylist(), sources.column(S.DOC_ID).to_pylist()):
        judged.setdefault(qid, []).append(doc)
    picked: dict[str, int] = {}
    for i in order:
        qid, doc = qids[i], docs[i]
        if qid in judged and picked.get(qid, 0) < top and doc not in judged[qid]:
            judged[qid].append(doc)
            picked[qid] = picked.get(qid, 0) + 1
    rows = [(q, d) for q, ds in judged.items() for d in ds]
    return pa.table({S.QUERY_ID: [q for q, _ in rows], S.DOC_ID: [d for _, d in rows],
                     S.RELEVANCE: pa.array([1] * len(rows), pa.int64())}, schema=S.QRELS)


def _fused_scores(pairs: pa.Table, teacher: Any, bm25_weight: float) -> np.ndarray:
    """The teacher's rankers and BM25 on the dev pairs, each standardised over all pairs, mixed with the
    teacher's weights (summing to 1) and ``bm25_weight`` (the teacher stage's :func:`fuse`)."""
    import ray

    from inpars_ray.models.rankers import score_dataset
    from inpars_ray.stages.teacher import fuse

    ds = ray.data.from_arrow(pairs.select([S.QUERY_ID, S.DOC_ID, S.QUERY, S.TEXT]))
    columns = []
    for i, ranker in enumerate(teacher.rankers):
        ds = score_dataset(ds, ranker, num_actors=teacher.num_actors, batch_rows=teacher.rows_per_call,
                           num_gpus_per_actor=teacher.num_gpus_per_actor, score_column=f"judge_{i}")
        columns.append(f"judge_{i}")
    scored = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    # the actors may return the rows in another order: line them up with the pairs by (query, doc)
    at = {(q, d): i for i, (q, d) in enumerate(zip(scored.column(S.QUERY_ID).to_pylist(),
                                                   scored.column(S.DOC_ID).to_pylist()))}
    take = pa.array([at[(q, d)] for q, d in zip(pairs.column(S.QUERY_ID).to_pylist(),
                                                pairs.column(S.DOC_ID).to_pylist())])
    scores = [scored.column(c).take(take).to_numpy(zero_copy_only=False) for c in columns]
    scores.append(pairs.column(FIRST_STAGE_SCORE).to_numpy(zero_copy_only=False))
    weights = list(teacher.weights or [1.0] * len(teacher.rankers))
    weights = [w / sum(weights) for w in weights] + [bm25_weight]
    stats = [(float(s.mean()), float(s.std())) for s in scores]
    return fuse(scores, stats, weights)


def _read(files: list[storage.Location], columns: list[str] | None = None) -> pa.Table:
    tables = [artifacts.read_parquet(f, columns=columns) for f in files]  # page checksums verified
    if not tables:
        raise ConfigError("no rows to build a dev set from")
    return pa.concat_tables(tables, promote_options="default")


def _write_parquet(table: pa.Table, where: storage.Location) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, **artifacts.PARQUET_WRITE)
    where.write_bytes(buf.getvalue())


def build_dev_set(queries_dir: storage.PathLike, triples_dir: storage.PathLike, index_dir: storage.PathLike,
                  collection: Any, out: storage.PathLike, config: DevSetConfig, bm25: Any = None,
                  load_config: Any = None, teacher: Any = None) -> StageResult:
    """Split the filtered queries (``queries_dir``: the filter's or consistency's output) and the mined triples
    (``triples_dir``) by source document; write the training triples, the dev pairs (BM25 top ``depth`` with
    texts and BM25 scores) and dev qrels under ``out`` (a rerun with the same inputs returns the earlier result).

    ``collection`` is only read for document texts, through :class:`CorpusOnly`. ``teacher`` (a
    :class:`~inpars_ray.stages.teacher.TeacherConfig`) judges the dev pairs when ``config.judge`` is fused.
    """
    import ray

    from inpars_ray.io.docstore import ensure_store, open_store
    from inpars_ray.schema import KEPT_DIR
    from inpars_ray.stages.retrieve import BM25Config, retrieve_dataset

    corpus = CorpusOnly.of(collection)
    bm25 = bm25 or BM25Config()
    if config.judge == "fused" and teacher is None:
        raise ConfigError("tune.dev.judge: fused judges the dev set with the teacher: set inpars.teacher")
    out = storage.location(out)
    query_files, queries_key = published(queries_dir, ("filter", "consistency"), KEPT_DIR)
    triple_files, triples_key = published(triples_dir, ("mine", "teacher"), "triples")
    info = corpus.filesystem.get_file_info(corpus.corpus_path())
    payload = {"queries": queries_key, "triples": triples_key, "index": _index_key(index_dir),
               "corpus": [info.size, info.mtime_ns], "config": config, "bm25": bm25}
    if config.judge == "fused":
        from inpars_ray.io.manifest import artifact_key

        payload.update(teacher=teacher, teacher_models=[artifact_key(r.model) for r in teacher.rankers])
    def body(record: StageRecord) -> None:
        kept = _read(query_files, [S.QUERY_ID, S.QUERY, S.DOC_ID])
        triples = _read(triple_files)
        S.require_columns(triples.column_names, S.TRIPLES.names[:6], f"devset ({triples_dir})")
        held = dev_documents(kept.column(S.DOC_ID).to_pylist(), config.fraction, config.seed)
        dev_queries = kept.filter(pc.is_in(kept.column(S.DOC_ID), value_set=pa.array(sorted(held), pa.string())))
        if dev_queries.num_rows > config.max_queries:
            order = sorted(range(dev_queries.num_rows),
                           key=lambda i: _rank_key(dev_queries.column(S.QUERY_ID)[i].as_py(), config.seed))
            dev_queries = dev_queries.take(pa.array(sorted(order[:config.max_queries])))
        train_part = split_triples(triples, held)
        if train_part.num_rows == 0:
            raise ConfigError("every triple's source document went to the dev set: lower tune.dev.fraction")

        with record.timed("bm25"):
            ds = retrieve_dataset(index_dir, ray.data.from_arrow(dev_queries.select([S.QUERY_ID, S.QUERY])),
                                  config.depth, bm25)
            hits = pa.concat_tables([pa.Table.from_batches([], S.RUN), *ray.get(ds.to_arrow_refs())],
                                    promote_options="default")
        with record.timed("texts"):
            store = open_store(ensure_store(corpus, load_config))
            texts = store.texts(hits.column(S.DOC_ID), missing="null", what="dev hit")
            q_pos = pc.index_in(hits.column(S.QUERY_ID), value_set=dev_queries.column(S.QUERY_ID))
            pairs = pa.table({S.QUERY_ID: hits.column(S.QUERY_ID), S.QUERY: dev_queries.column(S.QUERY).take(q_pos),
                              S.DOC_ID: hits.column(S.DOC_ID), S.TEXT: texts,
                              FIRST_STAGE_SCORE: hits.column(S.SCORE).cast(pa.float64())})
            pairs = pairs.filter(pc.is_valid(pairs.column(S.TEXT)))
        qrels = pa.table({S.QUERY_ID: dev_queries.column(S.QUERY_ID), S.DOC_ID: dev_queries.column(S.DOC_ID),
                          S.RELEVANCE: pa.array([1] * dev_queries.num_rows, pa.int64())}, schema=S.QRELS)
        sources = qrels
        if config.judge == "fused" and pairs.num_rows:
            with record.timed("judge"):
                qrels = pseudo_qrels(pairs, _fused_scores(pairs, teacher, config.bm25_weight), sources,
                                     config.pseudo_relevant)
        found = pc.is_in(pc.binary_join_element_wise(sources.column(S.QUERY_ID), sources.column(S.DOC_ID), "\t"),
                         value_set=pc.binary_join_element_wise(pairs.column(S.QUERY_ID), pairs.column(S.DOC_ID), "\t"))

        _write_parquet(train_part, out / TRAIN_DIR / "part-00000.parquet")
        _write_parquet(pairs, out / PAIRS)
        _write_parquet(qrels, out / QRELS)
        grouped = train_part.group_by([S.QUERY_ID, S.POS_DOC_ID]).aggregate([]).num_rows
        record.counts.update(documents_held_out=len(held), dev_queries=dev_queries.num_rows, dev_pairs=pairs.num_rows,
                             dev_judged=qrels.num_rows,
                             dev_source_in_hits=int(pc.sum(found).as_py() or 0), train_triples=train_part.num_rows,
                             train_lists=grouped, triples_held_out=triples.num_rows - train_part.num_rows)
        logger.info("[devset] %d dev queries from %d held-out documents; %d of %d triples left for training",
                    dev_queries.num_rows, len(held), train_part.num_rows, triples.num_rows)

    return run_once(StageSpec(STAGE, out, payload, outputs=(TRAIN_DIR, PAIRS, QRELS)), body)


def _index_key(index_dir: storage.PathLike) -> str:
    from inpars_ray.io.manifest import input_key

    return input_key(index_dir)


def dev_paths(out: storage.PathLike) -> dict[str, str]:
    """What train() takes as ``dev``, and the training triples folder, of a built dev set under ``out``."""
    loc = storage.location(out)
    return {"pairs": (loc / PAIRS).uri, "qrels": (loc / QRELS).uri, "triples": (loc / TRAIN_DIR).uri}
