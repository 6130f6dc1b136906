"""Filter and mine on local Ray over the bundled collection, checked against brute-force computations."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from inpars_ray import schema as S
from inpars_ray.io.catalog import resolve
from inpars_ray.io.manifest import read_manifest
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stages.filter import FilterConfig, filter_dataset, run_filter

BUNDLED = Path(__file__).resolve().parents[3] / "inpars_ray" / "data" / "collections" / "tiny-science"


def corpus() -> dict[str, str]:
    docs = [json.loads(line) for line in (BUNDLED / "corpus.jsonl").read_text().splitlines() if line.strip()]
    return {d["_id"]: f"{d.get('title', '')} {d['text']}".strip() for d in docs}


def make_generated(n: int, seed: int) -> pa.Table:
    """Generated rows over the bundled corpus with every kind of bad row, and many tied scores."""
    docs = corpus()
    ids = sorted(docs)
    words = " ".join(docs.values()).split()
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        doc = ids[rng.randrange(len(ids))]
        ntok = rng.randint(1, 9)
        lp = [-rng.choice([0.25, 0.5, 1.0, 2.0]) for _ in range(ntok)]  # coarse values: ties are common
        query = " ".join(rng.choice(words) for _ in range(ntok))
        error = None
        kind = rng.random()
        if kind < 0.05:
            error, query, lp = "prompt too long", None, None
        elif kind < 0.09:
            query = " \t "
        elif kind < 0.13:
            start = rng.randrange(5)
            query = "  ".join(docs[doc].split()[start:start + 4]).upper()
        elif kind < 0.20 and rows and rows[-1][S.QUERY]:
            query = rows[-1][S.QUERY].lower()
        elif kind < 0.23:
            doc = f"not-a-doc-{i}"
        rows.append({S.DOC_ID: doc, S.QUERY_ID: f"gen-{i:05d}", S.QUERY: query, S.TOKEN_LOGPROBS: lp,
                     S.MEAN_LOGPROB: sum(lp) / len(lp) if lp else None, S.NUM_TOKENS: len(lp) if lp else None,
                     S.PROMPT_NAME: "inpars", S.MODEL: "tiny", S.BACKEND: "hf", S.FEWSHOT_IDS: ["f1"],
                     S.ERROR: error})
    return pa.Table.from_pylist(rows, schema=S.GENERATED)


def brute_force_kept(table: pa.Table, k: int) -> set[str]:
    """The InPars-v1 filter computed row by row in one process, straight from the rules."""
    docs = corpus()
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    ok = []
    for r in table.to_pylist():
        q = r[S.QUERY]
        if r[S.ERROR] is not None or not q or not q.strip() or r[S.DOC_ID] not in docs:
            continue
        if norm(q) in norm(docs[r[S.DOC_ID]]) or not 3 <= r[S.NUM_TOKENS] <= 1000:
            continue
        ok.append((norm(q), r[S.QUERY_ID], r[S.DOC_ID], sum(r[S.TOKEN_LOGPROBS]) / r[S.NUM_TOKENS]))
    first: dict[str, tuple] = {}
    for row in sorted(ok, key=lambda x: (x[1], x[2])):
        first.setdefault(row[0], row)
    best = sorted(first.values(), key=lambda x: (-x[3], x[1], x[2]))[:k]
    return {x[1] for x in best}


def read_dir(path: Path) -> pa.Table:
    return pads.dataset(str(path), format="parquet").to_table()


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    table = make_generated(400, seed=4)
    for i, part in enumerate(range(0, table.num_rows, 150)):
        pq.write_table(table.slice(part, 150), out / f"part-{i}.parquet")
    return out


@pytest.mark.parametrize("blocks,partitions", [(1, 1), (7, 3)])
def test_scores_filter_equals_brute_force_for_any_blocks(ray_session, generated_dir, tmp_path, blocks, partitions):
    table = read_dir(generated_dir)
    ds = ray_session.data.read_parquet(str(generated_dir)).repartition(blocks)
    config = FilterConfig(keep_top_k=60, shuffle_partitions=partitions)
    counts = filter_dataset(ds, resolve("bundled/tiny-science"), tmp_path, config)
    kept = read_dir(tmp_path / "kept")
    assert set(kept.column(S.QUERY_ID).to_pylist()) == brute_force_kept(table, 60)
    assert kept.num_rows == 60 and kept.schema.equals(S.FILTERED)
    dropped = read_dir(tmp_path / "dropped")
    # every input row is accounted for exactly once
    assert sorted(kept.column(S.QUERY_ID).to_pylist() + dropped.column(S.QUERY_ID).to_pylist()) == \
        sorted(table.column(S.QUERY_ID).to_pylist())
    for reason in ("generation_error", "empty_query", "unknown_document", "copied_from_document",
                   "token_length", "duplicate_query", "below_top_k"):
        assert counts[f"dropped_{reason}"] > 0, reason


def test_reranker_filter_uses_monot5_scores(ray_session, tmp_path):
    import transformers

    from inpars_ray.models import monot5
    from inpars_ray.testing import tiny_t5 as tiny

    model_dir = tiny.build_tiny_monot5(tmp_path / "monot5")
    gen = tmp_path / "gen"
    gen.mkdir()
    table = make_generated(50, seed=9)
    pq.write_table(table, gen / "part-0.parquet")
    config = FilterConfig(strategy="reranker", ranker=RankerConfig(str(model_dir)), keep_top_k=10, num_actors=2,
                          rows_per_call=8, shuffle_partitions=2)
    counts = filter_dataset(ray_session.data.read_parquet(str(gen)).repartition(3), resolve("bundled/tiny-science"),
                            tmp_path / "out", config)
    kept = read_dir(tmp_path / "out" / "kept")
    dropped = read_dir(tmp_path / "out" / "dropped")
    assert kept.num_rows == 10 and counts["kept"] + sum(v for k, v in counts.items() if k.startswith("dropped_")) == 50
    below = dropped.filter(pa.compute.equal(dropped.column(S.DROP_REASON), "below_top_k"))
    assert min(kept.column(S.FILTER_SCORE).to_pylist()) >= max(below.column(S.FILTER_SCORE).to_pylist())
    # the stage's score is monoT5's P(true) of (query, source document text), one pair at a time
    docs = corpus()
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    rows = kept.to_pylist()[:4]
    ref = monot5.score_pairs(model, tok, [r[S.QUERY] for r in rows], [docs[r[S.DOC_ID]] for r in rows])
    assert [r[S.FILTER_SCORE] for r in rows] == pytest.approx(list(ref), abs=1e-5)


# --- mining -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    from inpars_ray.stages.index import build_index

    out = tmp_path_factory.mktemp("bm25") / "index"
    build_index(resolve("bundled/tiny-science"), out)
    return out


@pytest.fixture(scope="module")
def kept_dir(ray_session, generated_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("filtered")
    run_filter(generated_dir, resolve("bundled/tiny-science"), out, FilterConfig(keep_top_k=80, shuffle_partitions=2))
    return out / "kept"


def test_run_filter_manifest_and_rerun(kept_dir, generated_dir):
    out = kept_dir.parent
    first = read_manifest(out)
    assert first["status"] == "complete" and first["counts"]["kept"] == 80
    assert first["counts"]["input_rows"] == 400 == sum(v for k, v in first["counts"].items()
                                                       if k == "kept" or k.startswith("dropped_"))
    config = FilterConfig(keep_top_k=80, shuffle_partitions=2)
    again = run_filter(generated_dir, resolve("bundled/tiny-science"), out, config)
    assert again["finished_at"] == first["finished_at"]  # nothing was redone


def test_mining_excludes_positive_uses_own_hits_and_is_block_independent(ray_session, index_dir, kept_dir,
                                                                         tmp_path):
    from inpars_ray.stages.mine import MineConfig, export_tsv, mine_dataset, run_mine
    from inpars_ray.stages.retrieve import BM25Config, retrieve

    collection = resolve("bundled/tiny-science")
    config = MineConfig(depth=1000, negatives=3, seed=7, shuffle_partitions=2,
                        bm25=BM25Config(threads=1, remove_query=False))
    queries = read_dir(kept_dir)
    outs = []
    for blocks, actors in ((1, 1), (5, 2)):
        cfg = MineConfig(**{**config.__dict__, "num_actors": actors, "queries_per_call": 16})
        out = tmp_path / f"b{blocks}"
        mine_dataset(ray_session.data.read_parquet(str(kept_dir)).repartition(blocks), collection, index_dir, out, cfg)
        outs.append(read_dir(out / "triples").sort_by([(S.QUERY_ID, "ascending"), (S.NEG_RANK, "ascending")]))
    assert outs[0].equals(outs[1])
    triples = outs[0]
    assert triples.schema.equals(S.TRIPLES)

    run = retrieve(index_dir, queries.select([S.QUERY_ID, S.QUERY]), k=1000, config=config.bm25)
    ranks = {(q, d): r for q, d, r in zip(*(run.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RANK)))}
    docs = corpus()
    per_query: dict[str, int] = {}
    for t in triples.to_pylist():
        assert t[S.NEG_DOC_ID] != t[S.POS_DOC_ID]
        assert ranks[t[S.QUERY_ID], t[S.NEG_DOC_ID]] == t[S.NEG_RANK]  # a hit of this very query, at that rank
        assert t[S.POS_TEXT] == docs[t[S.POS_DOC_ID]] and t[S.NEG_TEXT] == docs[t[S.NEG_DOC_ID]]
        per_query[t[S.QUERY_ID]] = per_query.get(t[S.QUERY_ID], 0) + 1
    # a query either has 3 distinct negatives or is in the short-query report with its counts
    short = read_dir(tmp_path / "b1" / "short_queries").to_pylist()
    short_ids = {r[S.QUERY_ID]: r for r in short}
    for qid, pos in zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.DOC_ID).to_pylist()):
        hits = sum(1 for (q, d) in ranks if q == qid)
        eligible = hits - ((qid, pos) in ranks)
        if eligible >= 3:
            assert per_query[qid] == 3 and qid not in short_ids
        else:
            assert short_ids[qid][S.NUM_ELIGIBLE] == eligible and per_query.get(qid, 0) == eligible

    # the stage entry point: manifest, resume, TSV export
    manifest = run_mine(kept_dir.parent, collection, index_dir, tmp_path / "run", config)
    assert manifest["counts"]["triples"] == triples.num_rows
    assert run_mine(kept_dir.parent, collection, index_dir, tmp_path / "run", config)["finished_at"] == \
        manifest["finished_at"]
    lines = export_tsv(tmp_path / "run").read_text(encoding="utf-8").splitlines()
    assert len(lines) == triples.num_rows and all(line.count("\t") == 2 for line in lines)


def test_dense_negatives_match_a_one_process_recomputation(ray_session, index_dir, kept_dir, tmp_path):
    """BM25's negatives plus a bi-encoder's: every dense negative is the draw the pure functions make from
    embeddings computed here without Ray, never the positive or a near-copy of it; counts add up."""

    from inpars_ray.models.rankers import Ranker
    from inpars_ray.stages.dense_negatives import DenseNegativesConfig, dense_candidates, draw_dense
    from inpars_ray.stages.mine import MineConfig, query_rng, run_mine
    from inpars_ray.stages.retrieve import BM25Config
    from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder

    model = build_tiny_bi_encoder(tmp_path / "bi")
    collection = resolve("bundled/tiny-science")
    dense = DenseNegativesConfig(model=str(model), negatives=2, depth=8, max_similarity=0.995, max_length=64,
                                 rows_per_call=64, query_block=7)
    config = MineConfig(depth=50, negatives=1, seed=3, shuffle_partitions=2, dense=dense,
                        bm25=BM25Config(threads=1, remove_query=False))
    manifest = run_mine(kept_dir.parent, collection, index_dir, tmp_path / "run", config)
    triples = read_dir(tmp_path / "run" / "triples")

    docs = corpus()
    doc_ids = list(docs)
    ranker = Ranker(RankerConfig(model=str(model), family="bi-encoder", max_length=64, batch_size=64,
                                 embedding_cache=0))
    doc_vecs = ranker.embed([docs[d] for d in doc_ids], documents=True)
    queries = read_dir(kept_dir)
    q_ids, q_text, q_pos = (queries.column(c).to_pylist() for c in (S.QUERY_ID, S.QUERY, S.DOC_ID))
    idx, _ = dense_candidates(ranker.embed(q_text), doc_vecs, dense.depth)
    plain = run_mine(kept_dir.parent, collection, index_dir, tmp_path / "plain",
                     MineConfig(**{**config.__dict__, "dense": None}))
    assert plain["counts"]["triples"] < manifest["counts"]["triples"]
    bm25: dict[str, set[str]] = {}
    for t in read_dir(tmp_path / "plain" / "triples").to_pylist():
        bm25.setdefault(t[S.QUERY_ID], set()).add(t[S.NEG_DOC_ID])
    got: dict[str, list[str]] = {}
    for t in triples.to_pylist():
        got.setdefault(t[S.QUERY_ID], []).append(t[S.NEG_DOC_ID])
    expected_dense, near_copies = 0, 0
    for qid, pos, cand in zip(q_ids, q_pos, idx):
        negs = got.get(qid, [])
        assert pos not in negs and len(set(negs)) == len(negs)
        sim = doc_vecs[cand] @ doc_vecs[doc_ids.index(pos)]
        ids, _, excluded = draw_dense(query_rng(config.seed + 1_000_003, qid), [doc_ids[i] for i in cand], pos, sim,
                                      bm25.get(qid, set()), dense.negatives, dense.max_similarity)
        assert sorted(negs) == sorted(bm25.get(qid, set()) | set(ids)), qid
        expected_dense += len(ids)
        near_copies += excluded["near_copy"]
    counts = manifest["counts"]
    assert counts["dense_negatives"] == expected_dense > 0
    assert counts["dense_excluded_near_copy"] == near_copies
    assert counts["triples"] == triples.num_rows
    assert run_mine(kept_dir.parent, collection, index_dir, tmp_path / "run", config)["finished_at"] == \
        manifest["finished_at"]


def test_a_teacher_with_bm25_fuses_the_scores_a_bm25_search_gives(ray_session, index_dir, kept_dir, tmp_path):
    """teacher.bm25_weight: each pair's BM25 score is the one Anserini's search gives that document for that
    query (checked against a search run), z-scored and mixed with the neural teacher's; without the index
    the stage refuses, and a changed BM25 weight is a new key."""
    import numpy as np

    from inpars_ray.errors import ConfigError
    from inpars_ray.models.rankers import Ranker
    from inpars_ray.stages.mine import MineConfig, run_mine
    from inpars_ray.stages.retrieve import BM25Config, retrieve
    from inpars_ray.stages.teacher import NEG_SCORE, POS_SCORE, TeacherConfig, fuse, run_teacher
    from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder

    collection = resolve("bundled/tiny-science")
    bm25 = BM25Config(threads=1, remove_query=False, k1=1.2, b=0.75)  # not Anserini's defaults: they must be used
    run_mine(kept_dir.parent, collection, index_dir, tmp_path / "mine",
             MineConfig(depth=30, negatives=2, seed=5, shuffle_partitions=2, bm25=bm25))
    ranker = RankerConfig(model=str(build_tiny_bi_encoder(tmp_path / "bi")), max_length=64, batch_size=16,
                          embedding_cache=0)
    config = TeacherConfig(rankers=(ranker,), bm25_weight=0.5, rows_per_call=16, partitions=2)
    with pytest.raises(ConfigError, match="index"):
        run_teacher(tmp_path / "mine", tmp_path / "teacher", config)
    result = run_teacher(tmp_path / "mine", tmp_path / "teacher", config, index_dir, bm25)
    scored = read_dir(tmp_path / "teacher" / "triples")
    assert result.counts["triples"] == scored.num_rows > 0

    rows = scored.to_pylist()
    pairs = sorted({(r[S.QUERY_ID], r[S.QUERY], d, t) for r in rows
                    for d, t in ((r[S.POS_DOC_ID], r[S.POS_TEXT]), (r[S.NEG_DOC_ID], r[S.NEG_TEXT]))})
    queries = pa.table({S.QUERY_ID: sorted({p[0] for p in pairs}),
                        S.QUERY: [next(p[1] for p in pairs if p[0] == q) for q in sorted({p[0] for p in pairs})]})
    run = retrieve(index_dir, queries, k=1000, config=bm25)
    searched = {(q, d): s for q, d, s in zip(*(run.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.SCORE)))}
    lexical = np.array([searched.get((q, d), 0.0) for q, _, d, _ in pairs])  # a pair no search returns scores 0
    neural = Ranker(ranker).score([p[1] for p in pairs], [p[3] for p in pairs])
    want = fuse([neural, lexical], [(float(neural.mean()), float(neural.std())),
                                    (float(lexical.mean()), float(lexical.std()))], [1.0, 0.5])
    score_of = {(q, d): w for (q, _, d, _), w in zip(pairs, want)}
    got = np.array([(r[POS_SCORE], r[NEG_SCORE]) for r in rows])
    expected = np.array([(score_of[r[S.QUERY_ID], r[S.POS_DOC_ID]], score_of[r[S.QUERY_ID], r[S.NEG_DOC_ID]])
                         for r in rows])
    # the run file keeps 4 decimals of BM25, and the bi-encoder's scores differ in their last bits by batch
    assert np.allclose(got, expected, rtol=0, atol=1e-3)
    assert result.extra["weights"] == [1.0, 0.5]

    again = run_teacher(tmp_path / "mine", tmp_path / "teacher",
                        TeacherConfig(rankers=(ranker,), bm25_weight=0.25, rows_per_call=16, partitions=2),
                        index_dir, bm25)
    assert not again.reused and again.key != result.key


def test_unfinished_generations_are_dropped_at_the_generators_own_token_limit(ray_session, tmp_path):
    """A query whose generation used every one of the generator's ``max_new_tokens`` never ended its line:
    with ``drop_unfinished`` it is dropped with its own reason, the limit read from the generate manifest."""
    from inpars_ray.models.backends.base import GenerationParams
    from inpars_ray.stages.generate import GenerateConfig, GenerateResources, run_generate
    from inpars_ray.testing.tiny_lm import tiny_lm_path

    collection = resolve("bundled/tiny-science")
    run_generate(collection, tmp_path / "generate",
                 GenerateConfig(model=str(tiny_lm_path()), num_docs=12, seed=5,
                                generation=GenerationParams(max_new_tokens=5, seed=5)),
                 GenerateResources(batch_size=4))
    generated = read_dir(tmp_path / "generate" / "parts")
    ntok = dict(zip(generated.column(S.QUERY_ID).to_pylist(), generated.column(S.NUM_TOKENS).to_pylist()))
    assert any(n == 5 for n in ntok.values())  # the tiny random model runs on: the check has rows to drop

    config = FilterConfig(keep_top_k=100, min_tokens=0, shuffle_partitions=2, drop_unfinished=True)
    on = run_filter(tmp_path / "generate" / "parts", collection, tmp_path / "on", config)
    off = run_filter(tmp_path / "generate", collection, tmp_path / "off",
                     FilterConfig(keep_top_k=100, min_tokens=0, shuffle_partitions=2))
    assert on.extra["unfinished_at_tokens"] == 5 and off.extra["unfinished_at_tokens"] is None
    dropped = read_dir(tmp_path / "on" / "dropped").to_pylist()
    unfinished = {r[S.QUERY_ID] for r in dropped if r[S.DROP_REASON] == "unfinished_generation"}
    assert on.counts["dropped_unfinished_generation"] == len(unfinished) > 0
    assert {ntok[q] for q in unfinished} == {5}
    def kept(run: str) -> set[str]:  # no kept/ folder when every row was dropped
        folder = tmp_path / run / "kept"
        return set(read_dir(folder).column(S.QUERY_ID).to_pylist()) if folder.is_dir() else set()

    kept_on, kept_off = kept("on"), kept("off")
    assert all(ntok[q] < 5 for q in kept_on)
    # the check takes out unfinished queries and nothing else (in both runs, duplicates go after it)
    assert kept_on <= kept_off and kept_off - kept_on <= unfinished
    accounted = on.counts["kept"] + sum(v for k, v in on.counts.items() if k.startswith("dropped_"))
    assert accounted == on.counts["input_rows"] == len(ntok)
