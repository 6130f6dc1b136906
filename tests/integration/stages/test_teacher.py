"""The teacher stage on local Ray with tiny models, against a one-process recomputation of its scores; and
the train stage distilling those scores (margin-mse) into a query-tower-only, WiSE-FT-interpolated bi-encoder.

The teachers are the tiny monoT5 (P(true), spread ~0.07) and tiny bi-encoders (cosines, spread ~0.03); the
tiny cross-encoder is left out here because its random head gives nearly one logit for every pair (spread
~1e-5), which would make a z-score comparison measure float noise.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inpars_ray import schema as S
from inpars_ray.io import artifacts
from inpars_ray.models.rankers import Ranker, RankerConfig
from inpars_ray.stages.teacher import NEG_SCORE, POS_SCORE, SCORED_TRIPLES, STAGE, TeacherConfig, run_teacher
from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder
from inpars_ray.testing.tiny_t5 import build_tiny_monot5, build_tiny_triples

pytestmark = pytest.mark.usefixtures("ray_session")

#: triples sorted for a row-for-row comparison (neg_rank last: build_tiny_triples may draw a negative twice)
ORDER = [S.QUERY_ID, S.POS_DOC_ID, S.NEG_DOC_ID, S.NEG_RANK]
MAX_LENGTH = 128


def _ranker(model: Path | str, **kw) -> RankerConfig:
    return RankerConfig(model=str(model), max_length=MAX_LENGTH, batch_size=8, **kw)


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(c, "ascending") for c in ORDER])


def _scored(out: Path) -> pa.Table:
    files = sorted((out / "triples").glob("*.parquet"))
    return _sorted(pa.concat_tables([pq.read_table(f) for f in files]))


def _pair_scores(config: RankerConfig, triples: pa.Table) -> dict[tuple[str, str], float]:
    """Each distinct (query, document) pair of ``triples`` scored in this process, without Ray."""
    pairs: dict[tuple[str, str], tuple[str, str]] = {}
    for r in triples.to_pylist():
        pairs[(r[S.QUERY_ID], r[S.POS_DOC_ID])] = (r[S.QUERY], r[S.POS_TEXT])
        pairs[(r[S.QUERY_ID], r[S.NEG_DOC_ID])] = (r[S.QUERY], r[S.NEG_TEXT])
    keys = sorted(pairs)
    scores = Ranker(config).score([pairs[k][0] for k in keys], [pairs[k][1] for k in keys])
    return dict(zip(keys, scores.tolist()))


def _expected_scores(table: pa.Table, score_of: dict[tuple[str, str], float]) -> tuple[np.ndarray, np.ndarray]:
    q = table.column(S.QUERY_ID).to_pylist()
    pos = [score_of[k] for k in zip(q, table.column(S.POS_DOC_ID).to_pylist())]
    neg = [score_of[k] for k in zip(q, table.column(S.NEG_DOC_ID).to_pylist())]
    return np.array(pos), np.array(neg)


def _files_state(out: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(out).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(out.rglob("*")) if p.is_file()}


def _weights(folder: Path | str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teacher-models")
    return {"monot5": build_tiny_monot5(root / "monot5"), "bi": build_tiny_bi_encoder(root / "bi"),
            "bi-1": build_tiny_bi_encoder(root / "bi-1", seed=1)}


@pytest.fixture(scope="module")
def triples(tmp_path_factory) -> Path:
    """Up to three random negatives per (query, positive), with random BM25 ranks, over two files."""
    return build_tiny_triples(tmp_path_factory.mktemp("teacher-triples") / "triples", repeat=3, limit=72, files=2)


@pytest.fixture(scope="module")
def single(models, triples, tmp_path_factory):
    """One teacher (the tiny monoT5), every triple scored: (output folder, its manifest, the config)."""
    out = tmp_path_factory.mktemp("teacher-single") / "teacher"
    config = TeacherConfig(rankers=(_ranker(models["monot5"]),), rows_per_call=16, partitions=2)
    return out, run_teacher(triples, out, config), config


def test_every_triple_gets_the_teachers_scores_and_a_rerun_is_a_no_op(single, triples):
    out, manifest, config = single
    given = _sorted(pq.read_table(triples))
    got = _scored(out)
    assert got.schema.equals(SCORED_TRIPLES)
    assert got.select(S.TRIPLES.names).equals(given.cast(S.TRIPLES))  # every triple once, untouched
    pos, neg = _expected_scores(got, _pair_scores(config.rankers[0], given))
    assert np.allclose(got.column(POS_SCORE).to_numpy(), pos, rtol=0, atol=1e-5)
    assert np.allclose(got.column(NEG_SCORE).to_numpy(), neg, rtol=0, atol=1e-5)
    pairs = {(q, d) for r in given.to_pylist() for q, d in ((r[S.QUERY_ID], r[S.POS_DOC_ID]),
                                                             (r[S.QUERY_ID], r[S.NEG_DOC_ID]))}
    assert manifest["stage"] == STAGE and manifest["status"] == "complete"
    assert manifest["counts"] == {"triples_in": given.num_rows, "triples": given.num_rows, "capped": 0,
                                  "pairs_scored": len(pairs)}
    margins = got.column(POS_SCORE).to_numpy() - got.column(NEG_SCORE).to_numpy()
    assert manifest["extra"]["pos_above_neg"] == pytest.approx(float(np.mean(margins > 0)))

    before, written = _files_state(out), json.loads((out / "manifest.json").read_text())
    again = run_teacher(triples, out, config)
    assert again == written and again["finished_at"] == manifest["finished_at"]  # the manifest read back
    assert _files_state(out) == before  # nothing rewritten


def test_a_retrained_teacher_scores_again(models, triples, tmp_path):
    """The teacher is a published model artifact (as the train stage writes one): the same folder
    republished with other weights is a new key, and the stage runs again with the new teacher."""
    few = build_tiny_triples(tmp_path / "triples", repeat=1, limit=16, files=1)
    teacher = tmp_path / "teacher-model"
    artifacts.publish_dir(models["bi"], teacher, {"stage": "model", "status": "complete", "trained_from": "v1"})
    config = TeacherConfig(rankers=(_ranker(teacher),), rows_per_call=16, partitions=2)
    first = run_teacher(few, tmp_path / "out", config)
    first_scores = _scored(tmp_path / "out")
    assert run_teacher(few, tmp_path / "out", config)["finished_at"] == first["finished_at"]  # a no-op

    artifacts.publish_dir(models["bi-1"], teacher, {"stage": "model", "status": "complete", "trained_from": "v2"})
    second = run_teacher(few, tmp_path / "out", config)
    assert second["config_hash"] != first["config_hash"] and second["finished_at"] != first["finished_at"]
    got = _scored(tmp_path / "out")
    assert got.select(S.TRIPLES.names).equals(first_scores.select(S.TRIPLES.names))
    assert not np.allclose(got.column(POS_SCORE).to_numpy(), first_scores.column(POS_SCORE).to_numpy())
    pos, neg = _expected_scores(got, _pair_scores(_ranker(models["bi-1"]), got))
    assert np.allclose(got.column(POS_SCORE).to_numpy(), pos, rtol=0, atol=1e-5)
    assert np.allclose(got.column(NEG_SCORE).to_numpy(), neg, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def fused_capped(models, triples, tmp_path_factory):
    """Two teachers (monoT5 weight 3, bi-encoder weight 1) fused by z-score, one negative per positive."""
    out = tmp_path_factory.mktemp("teacher-fused") / "teacher"
    config = TeacherConfig(rankers=(_ranker(models["monot5"]), _ranker(models["bi"])), weights=(3.0, 1.0),
                           max_negatives=1, rows_per_call=16, partitions=2)
    return out, run_teacher(triples, out, config), config


def test_max_negatives_keeps_the_negatives_bm25_ranked_highest(fused_capped, triples):
    out, manifest, _ = fused_capped
    given = pq.read_table(triples).cast(S.TRIPLES)
    best: dict[tuple[str, str], dict] = {}
    for r in given.to_pylist():
        key = (r[S.QUERY_ID], r[S.POS_DOC_ID])
        if key not in best or (r[S.NEG_RANK], r[S.NEG_DOC_ID]) < (best[key][S.NEG_RANK], best[key][S.NEG_DOC_ID]):
            best[key] = r
    want = _sorted(pa.Table.from_pylist(list(best.values()), schema=S.TRIPLES))
    assert want.num_rows < given.num_rows  # the cap has something to cut
    got = _scored(out)
    assert got.select(S.TRIPLES.names).equals(want)
    assert manifest["counts"]["triples_in"] == given.num_rows
    assert manifest["counts"]["triples"] == want.num_rows
    assert manifest["counts"]["capped"] == given.num_rows - want.num_rows


def test_two_teachers_fused_by_z_score_give_the_weighted_mean_of_standardised_scores(fused_capped):
    out, manifest, config = fused_capped
    got = _scored(out)
    per_ranker = [_pair_scores(r, got) for r in config.rankers]  # the pairs of the capped triples
    keys = sorted(per_ranker[0])
    raw = [np.array([s[k] for k in keys]) for s in per_ranker]
    stats = [(x.mean(), x.std()) for x in raw]  # over every scored pair, ddof 0
    for (mean, std), logged in zip(stats, manifest["extra"]["stats"]):
        assert logged["mean"] == pytest.approx(mean, rel=1e-5) and logged["std"] == pytest.approx(std, rel=1e-4)
    fused = 0.75 * (raw[0] - stats[0][0]) / stats[0][1] + 0.25 * (raw[1] - stats[1][0]) / stats[1][1]
    want = dict(zip(keys, fused.tolist()))
    pos, neg = _expected_scores(got, want)
    assert np.allclose(got.column(POS_SCORE).to_numpy(), pos, rtol=0, atol=1e-4)
    assert np.allclose(got.column(NEG_SCORE).to_numpy(), neg, rtol=0, atol=1e-4)
    # standardised over all scored pairs: the fused scores of the distinct pairs have mean 0
    written: dict[tuple[str, str], float] = {}
    for r in got.to_pylist():
        written[(r[S.QUERY_ID], r[S.POS_DOC_ID])] = r[POS_SCORE]
        written[(r[S.QUERY_ID], r[S.NEG_DOC_ID])] = r[NEG_SCORE]
    assert sorted(written) == keys and manifest["counts"]["pairs_scored"] == len(keys)
    assert abs(np.mean(list(written.values()))) < 1e-9
    assert manifest["extra"]["weights"] == [3.0, 1.0] and manifest["extra"]["fusion"] == "zscore"


def test_margin_mse_trains_a_query_tower_only_bi_encoder_interpolated_with_its_start(single, models, tmp_path):
    """train on the teacher's triples, loss margin-mse, query tower only, WiSE-FT alpha 0.5: the saved folder
    holds the interpolated query tower and the start model as document_encoder/, and loads as one ranker
    that embeds queries with the trained tower and documents with the start model."""
    import torch

    from inpars_ray.models.families import BI_ENCODER, DOCUMENT_ENCODER
    from inpars_ray.stages.train import train
    from inpars_ray.stages.train_config import TrainConfig

    teacher_out, _, _ = single
    start = models["bi"]
    config = TrainConfig(base_model=str(start), family=BI_ENCODER, loss="margin-mse", query_only=True,
                         interpolate=0.5, lr=5e-3, batch_size=8, micro_batch_size=8, max_length=64,
                         rows_per_block=16, checkpoint_every=100)
    manifest = train(teacher_out / "triples", tmp_path / "train", config)
    extra = manifest["extra"]
    assert extra["loss"] == "margin-mse" and extra["family"] == BI_ENCODER
    assert manifest["counts"]["steps"] >= 1 and np.isfinite(extra["final_loss"])
    assert extra["interpolation"]["alpha"] == 0.5 and extra["interpolation"]["interpolated"] > 0
    assert extra["towers"] == {"query": "trained", "document": "start model (frozen)"}

    model = tmp_path / "train" / "model"
    assert (model / DOCUMENT_ENCODER / "config.json").is_file() and (model / "modules.json").is_file()
    # the start checkpoint's own tensors (a bare BertModel loaded by AutoModel gets a new, random and unused
    # pooler each time: not part of the comparison)
    start_w = _weights(start)
    doc_w = _weights(model / DOCUMENT_ENCODER)
    assert all(torch.equal(start_w[k], doc_w[k]) for k in start_w)  # the document tower is the start model
    # WiSE-FT: the saved query tower is the mean of the start weights and the trained ones (the Ray
    # checkpoint keeps the trained weights as they were)
    trained_w, saved_w = _weights(extra["checkpoint"]), _weights(model)
    moved = 0
    for k, v in start_w.items():
        if v.is_floating_point():
            assert torch.allclose(saved_w[k], 0.5 * v + 0.5 * trained_w[k], rtol=0, atol=1e-6), k
            moved += not torch.equal(trained_w[k], v)
    assert moved > 0  # training changed the query tower

    # one ranker, two towers: queries from the trained tower, documents from the start model
    rows = pq.read_table(sorted((teacher_out / "triples").glob("*.parquet"))[0]).slice(0, 12).to_pylist()
    queries, docs = [r[S.QUERY] for r in rows], [r[S.POS_TEXT] for r in rows]
    ranker = Ranker(RankerConfig(model=str(model), max_length=64, embedding_cache=0))
    assert ranker.family == BI_ENCODER and ranker.document_model is not None
    query_tower = tmp_path / "query-tower"
    shutil.copytree(model, query_tower, ignore=shutil.ignore_patterns(DOCUMENT_ENCODER))
    q_emb = Ranker(RankerConfig(model=str(query_tower), max_length=64, embedding_cache=0)).embed(queries)
    d_emb = Ranker(RankerConfig(model=str(start), max_length=64, embedding_cache=0)).embed(docs)
    want = np.einsum("ij,ij->i", q_emb, d_emb)
    got = ranker.score(queries, docs)
    assert np.allclose(got, want, rtol=0, atol=1e-5)
    one_tower = Ranker(RankerConfig(model=str(query_tower), max_length=64, embedding_cache=0)).score(queries, docs)
    assert not np.allclose(got, one_tower, rtol=0, atol=1e-5)  # the documents really went through the start model


def test_a_tune_sweep_after_the_teacher_cuts_its_dev_set_from_the_scored_triples(tmp_path, monkeypatch):
    """inpars.teacher + train.loss margin-mse + inpars.tune: the sweep's trials train with the run's loss, so
    the training part of its dev set must come from the teacher's triples (pos_score, neg_score), not mine's;
    and `inpars-ray tune` (run_synthetic) runs the teacher too. (No Ray: the stages are replaced by recorders.)"""
    from inpars_ray import pipeline
    from inpars_ray.config import PipelineConfig
    from inpars_ray.io import storage
    from inpars_ray.io.manifest import StageRecord
    from inpars_ray.io.stage import StageResult
    from inpars_ray.stages import devset, generate, mine, teacher
    from inpars_ray.stages import filter as filter_stage

    class Built(Exception):
        pass

    given: dict[str, str] = {}
    calls: list[str] = []

    def build_dev_set(queries_dir, triples_dir, *args, **kwargs):
        given["triples"] = str(triples_dir)
        raise Built

    def recorder(name, out_at):  # a stage's result names the folder it was given to write
        return lambda *a, **k: calls.append(name) or StageResult(name, storage.location(a[out_at]), {"counts": {}})

    monkeypatch.setattr(devset, "build_dev_set", build_dev_set)
    for module, name, out_at in ((generate, "run_generate", 1), (filter_stage, "run_filter", 2),
                                 (mine, "run_mine", 3), (teacher, "run_teacher", 1)):
        monkeypatch.setattr(module, name, recorder(name, out_at))
    config = PipelineConfig.from_dict({"out_dir": str(tmp_path), "inpars": {
        "teacher": {"rankers": [{"model": "local:tiny-monot5"}]}, "train": {"loss": "margin-mse"},
        "tune": {"num_samples": 1}}})
    out = storage.location(str(tmp_path))
    ctx = pipeline.RunContext(config, out, None, StageRecord("pipeline", {}),  # type: ignore[arg-type]
                              pipeline.stage_configs(config, out, resolve=lambda name, where: name))
    synthetic = pipeline._synthetic(ctx)
    assert calls == ["run_generate", "run_filter", "run_mine", "run_teacher"]
    with pytest.raises(Built):
        pipeline._sweep(ctx, synthetic)
    assert given["triples"] == (out / "teacher").uri  # the teacher's output: its manifest lists the triples


def test_dev_set_judge_fuses_the_teacher_and_bm25_as_computed_in_one_process(models, triples):
    """The tune dev set's fused pseudo-reference: the teacher's rankers (on Ray actors, rows in any order)
    and BM25, each standardised, mixed with the teacher's weights (normalised) and BM25's weight."""
    from inpars_ray.stages.devset import FIRST_STAGE_SCORE, _fused_scores, pseudo_qrels

    table = _sorted(pq.read_table(triples))
    rows = {}
    for r in table.to_pylist():
        rows[(r[S.QUERY_ID], r[S.NEG_DOC_ID])] = (r[S.QUERY], r[S.NEG_TEXT])
    keys = sorted(rows)[:40]
    rng = np.random.default_rng(0)
    pairs = pa.table({S.QUERY_ID: [q for q, _ in keys], S.DOC_ID: [d for _, d in keys],
                      S.QUERY: [rows[k][0] for k in keys], S.TEXT: [rows[k][1] for k in keys],
                      FIRST_STAGE_SCORE: rng.normal(10.0, 3.0, len(keys))})
    teacher = TeacherConfig(rankers=(_ranker(models["monot5"]), _ranker(models["bi"])), weights=(3.0, 1.0),
                            rows_per_call=8)
    fused = _fused_scores(pairs, teacher, bm25_weight=0.5)

    queries, texts = pairs.column(S.QUERY).to_pylist(), pairs.column(S.TEXT).to_pylist()
    parts = [Ranker(r).score(queries, texts) for r in teacher.rankers]
    parts.append(pairs.column(FIRST_STAGE_SCORE).to_numpy())
    z = [(p - p.mean()) / p.std() for p in parts]
    weights = np.array([0.75, 0.25, 0.5]) / 1.5
    np.testing.assert_allclose(fused, sum(w * s for w, s in zip(weights, z)), atol=1e-5)

    sources = pa.table({S.QUERY_ID: sorted({q for q, _ in keys}), S.DOC_ID: ["source"] * len({q for q, _ in keys}),
                        S.RELEVANCE: pa.array([1] * len({q for q, _ in keys}), pa.int64())}, schema=S.QRELS)
    qrels = pseudo_qrels(pairs, fused, sources, top=1)
    best = {}
    for (q, d), _score in sorted(zip(keys, fused), key=lambda x: (x[0][0], -x[1], x[0][1])):
        best.setdefault(q, d)
    judged = {(q, d) for q, d in zip(qrels.column(S.QUERY_ID).to_pylist(), qrels.column(S.DOC_ID).to_pylist())}
    assert judged == {(q, "source") for q in best} | set(best.items())


def _ranks_by_hand(table: pa.Table) -> dict[tuple[str, str, str, int], int]:
    """Each triple's positive rank among its (query, positive)'s documents, counted row by row."""
    rows = table.to_pylist()
    out = {}
    for r in rows:
        group = [o for o in rows if (o[S.QUERY_ID], o[S.POS_DOC_ID]) == (r[S.QUERY_ID], r[S.POS_DOC_ID])]
        out[(r[S.QUERY_ID], r[S.POS_DOC_ID], r[S.NEG_DOC_ID], r[S.NEG_RANK])] = 1 + sum(
            o[NEG_SCORE] >= o[POS_SCORE] for o in group)
    return out


def test_consistency_keeps_the_queries_whose_positive_the_teacher_ranks_first(single, triples, tmp_path):
    """consistency_k=1: a (query, positive) stays only if the teacher scored the positive above all its
    negatives; the other lists' triples go to dropped/ with the rank, every triple is in one of the two, and the key without the
    setting is the key runs had before it existed."""
    from inpars_ray.stages.teacher import DROPPED_DIR, POS_RANK

    out0, manifest0, config0 = single
    assert "consistency_k" not in manifest0["config"]["teacher"]
    everything = _scored(out0)
    assert 0 < sum(r == 1 for r in _ranks_by_hand(everything).values()) < everything.num_rows  # both kinds

    out = tmp_path / "teacher"
    shutil.copytree(out0, out)  # the same folder with another setting: the stage must run again
    config = TeacherConfig(rankers=config0.rankers, rows_per_call=16, partitions=3, consistency_k=1)
    manifest = run_teacher(triples, out, config)
    kept = _scored(out)
    dropped = _sorted(pa.concat_tables([pq.read_table(f) for f in sorted((out / DROPPED_DIR).glob("*.parquet"))]))
    assert kept.schema.equals(SCORED_TRIPLES)
    both = _sorted(pa.concat_tables([kept, dropped.drop_columns([POS_RANK])]))
    assert both.select(S.TRIPLES.names).equals(everything.select(S.TRIPLES.names))  # every triple, once
    for col in (POS_SCORE, NEG_SCORE):
        assert np.allclose(both.column(col).to_numpy(), everything.column(col).to_numpy(), rtol=0, atol=1e-5)
    ranks = _ranks_by_hand(both)  # on the scores this run wrote
    key = lambda r: (r[S.QUERY_ID], r[S.POS_DOC_ID], r[S.NEG_DOC_ID], r[S.NEG_RANK])  # noqa: E731
    assert kept.num_rows and all(ranks[key(r)] == 1 for r in kept.to_pylist())
    assert dropped.num_rows and all(r[POS_RANK] == ranks[key(r)] > 1 for r in dropped.to_pylist())
    lists = lambda t: set(zip(t.column(S.QUERY_ID).to_pylist(), t.column(S.POS_DOC_ID).to_pylist()))  # noqa: E731
    assert lists(kept).isdisjoint(lists(dropped))  # a (query, positive) list goes whole
    counts = manifest["counts"]
    assert counts["triples"] == kept.num_rows and counts["dropped_inconsistent_triples"] == dropped.num_rows
    assert counts["dropped_inconsistent_lists"] == len(lists(dropped))
    assert manifest["config"]["teacher"]["consistency_k"] == 1

    # back to no check in the same folder: the old key again, and no dropped/ left behind
    manifest = run_teacher(triples, out, config0)
    assert manifest["config_hash"] == manifest0["config_hash"] and not (out / DROPPED_DIR).exists()
    assert _scored(out).select(S.TRIPLES.names).equals(everything.select(S.TRIPLES.names))


def test_consistency_that_drops_every_query_says_so(models, tmp_path):
    """Each query's negative is the query's own text, so a bi-encoder scores it at cosine 1, at or above the
    positive: with consistency_k=1 nothing is left to train on, and the stage says so instead of writing an
    empty triples/ for the train stage to trip on."""
    from inpars_ray.errors import InparsError

    n = 6
    rows = {S.QUERY_ID: [f"q{i}" for i in range(n)], S.QUERY: [f"word{i} other{i}" for i in range(n)],
            S.POS_DOC_ID: [f"d{i}" for i in range(n)], S.POS_TEXT: [f"unrelated text {i * 7}" for i in range(n)],
            S.NEG_DOC_ID: [f"n{i}" for i in range(n)], S.NEG_TEXT: [f"word{i} other{i}" for i in range(n)],
            S.NEG_RANK: list(range(1, n + 1)), S.FILTER_SCORE: [0.0] * n}
    src = tmp_path / "mine" / "triples"
    src.mkdir(parents=True)
    pq.write_table(pa.table(rows).cast(S.TRIPLES), src / "part-0.parquet")
    config = TeacherConfig(rankers=(_ranker(models["bi"], family="bi-encoder"),), partitions=2, consistency_k=1)
    with pytest.raises(InparsError, match=r"consistency_k=1 dropped every one of the 6 triples"):
        run_teacher(src, tmp_path / "teacher", config)
    assert not (tmp_path / "teacher" / "manifest.json").exists()  # not complete: a rerun tries again
