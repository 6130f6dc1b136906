"""Pure pieces of the training stage: batch geometry, examples, labels, loss (real torch, no Ray)."""
from __future__ import annotations

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.models.losses import encode_examples, expand_triples, loss_sum
from inpars_ray.stages.train_config import TrainConfig, plan_steps
from inpars_ray.stages.train_loop import ndcg_at_10
from inpars_ray.testing.tiny_t5 import build_tiny_monot5


def test_plan_splits_the_effective_batch_over_workers_and_micro_steps():
    assert plan_steps(128, 8, 2) == plan_steps(128, 8, 2)
    p = plan_steps(128, 8, 2)
    assert (p.micro_triples, p.accum_steps, p.triples_per_step) == (4, 8, 32)
    # every example of the effective batch is one of (workers x accum x micro) slots
    assert 2 * p.triples_per_step * 2 == 128
    with pytest.raises(ConfigError, match="multiple"):
        plan_steps(128, 6, 3)
    with pytest.raises(ConfigError, match="even"):
        plan_steps(128, 3, 1)


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="accelerator"):
        TrainConfig(base_model="x", accelerator="npu")
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig(base_model="x", max_steps=0)
    with pytest.raises(ConfigError, match="multiple"):
        TrainConfig(base_model="x", batch_size=100, micro_batch_size=8)


@pytest.mark.parametrize("name, bad", [
    ("batch_size", 0), ("micro_batch_size", 0), ("rows_per_block", 0), ("max_length", 0), ("epochs", 0),
    ("num_workers", 0), ("checkpoint_every", 0), ("keep_checkpoints", 0), ("max_steps", 0), ("validate_every", 0),
    ("max_failures", -1), ("max_negatives", 0), ("temperature", 0.0), ("warmup_steps", -1), ("cpus_per_worker", 0.0),
    ("family", "bi_encoder"), ("loss", "hinge"), ("pooling", "max"), ("accelerator", "npu"),
])
def test_a_value_out_of_its_range_or_choices_is_refused_naming_the_setting_and_the_value(name, bad):
    with pytest.raises(ConfigError, match=rf"TrainConfig: {name}: .*\(got {bad!r}\)"):
        TrainConfig(base_model="x", **{name: bad})


def test_a_loss_of_another_family_is_refused_naming_both():
    with pytest.raises(ConfigError, match="a bi-encoder trains with loss .* not 'monot5'"):
        TrainConfig(base_model="x", family="bi-encoder", loss="monot5")
    assert TrainConfig(base_model="x", family="bi-encoder", loss="kl", batch_size=8).loss == "kl"


def test_each_triple_gives_a_true_and_a_false_example():
    rows = [{S.QUERY_ID: "q1", S.QUERY: "coral", S.POS_DOC_ID: "d1", S.POS_TEXT: "pos text",
             S.NEG_DOC_ID: "d9", S.NEG_TEXT: "neg text"}]
    q, d, t, ids = expand_triples(rows)
    assert q == ["coral", "coral"] and d == ["pos text", "neg text"] and t == ["true", "false"]
    assert len(set(ids)) == 2 and all(i.startswith("q1\td1\td9") for i in ids)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = build_tiny_monot5(tmp_path_factory.mktemp("tiny-monot5"))
    return AutoModelForSeq2SeqLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_labels_are_the_target_tokens_and_padding_carries_no_loss(tiny):
    _, tok = tiny
    batch = encode_examples(tok, ["coral", "algae"], [" ".join(["reef"] * 300), "x"], ["true", "false"], 32)
    assert batch["input_ids"].shape[1] == 32
    true_id = tok.encode("true", add_special_tokens=False)[0]
    assert batch["labels"][0].tolist() == [true_id, tok.eos_token_id]
    assert tok.decode(batch["input_ids"][0], skip_special_tokens=True).endswith("relevant :")
    assert (batch["attention_mask"][1].sum() < 32) and (batch["attention_mask"][0].sum() == 32)


def test_a_few_steps_lower_the_loss_and_padding_does_not_change_it(tiny):
    import copy

    import torch

    model, tok = tiny
    model = copy.deepcopy(model)
    q, d, t = ["coral bleaching", "coral bleaching"], ["thermal bleaching stress", "lithium cathode"], ["true", "false"]
    batch = encode_examples(tok, q, d, t, 64)
    model.eval()
    with torch.no_grad():
        both = loss_sum(model, batch).item()
        singles = sum(loss_sum(model, encode_examples(tok, [a], [b], [c], 64)).item() for a, b, c in zip(q, d, t))
    assert both == pytest.approx(singles, rel=1e-4)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = loss_sum(model, batch).item()
    for _ in range(10):
        opt.zero_grad()
        loss_sum(model, batch).backward()
        opt.step()
    assert loss_sum(model, batch).item() < 0.5 * start


def test_ndcg_at_10_prefers_the_right_order():
    qrels = pa.table({S.QUERY_ID: ["q1"], S.DOC_ID: ["d1"], S.RELEVANCE: [1]})
    good = pa.table({S.QUERY_ID: ["q1", "q1"], S.DOC_ID: ["d1", "d2"], S.SCORE: [0.9, 0.1]})
    bad = pa.table({S.QUERY_ID: ["q1", "q1"], S.DOC_ID: ["d1", "d2"], S.SCORE: [0.1, 0.9]})
    assert ndcg_at_10(good, qrels) == pytest.approx(1.0)
    assert ndcg_at_10(bad, qrels) == pytest.approx(1 / 1.5849625, rel=1e-4)


def test_cli_parses_into_a_train_config_and_derives_the_micro_batch():
    from inpars_ray.cli import build_parser
    from inpars_ray.cli._common import given
    from inpars_ray.cli.train import micro_batch

    args = build_parser().parse_args(["train", "--triples", "t", "--base-model", "m", "--out", "o", "--workers", "2",
                                      "--accelerator", "gpu", "--steps", "156", "--lr", "1e-3", "--grad-accum", "4"])
    values = given(args)  # options come from TrainConfig; unset ones keep its defaults
    assert (values["num_workers"], values["accelerator"], values["max_steps"], values["lr"]) == (2, "gpu", 156, 1e-3)
    assert "batch_size" not in values
    assert micro_batch(128, values["num_workers"], values.get("micro_batch_size"), args.grad_accum) == 16
    assert micro_batch(128, 1, None, None) is None
    with pytest.raises(ConfigError):
        micro_batch(128, 3, None, 4)
    with pytest.raises(ConfigError, match="not both"):
        micro_batch(128, 1, 8, 4)


def test_training_order_is_fixed_by_content_and_seed_not_by_layout():
    from inpars_ray.stages.train import ORDER_KEY, _sorted_part, order_keys

    rows = [{S.QUERY_ID: f"q{i % 7}", S.POS_DOC_ID: f"d{i % 7}", S.NEG_DOC_ID: f"n{i}"} for i in range(40)]

    def order(parts, seed):  # the rows split into blocks, keyed block by block, then sorted together
        keyed = [order_keys(pa.Table.from_pylist(p), seed, grouped=False) for p in parts]
        return _sorted_part(pa.concat_tables(keyed)).column(S.NEG_DOC_ID).to_pylist()

    one_block = order([rows], seed=0)
    assert order([rows[25:], rows[:9], rows[9:25]], seed=0) == one_block  # another layout, same order
    assert sorted(one_block) == sorted(r[S.NEG_DOC_ID] for r in rows)  # nothing lost or added
    assert one_block != [r[S.NEG_DOC_ID] for r in rows]  # shuffled, not the input order
    assert order([rows], seed=1) != one_block  # the seed reorders
    assert ORDER_KEY not in _sorted_part(order_keys(pa.Table.from_pylist(rows), 0, False)).column_names


def test_a_damaged_dev_set_file_is_a_typed_error_and_its_stage_is_marked(tmp_path):
    """The train loop reads its dev set through artifacts.read_parquet: a byte flipped in a file that keeps its
    size is an ArtifactDamagedError naming it (never wrong rows), and the dev set's manifest is marked."""
    import pyarrow.parquet as pq

    from inpars_ray.errors import ArtifactDamagedError
    from inpars_ray.io import artifacts
    from inpars_ray.io.manifest import StageRecord, read_manifest
    from inpars_ray.stages.train_loop import _DevSet
    from tests.unit.io.test_damage import flip_a_data_byte

    n = 300  # enough rows that the flipped byte lands in a data page
    pairs = pa.table({S.QUERY_ID: [f"q{i}" for i in range(n)], S.QUERY: [f"query {i}" for i in range(n)],
                      S.DOC_ID: [f"d{i}" for i in range(n)], S.TEXT: [f"text {i}" for i in range(n)]})
    qrels = pa.table({S.QUERY_ID: [f"q{i}" for i in range(n)], S.DOC_ID: [f"d{i}" for i in range(n)],
                      S.RELEVANCE: [1] * n}, schema=S.QRELS)
    for name, table in (("dev_pairs.parquet", pairs), ("dev_qrels.parquet", qrels)):
        pq.write_table(table, tmp_path / name, **artifacts.PARQUET_WRITE)
    StageRecord("devset", {"k": 1}).write(tmp_path, files={
        name: (tmp_path / name).stat().st_size for name in ("dev_pairs.parquet", "dev_qrels.parquet")})
    dev = {"pairs": str(tmp_path / "dev_pairs.parquet"), "qrels": str(tmp_path / "dev_qrels.parquet")}
    config = TrainConfig(base_model="x")
    assert _DevSet(dev, config).pairs.equals(pairs)  # undamaged: read back whole
    flip_a_data_byte(tmp_path / "dev_pairs.parquet")
    with pytest.raises(ArtifactDamagedError, match="dev_pairs.parquet"):
        _DevSet(dev, config)
    assert read_manifest(tmp_path)["status"] == "damaged"


def test_training_blocks_give_every_worker_several_on_small_data_and_stay_capped_on_large():
    from inpars_ray.stages.train import BLOCKS_PER_WORKER, block_rows

    # 518 lists on 2 workers: the 1,024-row cap alone would make one block, all of it on the first worker
    per = block_rows(518, 2, 1024)
    assert -(-518 // per) >= 2 * BLOCKS_PER_WORKER
    assert block_rows(10_000_000, 4, 1024) == 1024
    assert block_rows(3, 2, 1024) == 1
    assert block_rows(0, 2, 1024) == 1
