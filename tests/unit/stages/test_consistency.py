"""The consistency filter's pure parts: the source document's rank and the kept / dropped split."""
from __future__ import annotations

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stages.consistency import INCONSISTENT, SOURCE_RANK, ConsistencyConfig, consistency_split, source_ranks


def _scored(rows):
    return pa.table({S.QUERY_ID: [r[0] for r in rows], S.DOC_ID: [r[1] for r in rows],
                     S.SCORE: [float(r[2]) for r in rows], S.POS_DOC_ID: [r[3] for r in rows]})


def _candidates(ids_docs):
    n = len(ids_docs)
    return pa.table({S.DOC_ID: [d for _, d in ids_docs], S.QUERY_ID: [q for q, _ in ids_docs],
                     S.QUERY: [f"query {q}" for q, _ in ids_docs], S.TOKEN_LOGPROBS: [[-0.5]] * n,
                     S.MEAN_LOGPROB: [-0.5] * n, S.NUM_TOKENS: [1] * n, S.PROMPT_NAME: ["inpars"] * n,
                     S.MODEL: ["m"] * n, S.BACKEND: ["hf"] * n, S.FEWSHOT_IDS: [[]] * n, S.ERROR: [None] * n,
                     S.FILTER_SCORE: [0.0] * n}, schema=S.FILTERED)


def test_source_rank_with_ties_by_doc_id_and_missing_sources():
    scored = _scored([
        ("q1", "d3", 0.9, "d2"), ("q1", "d2", 0.5, "d2"), ("q1", "d1", 0.5, "d2"),  # d1 wins the tie at 0.5
        ("q2", "d9", 0.1, "d9"), ("q2", "d8", 0.2, "d9"),
        ("q3", "d5", 0.3, "d7"),  # BM25 never retrieved the source
    ])
    ranks = dict(zip(*(source_ranks(scored).column(c).to_pylist() for c in (S.QUERY_ID, SOURCE_RANK))))
    assert ranks == {"q1": 3, "q2": 2, "q3": None}


def test_split_keeps_top_k_and_accounts_for_every_candidate():
    cands = _candidates([("q1", "d2"), ("q2", "d9"), ("q3", "d7"), ("q4", "d4")])  # q4 had no hits at all
    ranks = pa.table({S.QUERY_ID: ["q1", "q2", "q3"], SOURCE_RANK: pa.array([3, 2, None], pa.int64())})
    kept, dropped = consistency_split(cands, ranks, k=2)
    assert kept.column(S.QUERY_ID).to_pylist() == ["q2"] and kept.schema == S.FILTERED
    assert kept.column(S.FILTER_SCORE).to_pylist() == [-2.0]
    assert sorted(dropped.column(S.QUERY_ID).to_pylist()) == ["q1", "q3", "q4"]
    assert set(dropped.column(S.DROP_REASON).to_pylist()) == {INCONSISTENT} and dropped.schema == S.FILTER_DROPPED
    kept3, _ = consistency_split(cands, ranks, k=3)
    assert sorted(kept3.column(S.QUERY_ID).to_pylist()) == ["q1", "q2"]


def test_config_is_checked():
    with pytest.raises(ConfigError, match="deeper"):
        ConsistencyConfig(ranker=RankerConfig(model="m"), k=5, depth=3)
    with pytest.raises(ConfigError, match="model"):
        ConsistencyConfig(ranker=RankerConfig(model=""))
    with pytest.raises(ConfigError, match="ranker"):  # the ranker block is required
        ConsistencyConfig()  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="num_gpus_per_actor"):  # a GPU reservation goes with ranker.device
        ConsistencyConfig(ranker=RankerConfig(model="m", device="cuda"), num_gpus_per_actor=-1)
