"""Shipped pipeline configs parse into typed configs with the papers' values."""
from __future__ import annotations

from pathlib import Path

import yaml

from inpars_ray.pipeline import InparsConfig, PipelineConfig

ROOT = Path(__file__).resolve().parents[2]


def test_inpars_v2_config_parses_with_the_papers_settings():
    config = PipelineConfig.from_dict(yaml.safe_load((ROOT / "configs" / "inpars-v2.yaml").read_text()))
    assert isinstance(config.inpars, InparsConfig)
    assert (config.inpars.num_docs, config.inpars.keep_top_k, config.inpars.train_batch_size) == (100_000, 10_000, 128)
    assert config.inpars.filter_strategy == "reranker" and config.k == 1000


def test_bm25_only_config():
    assert PipelineConfig.from_dict({"inpars": None}).inpars is None
