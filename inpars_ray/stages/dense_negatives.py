"""Dense negatives for the mine stage: documents a bi-encoder ranks high for a synthetic query, beside BM25's.

BM25's negatives share the query's words; a dense retriever's share its meaning, which is what a neural
reranker confuses (GPL, arXiv 2112.07577, mines its negatives with dense retrievers; InPars mines with BM25
only). Here a bi-encoder (the start model, or any bi-encoder the engine loads) embeds the corpus and the
kept queries; for each query, ``negatives`` documents are drawn (seeded, per query, as the BM25 draw) from its
dense top ``depth``, never the positive, never a document BM25 already gave it, and never a *near-copy* of
the positive: a document whose embedding has cosine similarity of at least ``max_similarity`` with the
positive's (a duplicate or a near-duplicate, which the teacher would score as relevant and hard labels would
call negative). Every excluded candidate is counted.

The search is exact (one matrix product per block of queries against the whole corpus, on the driver): the
corpus embeddings take ``documents x dimension x 4`` bytes (100,000 documents x 384: about 150 MB). A corpus of
many millions of documents needs an approximate index, which this module does not build.

Layers: :func:`draw_dense` and :func:`dense_candidates` are pure; :class:`Embedder` is the Ray Data UDF
(loads the model once per actor); :func:`add_dense_negatives` wires them into the mine stage.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import InparsError
from inpars_ray.stageconfig import Field, stage_config

logger = logging.getLogger(__name__)

EMBEDDING = "embedding"


@stage_config
class DenseNegativesConfig:
    """Negatives from a bi-encoder's top hits, added to BM25's."""

    model: str = Field(description="a bi-encoder the engine loads (a Hugging Face id, a folder, local:minilm)")
    negatives: int = Field(2, ge=1, description="dense negatives drawn per query (beside mine.negatives from BM25)")
    depth: int = Field(30, ge=1, description="the dense top hits per query the negatives are drawn from")
    max_similarity: float = Field(0.95, gt=0.0, le=1.0, description="a candidate whose embedding's cosine with "
                                  "the positive's is at least this is a near-copy of it, never a negative")
    max_length: int = Field(256, ge=8, description="tokens per text when embedding")
    batch_size: int = Field(64, ge=1, description="texts per forward pass")
    num_actors: int = Field(1, ge=1, description="embedding actors (each loads the model once)")
    rows_per_call: int = Field(512, ge=1, description="texts handed to one actor call")
    query_block: int = Field(1024, ge=1, description="queries searched per matrix product on the driver")


# --- pure functions -------------------------------------------------------------------------------------
def dense_candidates(query_vecs: np.ndarray, doc_vecs: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``depth`` best documents by cosine (rows of normalised vectors): (indices, scores), best
    first; ties break by the lower document index, so the order does not depend on the BLAS."""
    scores = query_vecs @ doc_vecs.T
    depth = min(depth, doc_vecs.shape[0])
    if depth == 0:
        return np.zeros((len(query_vecs), 0), dtype=np.int64), np.zeros((len(query_vecs), 0), dtype=np.float32)
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def draw_dense(rng: np.random.Generator, candidates: list[str], pos_doc_id: str, similarity_to_pos: np.ndarray,
               taken: set[str], n: int, max_similarity: float) -> tuple[list[str], list[int], dict[str, int]]:
    """Draw ``n`` negatives uniformly without replacement from ``candidates`` (doc ids, best first): never the
    positive, a document in ``taken`` (BM25's negatives) or a near-copy of the positive. Returns (ids, their
    1-based dense ranks, in rank order; counts of the candidates excluded per reason)."""
    eligible, excluded = [], {"positive": 0, "near_copy": 0, "already_bm25": 0}
    for rank, (doc, sim) in enumerate(zip(candidates, similarity_to_pos), start=1):
        if doc == pos_doc_id:
            excluded["positive"] += 1
        elif sim >= max_similarity:
            excluded["near_copy"] += 1
        elif doc in taken:
            excluded["already_bm25"] += 1
        else:
            eligible.append((doc, rank))
    take = min(n, len(eligible))
    chosen = np.sort(rng.choice(len(eligible), size=take, replace=False)) if take else np.zeros(0, int)
    return [eligible[i][0] for i in chosen], [eligible[i][1] for i in chosen], excluded


# --- the actor ----------------------------------------------------------------------------------------
class Embedder:
    """Ray Data UDF: the normalised embeddings of a text column; loads the bi-encoder once per actor."""

    def __init__(self, config: DenseNegativesConfig, documents: bool) -> None:
        from inpars_ray.models.rankers import Ranker, RankerConfig

        self.ranker = Ranker(RankerConfig(model=config.model, family="bi-encoder", max_length=config.max_length,
                                          batch_size=config.batch_size, embedding_cache=0))
        self.documents = documents

    def __call__(self, batch: pa.Table) -> pa.Table:
        vecs = self.ranker.embed(batch.column(S.TEXT), documents=self.documents)
        flat = pa.array(vecs.reshape(-1), pa.float32())
        return pa.table({S.DOC_ID: batch.column(S.DOC_ID),
                         EMBEDDING: pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])})


def _embed(ds: Any, config: DenseNegativesConfig, documents: bool) -> tuple[list[str], np.ndarray]:
    import ray

    out = ds.map_batches(Embedder, fn_constructor_kwargs={"config": config, "documents": documents},
                         batch_size=config.rows_per_call, batch_format="pyarrow",
                         compute=ray.data.ActorPoolStrategy(size=config.num_actors))
    tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
    if not tables:
        return [], np.zeros((0, 0), dtype=np.float32)
    table = pa.concat_tables(tables)
    col = table.column(EMBEDDING).combine_chunks()
    vecs = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    return table.column(S.DOC_ID).to_pylist(), vecs


# --- wiring ---------------------------------------------------------------------------------------------
def add_dense_negatives(mined: pa.Table, corpus: Any, config: DenseNegativesConfig, seed: int,
                        neg_ids: str, neg_ranks: str) -> tuple[pa.Table, dict[str, int]]:
    """``mined`` (one row per query, its BM25 negatives as lists in ``neg_ids``/``neg_ranks``) with each
    query's dense negatives appended to those lists, and the counts. ``corpus`` is a Ray Dataset of
    (doc_id, title, text); documents are embedded as ``title + text`` (the text the mine stage trains on)."""
    import ray

    from inpars_ray.io.text import document_texts
    from inpars_ray.stages.mine import query_rng

    docs = corpus.map_batches(lambda b: pa.table({S.DOC_ID: b.column(S.DOC_ID), S.TEXT: document_texts(
        b.column(S.TITLE), b.column(S.TEXT))}), batch_format="pyarrow")
    doc_ids, doc_vecs = _embed(docs, config, documents=True)
    queries = ray.data.from_arrow(pa.table({S.DOC_ID: mined.column(S.QUERY_ID), S.TEXT: mined.column(S.QUERY)}))
    query_ids, query_vecs = _embed(queries, config, documents=False)
    if len(set(doc_ids)) != len(doc_ids):
        raise InparsError("dense negatives: the corpus holds a document id twice")
    where = {d: i for i, d in enumerate(doc_ids)}
    qrow = {q: i for i, q in enumerate(query_ids)}
    counts = {"dense_negatives": 0, "dense_short_queries": 0, "dense_excluded_near_copy": 0,
              "dense_excluded_positive": 0, "dense_excluded_already_bm25": 0}
    rows = mined.to_pylist()
    for start in range(0, len(rows), config.query_block):
        block = rows[start:start + config.query_block]
        qvecs = query_vecs[[qrow[r[S.QUERY_ID]] for r in block]] if block else query_vecs[:0]
        idx, _ = dense_candidates(qvecs, doc_vecs, config.depth)
        for r, cand in zip(block, idx):
            pos = where.get(r[S.POS_DOC_ID])
            if pos is None:
                raise InparsError(f"dense negatives: the positive {r[S.POS_DOC_ID]!r} of query {r[S.QUERY_ID]!r} "
                                  "is not in the corpus")
            sim = doc_vecs[cand] @ doc_vecs[pos]
            # the dense draw has its own stream, independent of the BM25 draw of the same query
            ids, ranks, excluded = draw_dense(query_rng(seed + 1_000_003, r[S.QUERY_ID]),
                                              [doc_ids[i] for i in cand], r[S.POS_DOC_ID], sim,
                                              set(r[neg_ids] or []), config.negatives, config.max_similarity)
            r[neg_ids] = list(r[neg_ids] or []) + ids
            r[neg_ranks] = list(r[neg_ranks] or []) + ranks
            counts["dense_negatives"] += len(ids)
            counts["dense_short_queries"] += len(ids) < config.negatives
            for reason, n in excluded.items():
                counts[f"dense_excluded_{reason}"] += n
    logger.info("[mine] %d dense negatives for %d queries (%d near-copies of a positive excluded)",
                counts["dense_negatives"], len(rows), counts["dense_excluded_near_copy"])
    return pa.Table.from_pylist(rows, schema=mined.schema), counts
