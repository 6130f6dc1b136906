"""Stage verbs build their options from the stage config classes: unset options keep the class defaults,
given ones reach the config (nested ones too), and each option's help shows the one default."""
from __future__ import annotations

import pytest

from inpars_ray.cli import build_parser
from inpars_ray.cli._common import config_from_args
from inpars_ray.errors import ConfigError
from inpars_ray.stages.filter import FilterConfig
from inpars_ray.stages.generate import GenerateConfig, GenerateResources
from inpars_ray.stages.mine import MineConfig
from inpars_ray.stages.retrieve import RetrieveConfig

COMMON = ["--dataset", "d", "--out", "o"]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_unset_options_keep_the_config_defaults():
    assert config_from_args(MineConfig, parse("mine", "--queries", "q", "--index-dir", "i", *COMMON)) == MineConfig()
    assert config_from_args(FilterConfig, parse("filter", "--queries", "q", *COMMON)) == FilterConfig()
    assert config_from_args(RetrieveConfig, parse("retrieve", "--index-dir", "i", *COMMON)) == RetrieveConfig()


def test_given_options_reach_nested_configs_over_the_parents_defaults():
    args = parse("mine", "--queries", "q", "--index-dir", "i", *COMMON, "--threads", "3", "--negatives", "2",
                 "--partitions", "4")
    config = config_from_args(MineConfig, args)
    assert (config.negatives, config.shuffle_partitions, config.bm25.threads) == (2, 4, 3)
    assert config.bm25.remove_query is False  # MineConfig's own default for its BM25, kept
    retrieve = config_from_args(RetrieveConfig, parse("retrieve", "--index-dir", "i", *COMMON, "--k1", "1.2",
                                                      "--actors", "2", "--no-remove-query"))
    assert (retrieve.bm25.k1, retrieve.bm25.num_actors, retrieve.bm25.remove_query) == (1.2, 2, False)
    heap = config_from_args(MineConfig, parse("mine", "--queries", "q", "--index-dir", "i", *COMMON,
                                              "--bm25-searcher-heap-mb", "768"))
    assert heap.bm25.searcher_heap_mb == 768
    filt = config_from_args(FilterConfig, parse("filter", "--queries", "q", *COMMON, "--strategy", "reranker",
                                                "--model", "m", "--device", "cuda", "--num-gpus-per-actor", "1"))
    assert filt.ranker is not None and (filt.ranker.model, filt.ranker.device) == ("m", "cuda")
    assert filt.num_gpus_per_actor == 1.0
    # without --model the filter has no ranker block; the reranker strategy then fails naming it
    assert config_from_args(FilterConfig, parse("filter", "--queries", "q", *COMMON)).ranker is None
    with pytest.raises(ConfigError, match="needs a ranker"):
        config_from_args(FilterConfig, parse("filter", "--queries", "q", *COMMON, "--strategy", "reranker"))


def test_generate_options_and_resources():
    args = parse("generate", *COMMON, "--model", "m", "--max-new-tokens", "8", "--gpus-per-actor", "1")
    config = config_from_args(GenerateConfig, args)
    assert (config.model, config.generation.max_new_tokens, config.num_docs) == ("m", 8, GenerateConfig(model="m").num_docs)
    assert config_from_args(GenerateResources, args).gpus_per_actor == 1.0
    with pytest.raises(SystemExit):  # the model has no default: argparse asks for it
        parse("generate", *COMMON)


def test_help_shows_the_config_default(capsys):
    with pytest.raises(SystemExit):
        parse("filter", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {FilterConfig().keep_top_k})" in out and "--num-gpus-per-actor" in out


def test_generate_sampling_options_and_local_model_names(tmp_path, capsys):
    """The later queries' sampling has its own prefixed options; a ``local:`` model name is resolved by the
    verb as by ``run`` (an unknown one fails with the known names, before Ray starts)."""
    from inpars_ray.cli import main

    args = parse("generate", *COMMON, "--model", "m", "--queries-per-doc", "3", "--sampling-top-k", "10",
                 "--top-k", "0")
    config = config_from_args(GenerateConfig, args)
    assert (config.queries_per_doc, config.sampling.top_k, config.generation.top_k) == (3, 10, 0)
    code = main(["generate", "--dataset", "bundled/tiny-science", "--out", str(tmp_path / "g"), "--model", "local:nope"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown local model 'local:nope'" in err and "local:smollm2" in err
    assert not (tmp_path / "g" / "manifest.json").exists()


def test_a_setting_with_fixed_choices_offers_them_and_refuses_another(capsys):
    from inpars_ray.stages.train_config import TrainConfig

    args = parse("train", "--triples", "t", "--out", "o", "--base-model", "m", "--accelerator", "gpu",
                 "--family", "cross-encoder", "--loss", "listwise", "--pooling", "cls")
    config = config_from_args(TrainConfig, args)
    assert (config.accelerator, config.family, config.loss, config.pooling) == ("gpu", "cross-encoder", "listwise",
                                                                                "cls")
    with pytest.raises(SystemExit):
        parse("train", "--triples", "t", "--out", "o", "--base-model", "m", "--accelerator", "npu")
    assert "invalid choice: 'npu' (choose from 'cpu', 'gpu', 'tpu')" in capsys.readouterr().err
