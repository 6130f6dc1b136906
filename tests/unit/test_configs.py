"""The pipeline's typed config: shipped configs resolve with the papers' values and devices; a bad key
or value fails before any work, naming the key and the file; overrides go through the same model."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inpars_ray.cli import main
from inpars_ray.config import InparsConfig, PipelineConfig, dump_yaml, load_config
from inpars_ray.errors import ConfigError
from inpars_ray.pipeline import stage_configs

ROOT = Path(__file__).resolve().parents[2]
V2 = ROOT / "configs" / "inpars-v2.yaml"


def test_inpars_v2_config_parses_with_the_papers_settings():
    config = load_config(V2)
    ic = config.inpars
    assert isinstance(ic, InparsConfig)
    assert (ic.generate.num_docs, ic.filter.keep_top_k, ic.train.batch_size) == (100_000, 10_000, 128)
    assert ic.filter.strategy == "reranker" and config.k == 1000


def test_inpars_v2_puts_every_model_stage_on_its_accelerator(tmp_path: Path):
    stages = stage_configs(load_config(V2), tmp_path)
    assert stages.generate.backend == "vllm" and stages.generate_resources.gpus_per_actor == 1
    assert (stages.filter.ranker.device, stages.filter.num_gpus_per_actor) == ("cuda", 1)
    assert (stages.rerank.ranker.device, stages.rerank.num_gpus_per_actor) == ("cuda", 1)
    assert stages.train.accelerator == "tpu"
    assert stages.rerank.ranker.model == str(tmp_path / "train" / "model")  # "trained": the model train writes


def test_misspelt_key_fails_naming_key_and_file(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(V2.read_text().replace("keep_top_k:", "keep_topk:"))
    with pytest.raises(ConfigError, match=r"bad\.yaml: inpars\.filter\.keep_topk: unknown key"):
        load_config(bad)
    # through the CLI: exit status 2 and the message, before Ray or any stage starts (no run folder)
    out_dir = tmp_path / "never"
    assert main(["run", "--config", str(bad), "--out-dir", str(out_dir)]) == 2
    assert "inpars.filter.keep_topk: unknown key" in capsys.readouterr().err
    assert not out_dir.exists()


def test_bad_value_and_override_paths():
    with pytest.raises(ConfigError, match=r"--set inpars.train.lr=-1: inpars.train.lr: Input should be greater"):
        load_config(overrides=["inpars.train.lr=-1"])
    config = load_config(overrides=["inpars.train.lr=1e-3", "inpars.seed=7", "inpars.rerank.ranker.device=cuda"])
    assert config.inpars.rerank.ranker.device == "cuda" and config.inpars.rerank.ranker.model == "trained"
    assert config.inpars.train.lr == 1e-3 and config.inpars.train.batch_size == 16  # the rest keeps its default
    assert {config.inpars.generate.seed, config.inpars.generate.generation.seed, config.inpars.mine.seed,
            config.inpars.train.seed} == {7}
    with pytest.raises(ConfigError, match="set inpars.seed instead"):
        load_config(overrides=["inpars.mine.seed=3"])
    # a ranker setting written flat in its stage's section names the one ranker block it now lives in
    with pytest.raises(ConfigError, match=r"inpars\.rerank\.max_length is now inpars\.rerank\.ranker\.max_length"):
        load_config(overrides=["inpars.rerank.max_length=64"])
    with pytest.raises(ConfigError, match=r"inpars\.filter\.model is now inpars\.filter\.ranker\.model"):
        load_config(overrides=["inpars.filter.model=some/ranker"])


def test_print_config_round_trips(tmp_path: Path, capsys):
    assert main(["run", "--config", str(V2), "--set", "inpars.mine.negatives=3", "--print-config"]) == 0
    printed = tmp_path / "resolved.yaml"
    printed.write_text(capsys.readouterr().out)
    again = load_config(printed)
    assert again == load_config(V2, ["inpars.mine.negatives=3"]) and again.inpars.mine.negatives == 3
    assert dump_yaml(again) == printed.read_text()


def test_bm25_only_config_and_replace():
    assert PipelineConfig.from_dict({"inpars": None}).inpars is None
    config = dataclasses.replace(PipelineConfig(), split="dev")
    assert config.split == "dev" and config.inpars == InparsConfig()
    with pytest.raises(ConfigError, match="unknown key"):
        PipelineConfig(splt="dev")


def test_the_teacher_is_skipped_only_when_nothing_reads_its_scores():
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.inpars.teacher_unread() is None  # margin-mse distils the teacher's scores

    def with_(**inpars) -> InparsConfig:
        return PipelineConfig.from_dict(overlay_dict(dump_dict(demo), inpars)).inpars

    assert "hard labels" in with_(train={"loss": "contrastive", "contrastive_weight": 0.0}).teacher_unread()
    hard = {"loss": "contrastive", "contrastive_weight": 0.0}
    # the teacher's own cuts change the triples training reads; a sweep's dev set reads its scores
    assert with_(train=hard, teacher={"consistency_k": 1}).teacher_unread() is None
    assert with_(train=hard, teacher={"max_negatives": 2}).teacher_unread() is None
    assert with_(train=hard, tune={}).teacher_unread() is None
    assert with_(train=hard, teacher=None).teacher_unread() is None  # no teacher: nothing to skip


def dump_dict(config: PipelineConfig) -> dict:
    import yaml

    return yaml.safe_load(dump_yaml(config))


def overlay_dict(config: dict, inpars: dict) -> dict:
    out = {**config, "inpars": dict(config["inpars"])}
    for key, value in inpars.items():
        base = out["inpars"].get(key)
        out["inpars"][key] = {**base, **value} if isinstance(value, dict) and isinstance(base, dict) else value
    return out
