"""Pure parts of the tune sweep (issue 20): the dev split, the search space, the step plan, the table."""
from __future__ import annotations

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import CollectionError, ConfigError
from inpars_ray.stages.devset import CorpusOnly, dev_documents, split_triples
from inpars_ray.stages.train_config import TrainConfig
from inpars_ray.stages.tune import SweepConfig, apply, best_settings, check_space, parse_space, planned_steps
from inpars_ray.stages.tune_report import markdown_table


def test_dev_documents_are_a_seeded_share_independent_of_order():
    docs = [f"d{i}" for i in range(50)] * 3
    held = dev_documents(docs, 0.1, seed=3)
    assert len(held) == 5 and held == dev_documents(list(reversed(docs)), 0.1, seed=3)
    assert held != dev_documents(docs, 0.1, seed=4)
    assert len(dev_documents(["a", "b"], 0.01, 0)) == 1  # at least one, never all
    with pytest.raises(ConfigError):
        dev_documents(["a", "a"], 0.5, 0)


def test_split_triples_drops_every_triple_of_a_held_out_document():
    t = pa.table({S.QUERY_ID: ["q1", "q2", "q3"], S.POS_DOC_ID: ["a", "b", "a"]})
    assert split_triples(t, {"a"}).column(S.QUERY_ID).to_pylist() == ["q2"]


def test_corpus_only_view_refuses_queries_and_qrels():
    import pyarrow.fs as pafs

    view = CorpusOnly("x", "/tmp/x", pafs.LocalFileSystem())
    assert view.corpus_path() == "/tmp/x/corpus.jsonl"
    with pytest.raises(CollectionError):
        view.queries_path()
    with pytest.raises(CollectionError):
        view.qrels_path("test")


def test_space_is_checked_before_any_trial():
    flat = parse_space({"train": {"lr": {"loguniform": [1e-5, 1e-3]}, "max_steps": 8},
                        "rerank": {"first_stage_weight": {"choice": [0.0, 0.5]}}})
    assert flat == {"train.lr": {"loguniform": [1e-5, 1e-3]}, "train.max_steps": 8,
                    "rerank.first_stage_weight": {"choice": [0.0, 0.5]}}
    for bad in ({"train": {"seed": 1}}, {"mine": {"depth": 3}}, {"train": {"lr": {"normal": [0, 1]}}},
                {"train": {"lr": {"uniform": [1]}}}, {"train": {"epochs": 1, "max_steps": 2}}):
        with pytest.raises(ConfigError):
            parse_space(bad)
    base = TrainConfig(base_model="m", batch_size=16, micro_batch_size=8)
    with pytest.raises(ConfigError, match="batch_size"):
        check_space(parse_space({"train": {"batch_size": {"choice": [16, 12]}}}), base, 0.0)
    with pytest.raises(ConfigError, match="first_stage_weight"):
        check_space(parse_space({"rerank": {"first_stage_weight": {"uniform": [0.0, 2.0]}}}), base, 0.0)
    with pytest.raises(ConfigError, match=r"SweepConfig: search: .*\(got 'bayes'\)"):
        SweepConfig(search="bayes")


def test_trial_settings_and_planned_steps():
    base = TrainConfig(base_model="m", family="monot5", batch_size=8, micro_batch_size=8, max_steps=5)
    cfg, weight = apply(base, 0.1, {"train.lr": 1e-4, "train.epochs": 2, "train.base_model": "local:x"},
                        {"local:x": "/models/x"})
    assert (cfg.lr, cfg.epochs, cfg.max_steps, cfg.base_model, weight) == (1e-4, 2, None, "/models/x", 0.1)
    assert planned_steps(cfg.resolved(), {"triples": 10, "lists": 7}) == 2 * 3  # ceil(2 * 10 / 8) per epoch
    assert planned_steps(base.resolved(), {"triples": 10, "lists": 7}) == 5
    best = {"settings": {"train.lr": 1e-4, "train.epochs": 2, "rerank.first_stage_weight": 0.3}}
    flat = {"train.lr": {}, "train.epochs": {}, "rerank.first_stage_weight": {}}
    assert best_settings(best, flat) == {"train": {"lr": 1e-4, "epochs": 2, "max_steps": None},
                                         "rerank": {"first_stage_weight": 0.3}}


def test_markdown_table_marks_the_best_trial_and_counts_saved_steps():
    flat = {"train.lr": {}}
    trials = [{"trial_id": "a", "settings": {"train.lr": 1e-3}, "dev_ndcg@10": 0.5, "steps": 4, "planned_steps": 8,
               "stopped_early": True, "error": None},
              {"trial_id": "b", "settings": {"train.lr": 1e-4}, "dev_ndcg@10": 0.7, "steps": 8, "planned_steps": 8,
               "stopped_early": False, "error": None}]
    text = markdown_table(trials, flat)
    assert "| **b** |" in text and "| a |" in text and "12 trial-steps run of 16 planned (4 saved)" in text
