"""The torch-xla training path on torch-xla's CPU PJRT device (no TPU here); needs .venv-xla.

Run:  scripts/setup_xla_venv.sh && .venv-xla/bin/python -m pytest tests/xla -q
"""
from __future__ import annotations

import importlib.util
import math
import os

import pytest

pytestmark = [
    pytest.mark.xla,
    pytest.mark.skipif(importlib.util.find_spec("torch_xla") is None,
                       reason="torch-xla is not installed: build .venv-xla with scripts/setup_xla_venv.sh and run "
                              "these tests with .venv-xla/bin/python -m pytest tests/xla"),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from inpars_ray.testing.tiny_t5 import build_tiny_monot5

    return build_tiny_monot5(tmp_path_factory.mktemp("tiny-monot5"))


def test_a_monot5_step_runs_on_the_xla_device_and_lowers_the_loss(tiny_model, monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from inpars_ray.models.losses import encode_examples, loss_sum
    from inpars_ray.runtime.tpu import xla_device, xla_sync

    device = xla_device()
    assert device.type == "xla"
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model).to(device).train()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    batch = {k: v.to(device) for k, v in encode_examples(
        tok, ["coral bleaching"] * 2, ["thermal stress bleaching", "lithium cathode"], ["true", "false"], 64).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_sum(model, batch)
        loss.backward()
        opt.step()
        xla_sync()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_ray_train_tpu_path_on_the_xla_cpu_device(tmp_path, tiny_model, ray_session, monkeypatch):
    monkeypatch.setenv("INPARS_PJRT_DEVICE", "CPU")
    import pyarrow.parquet as pq
    from transformers import AutoModelForSeq2SeqLM

    from inpars_ray.stages.train import train
    from inpars_ray.stages.train_config import TrainConfig
    from inpars_ray.testing.tiny_t5 import build_tiny_triples

    triples = build_tiny_triples(tmp_path / "triples", files=2)
    cfg = TrainConfig(base_model=str(tiny_model), accelerator="tpu", tpu_chips_per_worker=0, num_workers=2,
                      batch_size=16, micro_batch_size=8, max_length=64, lr=3e-3, max_steps=4, checkpoint_every=2,
                      cpus_per_worker=0.5, rows_per_block=64)
    manifest = train(triples, tmp_path / "run", cfg, record_dir=str(tmp_path / "rec"))
    assert manifest["counts"]["steps"] == 4
    hist = manifest["extra"]["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert pq.read_table(triples).num_rows > 0
    AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "model")  # plain torch loads the XLA-trained model
    assert len(list((tmp_path / "rec").glob("seen_rank*.txt"))) == 2
    assert not math.isnan(hist[-1]["loss"])
    assert os.environ["INPARS_PJRT_DEVICE"] == "CPU"
