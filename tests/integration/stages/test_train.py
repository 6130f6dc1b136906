"""Ray Train on local CPU workers with the tiny monoT5: learning, example accounting, resume after SIGKILL."""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inpars_ray import schema as S
from inpars_ray.models.losses import encode_examples, expand_triples, loss_sum, triple_id
from inpars_ray.stages.train import train
from inpars_ray.stages.train_config import STAGE, TrainConfig
from inpars_ray.testing.tiny_bert import build_tiny_cross_encoder
from inpars_ray.testing.tiny_t5 import build_tiny_monot5, build_tiny_triples

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_monot5(tmp_path_factory.mktemp("tiny-monot5"))


def _mean_loss(model_path, rows) -> float:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(model_path).eval()
    tok = AutoTokenizer.from_pretrained(model_path)
    q, d, t, _ = expand_triples(rows)
    with torch.no_grad():
        return loss_sum(model, encode_examples(tok, q, d, t, 96)).item() / len(q)


def test_two_workers_learn_see_each_example_once_and_rerun_is_a_no_op(tmp_path, tiny_model):
    triples = build_tiny_triples(tmp_path / "triples", files=3, limit=320)
    table = pq.read_table(triples)
    n = table.num_rows
    cfg = TrainConfig(base_model=str(tiny_model), batch_size=32, micro_batch_size=8, num_workers=2, max_length=96,
                      lr=3e-3, checkpoint_every=10, cpus_per_worker=0.5, rows_per_block=64)
    out = tmp_path / "run"
    manifest = train(triples, out, cfg, record_dir=str(tmp_path / "rec"))

    # gradient accumulation (2 micro-steps) x 2 workers: every example exactly once in the epoch
    seen = Counter()
    for f in (tmp_path / "rec").glob("seen_rank*.txt"):
        seen.update(line.split("\t", 1)[1].rstrip("\n") for line in f.read_text().splitlines())
    expected = {f"{triple_id(q, p, g)}\t{s}" for q, p, g in zip(table[S.QUERY_ID].to_pylist(),
                table[S.POS_DOC_ID].to_pylist(), table[S.NEG_DOC_ID].to_pylist()) for s in "+-"}
    assert set(seen) == expected and set(seen.values()) == {1}
    assert len(list((tmp_path / "rec").glob("seen_rank*.txt"))) == 2  # both workers trained
    assert manifest["counts"]["steps"] == math.ceil(2 * n / 32)
    assert manifest["counts"]["examples"] == 2 * n
    history = manifest["extra"]["history"]
    assert [h["step"] for h in history] == list(range(1, len(history) + 1))
    assert all(h["examples"] == 32 for h in history[:-1])  # uneven splits still fill every step but the last
    assert all(h["lr"] == pytest.approx(3e-3) and h["examples_per_s"] > 0 for h in history)

    # the saved model loads with from_pretrained, scores pairs, and fits the training triples far better
    sample = table.slice(0, 64).to_pylist()
    before, after = _mean_loss(tiny_model, sample), _mean_loss(out / "model", sample)
    assert after < 0.3 * before, (before, after)
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from inpars_ray.models.monot5 import score_pairs

    scores = score_pairs(AutoModelForSeq2SeqLM.from_pretrained(out / "model"),
                         AutoTokenizer.from_pretrained(out / "model"), ["coral bleaching"] * 2,
                         ["thermal stress bleaching", "lithium cathode"], 96)
    assert ((scores > 0) & (scores < 1)).all()

    # a rerun of the finished config does nothing
    again = train(triples, out, cfg, record_dir=str(tmp_path / "rec"))
    assert again["finished_at"] == manifest["finished_at"] and again["stage"] == STAGE
    assert len([x for x in (tmp_path / "rec" / "events.log").read_text().splitlines() if x.startswith("start")]) == 2


def _wait_for(predicate, deadline_s: float, what: str, poll_s: float = 0.2):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)  # polling a condition with a deadline, not sleeping to synchronise
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")


@pytest.mark.parametrize("family", ["monot5", "cross-encoder"])
def test_a_killed_worker_is_replaced_and_training_resumes_from_the_checkpoint(tmp_path, tiny_model, family):
    triples = build_tiny_triples(tmp_path / "triples", files=2, limit=160, repeat=3)
    table = pq.read_table(triples)
    rec = tmp_path / "rec"
    if family == "monot5":
        n = 2 * table.num_rows  # examples: two per triple
        cfg = TrainConfig(base_model=str(tiny_model), batch_size=16, micro_batch_size=8, num_workers=2, max_length=96,
                          lr=3e-3, checkpoint_every=3, max_failures=2, cpus_per_worker=0.5, rows_per_block=64)
    else:  # listwise: one list per (query, positive), with all its negatives
        n = len(set(zip(table[S.QUERY_ID].to_pylist(), table[S.POS_DOC_ID].to_pylist())))
        cfg = TrainConfig(base_model=str(build_tiny_cross_encoder(tmp_path / "ce")), batch_size=4, micro_batch_size=2,
                          num_workers=2, max_length=96, lr=1e-3, checkpoint_every=3, max_failures=2,
                          cpus_per_worker=0.5, rows_per_block=8)
    out = tmp_path / "run"
    box: dict = {}
    runner = threading.Thread(target=lambda: box.update(manifest=train(triples, out, cfg, record_dir=str(rec))),
                              daemon=True)
    runner.start()

    def two_checkpoints():
        # the second one existing means the first was registered by Ray Train well before
        return len(list((out / "ray").glob("*/checkpoint_*/trainer_state.pt"))) >= 2

    _wait_for(two_checkpoints, 600, "two checkpoints")
    victim = int((rec / "rank1.pid").read_text())
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=900)
    assert not runner.is_alive(), "training did not finish after the kill"
    manifest = box["manifest"]

    starts = [dict(kv.split("=") for kv in line.split()[1:])
              for line in (rec / "events.log").read_text().splitlines() if line.startswith("start")]
    restarted = [s for s in starts if int(s["step"]) > 0]
    assert restarted, f"no worker restored a checkpoint: {starts}"
    assert int((rec / "rank1.pid").read_text()) != victim
    # the same final step count as an uninterrupted run, and the history is continuous
    assert manifest["counts"]["steps"] == math.ceil(n / cfg.batch_size)
    assert [h["step"] for h in manifest["extra"]["history"]] == list(range(1, manifest["counts"]["steps"] + 1))
    assert manifest["counts"]["examples"] == n


@pytest.mark.parametrize("teacher", [False, True], ids=["hard-labels", "margins+hard-labels"])
def test_two_workers_score_each_query_against_every_document_of_the_global_batch(tmp_path, teacher):
    """The contrastive loss of a bi-encoder on 2 Ray Train workers (gloo), 2 lists per micro-batch: the first
    step's loss is that of one pass over all the step's lists together, every document a negative of every
    query (gradient caching, in_batch=batch), not the mean of the micro-batches' own losses. With a teacher's
    scores and ``contrastive_weight``, the loss is the margins' plus the weighted whole-batch one."""
    import pyarrow as pa
    import torch
    from transformers import AutoModel, AutoTokenizer

    from inpars_ray.models.distill import distill_from_embeddings
    from inpars_ray.models.losses import contrastive_loss_sum, group_id, group_triples, list_embeddings
    from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder

    bi = build_tiny_bi_encoder(tmp_path / "bi")  # dropout 0: the recorded loss is the start model's own
    triples = build_tiny_triples(tmp_path / "triples", files=2, repeat=2, limit=640)
    table = pq.read_table(triples)
    if teacher:  # the teacher stage's columns: a score per (query, positive) and per (query, negative)
        n = table.num_rows
        table = table.append_column("pos_score", pa.array([0.8 + (i % 7) / 50 for i in range(n)], pa.float64()))
        table = table.append_column("neg_score", pa.array([0.3 + (i % 5) / 20 for i in range(n)], pa.float64()))
        triples = tmp_path / "scored"
        triples.mkdir()
        pq.write_table(table, triples / "part-0.parquet")
    cfg = TrainConfig(base_model=str(bi), family="bi-encoder", loss="margin-mse" if teacher else "contrastive",
                      contrastive_weight=0.5 if teacher else 0.0, batch_size=8, micro_batch_size=2,
                      num_workers=2, max_length=64, max_steps=1, cpus_per_worker=0.5)
    manifest = train(triples, tmp_path / "run", cfg, record_dir=str(tmp_path / "rec"))

    seen = {}
    for f in (tmp_path / "rec").glob("seen_rank*.txt"):
        seen[f.name] = [line.split("\t", 1)[1] for line in f.read_text().splitlines()]
    assert len(seen) == 2 and all(seen.values())  # both workers held lists of the step
    step_lists = {x for ids in seen.values() for x in ids}
    assert len(step_lists) == 8
    rows = []
    for gid in sorted(step_lists):
        q, p = gid.split("\t")
        mask = [a == q and b == p for a, b in zip(table[S.QUERY_ID].to_pylist(), table[S.POS_DOC_ID].to_pylist())]
        rows += group_triples(table.filter(mask)).to_pylist()
    assert {group_id(r[S.QUERY_ID], r[S.POS_DOC_ID]) for r in rows} == step_lists

    model, tok = AutoModel.from_pretrained(bi).eval(), AutoTokenizer.from_pretrained(bi)
    with torch.no_grad():
        whole = contrastive_loss_sum(model, tok, rows, 64, "cpu").item() / len(rows)
        by_micro = sum(contrastive_loss_sum(model, tok, rows[i:i + 2], 64, "cpu").item()
                       for i in range(0, len(rows), 2)) / len(rows)
        if teacher:
            margins = distill_from_embeddings(rows, *list_embeddings(model, tok, rows, 64, "cpu"), "margin-mse",
                                              0.05, 0.05, model=model).item() / len(rows)
            assert margins > 0
            whole, by_micro = margins + 0.5 * whole, margins + 0.5 * by_micro
    recorded = manifest["extra"]["history"][0]["loss"]
    assert recorded == pytest.approx(whole, rel=1e-4)
    assert by_micro < whole * 0.9  # the check tells the two apart
