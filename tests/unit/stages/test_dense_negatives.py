"""Dense negatives: the exact top-k search and the draw that never takes the positive or a near-copy of it."""
from __future__ import annotations

import numpy as np
import pytest

from inpars_ray.errors import ConfigError
from inpars_ray.stages.dense_negatives import DenseNegativesConfig, dense_candidates, draw_dense


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_candidates_are_the_best_by_cosine_with_ties_broken_by_index():
    rng = np.random.default_rng(0)
    docs = _unit(rng.normal(size=(50, 8)).astype(np.float32))
    docs[7] = docs[3]  # a tie: the lower index ranks first
    queries = np.stack([docs[3], _unit(rng.normal(size=(1, 8)).astype(np.float32))[0]])
    idx, scores = dense_candidates(queries, docs, depth=5)
    for q in range(2):
        s = queries[q] @ docs.T
        expected = sorted(range(50), key=lambda i: (-s[i], i))[:5]
        assert idx[q].tolist() == expected
        np.testing.assert_allclose(scores[q], s[expected], rtol=1e-6)
    assert idx[0][:2].tolist() == [3, 7]
    assert dense_candidates(queries, docs, depth=500)[0].shape == (2, 50)


def test_draw_never_takes_the_positive_a_near_copy_or_a_bm25_negative():
    candidates = ["pos", "copy", "bm", "a", "b", "c"]
    sims = np.array([1.0, 0.97, 0.5, 0.4, 0.3, 0.2])
    for seed in range(20):
        ids, ranks, excluded = draw_dense(np.random.default_rng(seed), candidates, "pos", sims, {"bm"}, 2, 0.95)
        assert len(ids) == 2 and set(ids) <= {"a", "b", "c"}
        assert ranks == sorted(ranks) and all(candidates[r - 1] == d for d, r in zip(ids, ranks))
        assert excluded == {"positive": 1, "near_copy": 1, "already_bm25": 1}
    again = draw_dense(np.random.default_rng(3), candidates, "pos", sims, {"bm"}, 2, 0.95)
    assert again[:2] == draw_dense(np.random.default_rng(3), candidates, "pos", sims, {"bm"}, 2, 0.95)[:2]


def test_a_short_list_keeps_what_it_has():
    ids, ranks, _ = draw_dense(np.random.default_rng(0), ["pos", "x"], "pos", np.array([1.0, 0.1]), set(), 3, 0.95)
    assert (ids, ranks) == (["x"], [2])


def test_settings_are_checked():
    with pytest.raises(ConfigError):
        DenseNegativesConfig(model="m", max_similarity=1.5)
    with pytest.raises(ConfigError):
        DenseNegativesConfig(model="m", negatives=0)
