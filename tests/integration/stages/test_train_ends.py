"""Training ends (issue 9.8): 1 and 2 workers, several epochs, a step count that is not a multiple of the
data, on a few dozen triples, with the default CPU reservation, on a 2-CPU Ray.

The runs happen in a child process with a deadline: a hang fails the test (the child's process group is
killed) instead of hanging the suite. The child starts its own local Ray (``RAY_ADDRESS=local``), so
nothing is shared with the session's Ray.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

from inpars_ray.testing.tiny_bert import build_tiny_cross_encoder
from inpars_ray.testing.tiny_t5 import build_tiny_monot5, build_tiny_triples
from tests.support.deadline import run_child

# generous: on a loaded 2-core machine each run takes minutes; an unloaded one finishes all in about two
DEADLINE_S = 1500

CHILD = textwrap.dedent("""
    import json, sys
    from inpars_ray.stages.train_config import TrainConfig
    from inpars_ray.stages.train import train
    from inpars_ray.runtime.raykit import ensure_ray
    ensure_ray(num_cpus=2)
    out = {}
    for name, spec in json.loads(sys.argv[1]).items():
        m = train(spec["triples"], spec["out"], TrainConfig(**spec["config"]))
        out[name] = {"steps": m["counts"]["steps"], "epochs": sorted({h["epoch"] for h in m["extra"]["history"]}),
                     "examples": m["counts"]["examples"], "model": m["extra"]["model"]}
    print("RESULT " + json.dumps(out))
""")


def test_training_ends_with_one_and_two_workers_several_epochs_and_odd_step_counts(tmp_path):
    monot5 = build_tiny_monot5(tmp_path / "t5")
    cross = build_tiny_cross_encoder(tmp_path / "ce")
    triples = build_tiny_triples(tmp_path / "triples", files=2, limit=31)
    n = pq.read_table(triples).num_rows
    assert n == 31
    base = dict(max_length=64, lr=1e-3, checkpoint_every=1000, micro_batch_size=8)
    cases = {
        # 1 worker, 3 epochs
        "one_worker_3_epochs": dict(config=dict(base_model=str(monot5), num_workers=1, epochs=3, batch_size=16, **base)),
        # the reported hang (2 workers, --batch-size 16, default CPU reservation), for 7 steps: beyond one
        # epoch (4 steps of 16 examples) and not a multiple of it
        "two_workers_steps_7": dict(config=dict(base_model=str(monot5), num_workers=2, max_steps=7, batch_size=16, **base)),
        # a listwise cross-encoder, 2 workers, 2 epochs over its lists
        "cross_encoder_2_epochs": dict(config=dict(base_model=str(cross), num_workers=2, epochs=2, batch_size=4,
                                                   max_length=64, lr=1e-3, micro_batch_size=2, checkpoint_every=1000)),
    }
    for name, case in cases.items():
        case["triples"], case["out"] = str(triples), str(tmp_path / name)
    result = run_child(CHILD, cases, DEADLINE_S, "training (issue 9.8)")

    per_epoch = math.ceil(2 * n / 16)
    assert result["one_worker_3_epochs"]["steps"] == 3 * per_epoch
    assert result["one_worker_3_epochs"]["epochs"] == [0, 1, 2]
    assert result["one_worker_3_epochs"]["examples"] == 3 * 2 * n
    assert result["two_workers_steps_7"]["steps"] == 7 and result["two_workers_steps_7"]["epochs"] == [0, 1]
    lists = len(set(zip(*(pq.read_table(triples).column(c).to_pylist() for c in ("query_id", "pos_doc_id")))))
    assert result["cross_encoder_2_epochs"]["steps"] == 2 * math.ceil(lists / 4)
    assert result["cross_encoder_2_epochs"]["examples"] == 2 * lists
    for name, r in result.items():  # every run ended with a model that loads
        assert (Path(r["model"]) / "config.json").exists(), name
