"""Worker kill in generate, filter (InPars-v2 reranker scores), consistency, mine, teacher and rerank:
SIGKILL a running actor's process.

Each stage runs twice on the bundled collection in this process's local Ray: once unfaulted, once with
the process of one of its actors SIGKILLed while that actor runs a batch (found by its Ray process title,
``ray::MapWorker(MapBatches(<UDF>)).submit``, among this process's descendants; killed with ``os.kill``).
Ray Data restarts the actor and retries its in-flight batch (at least once); the stage must finish with
output equal to the unfaulted run's -- the TREC run byte for byte, the kept queries and the triples
row for row (the teacher's scores within 1e-6) -- and counts equal: nothing lost, nothing twice.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from inpars_ray import schema as S
from inpars_ray.io import catalog, storage
from inpars_ray.models.rankers import RankerConfig
from tests.conftest import BUNDLED
from tests.reliability.conftest import GatedEcho, wait_for


def _running_actor_pid(udf: str) -> int | None:
    """The pid of an actor process of the Ray Data UDF class ``udf`` that is running a batch right now.

    Found by its process title (Ray titles a worker ``ray::<actor class>.<method>`` while it runs a task,
    e.g. ``ray::MapWorker(MapBatches(RankerUDF)).submit``) among this test process's descendants, so the
    Ray clusters of other processes on the host are never touched. (The state API, ``ray.util.state``,
    needs the dashboard, which the session's Ray runs without.)
    """
    import psutil

    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if title.startswith("ray::") and f"({udf}))" in title and ".submit" in title:
            return proc.pid
    return None


def run_with_kill(stage, udf: str) -> tuple[object, int]:
    """Run ``stage()`` in a thread; SIGKILL one running ``udf`` actor mid-stage. Returns (result, pid)."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["value"] = stage()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"stage-{udf}")
    thread.start()
    pid = wait_for(lambda: _running_actor_pid(udf) or (not thread.is_alive() and -1), 300,
                   f"a running {udf} actor")
    assert pid != -1, f"the stage ended before a {udf} actor ran: {result}"
    os.kill(pid, signal.SIGKILL)
    killed_mid_stage = thread.is_alive()
    thread.join(600)
    assert not thread.is_alive(), "the stage did not finish after its actor was killed"
    if "error" in result:
        raise result["error"]
    assert killed_mid_stage, "the stage had finished when its actor was killed"
    return result["value"], pid


@pytest.fixture(scope="module")
def setup(ray_session, tmp_path_factory):
    """An index, a BM25 run, queries with their positives, generated rows and a tiny monoT5."""
    from inpars_ray.io.load import read_qrels, read_queries
    from inpars_ray.io.trec import write_trec_run
    from inpars_ray.stages.index import build_index
    from inpars_ray.stages.retrieve import retrieve
    from inpars_ray.testing.tiny_t5 import build_tiny_monot5

    root = tmp_path_factory.mktemp("kill")
    collection = catalog.resolve(str(BUNDLED))
    build_index(collection, root / "index")
    queries, _ = read_queries(collection)
    write_trec_run(retrieve(root / "index", queries, k=40), root / "bm25.trec")
    qrels, _ = read_qrels(collection, "test", queries)
    text = dict(zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()))
    pos = {}
    for q, d in zip(qrels.column(S.QUERY_ID).to_pylist(), qrels.column(S.DOC_ID).to_pylist()):
        pos.setdefault(q, d)
    (root / "queries").mkdir()
    pads.write_dataset(pa.table({S.QUERY_ID: list(pos), S.QUERY: [text[q] for q in pos], S.DOC_ID: list(pos.values())}),
                       root / "queries", format="parquet")
    docs = [json.loads(line) for line in (BUNDLED / "corpus.jsonl").read_text().splitlines() if line.strip()]
    rows = []
    for i, d in enumerate(docs[:160]):
        words = d["text"].split()
        lp = [-0.1 * (1 + (i * 7 + j) % 5) for j in range(4)]
        rows.append({S.DOC_ID: d["_id"], S.QUERY_ID: f"gen-{i:04d}", S.QUERY: " ".join(words[i % 5:i % 5 + 4]) + "?",
                     S.TOKEN_LOGPROBS: lp, S.MEAN_LOGPROB: sum(lp) / 4, S.NUM_TOKENS: 4, S.PROMPT_NAME: "inpars",
                     S.MODEL: "tiny", S.BACKEND: "hf", S.FEWSHOT_IDS: ["f1"], S.ERROR: None})
    (root / "generated").mkdir()
    pads.write_dataset(pa.Table.from_pylist(rows, schema=S.GENERATED), root / "generated", format="parquet")
    return collection, root, str(build_tiny_monot5(root / "monot5"))


def _table(path: Path, sort: list[str]) -> pa.Table:
    return pads.dataset(str(path), format="parquet").to_table().sort_by([(c, "ascending") for c in sort])


def test_rerank_survives_a_killed_ranker_actor(setup):
    from inpars_ray.stages.rerank import RerankConfig, rerank_run

    collection, root, model = setup
    config = RerankConfig(ranker=RankerConfig(model=model, batch_size=4), depth=30, rows_per_call=4, partitions=2)
    want = rerank_run(collection, root / "bm25.trec", root / "rerank-ref.trec", config)
    got, pid = run_with_kill(lambda: rerank_run(collection, root / "bm25.trec", root / "rerank-kill.trec", config),
                             "RankerUDF")
    assert (root / "rerank-kill.trec").read_bytes() == (root / "rerank-ref.trec").read_bytes()
    assert got["counts"] == want["counts"]


def test_filter_reranker_survives_a_killed_ranker_actor(setup):
    from inpars_ray.stages.filter import FilterConfig, run_filter

    collection, root, model = setup
    config = FilterConfig(strategy="reranker", ranker=RankerConfig(model=model, batch_size=2), keep_top_k=60,
                          rows_per_call=2, shuffle_partitions=2)
    want = run_filter(root / "generated", collection, root / "filter-ref", config)
    got, pid = run_with_kill(lambda: run_filter(root / "generated", collection, root / "filter-kill", config),
                             "RankerUDF")
    cols = [S.QUERY_ID]
    assert _table(root / "filter-kill" / "kept", cols).equals(_table(root / "filter-ref" / "kept", cols))
    assert got["counts"] == want["counts"]


def test_mine_survives_a_killed_searcher_actor(setup):
    from inpars_ray.stages.mine import MineConfig, run_mine
    from inpars_ray.stages.retrieve import BM25Config

    collection, root, _ = setup
    config = MineConfig(depth=200, negatives=2, seed=7, shuffle_partitions=2, queries_per_call=1,
                        bm25=BM25Config(threads=1))
    want = run_mine(root / "queries", collection, root / "index", root / "mine-ref", config)
    got, pid = run_with_kill(lambda: run_mine(root / "queries", collection, root / "index", root / "mine-kill", config),
                             "NegativeMiner")
    cols = [S.QUERY_ID, S.NEG_RANK]
    assert _table(root / "mine-kill" / "triples", cols).equals(_table(root / "mine-ref" / "triples", cols))
    assert got["counts"] == want["counts"]


def test_consistency_survives_a_killed_ranker_actor(setup, tmp_path):
    """The consistency filter (retrieve with Lucene, score with a cross-encoder, keep the source in the top k):
    a ranker actor is SIGKILLed mid-stage; kept and dropped equal the unfaulted run's, row for row."""
    import pyarrow.parquet as pq

    from inpars_ray.stages.consistency import ConsistencyConfig, run_consistency
    from inpars_ray.testing.tiny_bert import build_tiny_cross_encoder

    collection, root, _ = setup
    generated = pads.dataset(str(root / "generated"), format="parquet").to_table()
    filtered = generated.append_column(S.FILTER_SCORE, pa.array([0.0] * generated.num_rows)).cast(S.FILTERED)
    (tmp_path / "filter" / "kept").mkdir(parents=True)
    pq.write_table(filtered, tmp_path / "filter" / "kept" / "part-0.parquet")
    model = str(build_tiny_cross_encoder(tmp_path / "ce"))
    config = ConsistencyConfig(ranker=RankerConfig(model=model, max_length=64), k=3, depth=10, rows_per_call=8,
                               partitions=2)
    want = run_consistency(tmp_path / "filter", collection, root / "index", tmp_path / "ref", config)
    got, pid = run_with_kill(lambda: run_consistency(tmp_path / "filter", collection, root / "index",
                                                     tmp_path / "kill", config), "RankerUDF")
    for part in ("kept", "dropped"):
        assert _table(tmp_path / "kill" / part, [S.QUERY_ID]).equals(_table(tmp_path / "ref" / part, [S.QUERY_ID]))
    assert got["counts"] == want["counts"]
    assert want["counts"]["kept"] + want["counts"]["dropped_inconsistent"] == filtered.num_rows  # all accounted for


def test_teacher_survives_a_killed_ranker_actor(setup, tmp_path):
    """The teacher stage (GPL pseudo-labels, the tiny monoT5 as teacher): a ranker actor is SIGKILLed
    mid-stage; the scored triples equal the unfaulted run's row for row, scores within 1e-6, counts equal."""
    import numpy as np

    from inpars_ray.stages.teacher import NEG_SCORE, POS_SCORE, TeacherConfig, run_teacher
    from inpars_ray.testing.tiny_t5 import build_tiny_triples

    _, _, model = setup
    triples = build_tiny_triples(tmp_path / "triples", repeat=2, limit=96, files=2)
    # small calls: many batches, so the kill lands while the actor has more to do
    config = TeacherConfig(rankers=(RankerConfig(model=model, max_length=128, batch_size=4),), rows_per_call=4,
                           partitions=2)
    want = run_teacher(triples, tmp_path / "ref", config)
    got, pid = run_with_kill(lambda: run_teacher(triples, tmp_path / "kill", config), "RankerUDF")
    cols = [S.QUERY_ID, S.POS_DOC_ID, S.NEG_DOC_ID, S.NEG_RANK]
    ref, kill = _table(tmp_path / "ref" / "triples", cols), _table(tmp_path / "kill" / "triples", cols)
    scores = [POS_SCORE, NEG_SCORE]
    assert kill.drop_columns(scores).equals(ref.drop_columns(scores))
    for col in scores:
        assert np.allclose(kill.column(col).to_numpy(), ref.column(col).to_numpy(), rtol=0, atol=1e-6), col
    assert got["counts"] == want["counts"]
    assert want["counts"]["triples"] == ref.num_rows == 96  # every triple scored once


# --- generate with an API backend: paid once per document ---------------------------------------------------
def _generate_config(url: str, num_docs: int, **options):
    from inpars_ray.stages.generate import GenerateConfig

    return GenerateConfig(backend="openai", model="echo", prompt="inpars", num_docs=num_docs, seed=5,
                          backend_options={"api_key_env": None, "base_url": f"{url}/v1", **options})


def test_a_retried_generate_batch_whose_part_was_written_is_not_paid_again(ray_session, tmp_path):
    """Ray Data's at-least-once retry of a batch whose part was already written costs no request."""
    from inpars_ray.models.prompts import resolve_template
    from inpars_ray.stages.generate import GenerateWorker, read_generated

    collection = catalog.resolve(str(BUNDLED))
    docs = [json.loads(line) for line in (BUNDLED / "corpus.jsonl").read_text().splitlines()[:3]]
    batch = pa.table({S.DOC_ID: [d["_id"] for d in docs], S.TITLE: [d.get("title", "") for d in docs],
                      S.TEXT: [d["text"] for d in docs]})
    with GatedEcho() as server:
        config = _generate_config(server.url, 3)
        template = resolve_template(config.prompt, collection, config.seed, config.num_fewshot, config.fewshot_split)
        worker = GenerateWorker(config, template, storage.location(tmp_path / "parts"))
        first = worker(batch)
        again = GenerateWorker(config, template, storage.location(tmp_path / "parts"))(batch)  # a restarted actor
        assert server.requests["/v1/completions"] == 3  # the retry found the part: no request
    assert first.column("part").to_pylist() == again.column("part").to_pylist()
    assert again.column("docs").to_pylist() == [3]
    assert read_generated(tmp_path).num_rows == 3


def _part_docs(parts: Path) -> list[str]:
    return [d for p in sorted(parts.glob("part-*.parquet"))
            for d in pads.dataset(str(p)).to_table(columns=[S.DOC_ID]).column(S.DOC_ID).to_pylist()]


def test_generate_survives_a_killed_worker_and_pays_only_the_request_in_flight(ray_session, tmp_path):
    """Batches of up to 16 documents, asked one at a time. The endpoint holds the first request that
    arrives once its batch has 2 answers journaled; the actor is SIGKILLed when every answer it received is
    durable (in a part or in the journal). The retry takes the journaled answers and asks only for the
    rest: the one document paid twice is the request in flight, whose answer went to a process that was
    gone (no client can keep that one). Without the journal, the batch's received answers would be paid
    again too."""
    from inpars_ray.models.prompts import resolve_template
    from inpars_ray.stages.generate import PARTS, GenerateResources, answer_journal, read_generated, run_generate

    collection = catalog.resolve(str(BUNDLED))
    n = 16
    resources = GenerateResources(batch_size=n, num_actors=1)
    with GatedEcho() as server:
        run_generate(collection, tmp_path / "ref", _generate_config(server.url, n), resources)
        ref_paid = sum(server.answered.values())
    config = _generate_config("http://127.0.0.1:0", n, max_concurrency=1)  # the URL is set below
    parts = tmp_path / "kill" / PARTS

    def journaled() -> int:
        folder = answer_journal(parts, config, template).folder
        return sum(len(f.read_bytes().splitlines()) for f in folder.glob("*.jsonl")) if folder.is_dir() else 0

    with GatedEcho(hold_if=lambda: journaled() >= 2) as server:
        config = _generate_config(server.url, n, max_concurrency=1)
        template = resolve_template(config.prompt, collection, config.seed, config.num_fewshot, config.fewshot_split)
        thread_result: dict = {}
        thread = threading.Thread(target=lambda: thread_result.setdefault(
            "manifest", run_generate(collection, tmp_path / "kill", config, resources)))
        thread.start()

        def all_received_are_durable() -> bool:
            with server._count:
                answered = sum(server.answered.values())
            return server.holding and answered == journaled() + len(_part_docs(parts))

        wait_for(lambda: all_received_are_durable() or not thread.is_alive(), 300,
                 "a request held at the endpoint, with every answer received journaled or in a part")
        pid = wait_for(lambda: _running_actor_pid("GenerateWorker") or (not thread.is_alive() and -1), 60,
                       "the generate actor running its batch")
        assert pid != -1 and thread.is_alive()
        in_journal = journaled()
        with server._count:
            before_kill = dict(server.answered)
        os.kill(pid, signal.SIGKILL)  # its next request is in flight, held at the endpoint
        server.open()
        thread.join(600)
        assert "manifest" in thread_result, "the stage did not finish after its actor was killed"
        paid_twice = sorted(p for p, c in server.answered.items() if c > 1)
        paid = sum(server.answered.values())
    got, want = read_generated(tmp_path / "kill"), read_generated(tmp_path / "ref")
    cols = [S.DOC_ID, S.QUERY_ID, S.QUERY, S.ERROR, S.NUM_TOKENS, S.TOKEN_LOGPROBS]
    assert got.select(cols).equals(want.select(cols))
    assert thread_result["manifest"]["counts"]["rows"] == n and ref_paid == n
    assert in_journal >= 2 and not set(before_kill) & set(paid_twice)  # no answer received was paid again
    assert len(paid_twice) == 1 and paid == n + 1, (paid, paid_twice)  # only the request in flight
    assert not answer_journal(parts, config, template).folder.exists()  # the stage completed: journal gone
    print(f"generate kill: {n} documents, {paid} completions answered, {len(paid_twice)} paid twice (the request "
          f"in flight); {in_journal} journaled answers of the killed batch not asked again")
    ids = _part_docs(parts)
    assert sorted(ids) == sorted(set(ids)) and len(ids) == n  # each document in exactly one part
