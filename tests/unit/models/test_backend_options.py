"""A backend's name and options are checked where the config is made, on the driver: a typo fails before Ray
starts, naming what is wrong (no model loads, no secret is read)."""
from __future__ import annotations

import pytest

from inpars_ray.errors import ConfigError
from inpars_ray.models.backends import check_options


def test_known_backends_and_options_pass():
    check_options("hf", {"device": "cpu", "torch_threads": 2})
    check_options("vllm", {"dtype": "float32", "max_model_len": 512})
    check_options("openai", {"base_url": "http://127.0.0.1:8000/v1", "api_key_env": "NOT_SET_ANYWHERE",
                             "max_retries": 3})


@pytest.mark.parametrize(("name", "options", "named"), [
    ("opneai", {}, "opneai"),
    ("hf", {"devcie": "cpu"}, "devcie"),
    ("vllm", {"tensor_paralel_size": 2}, "tensor_paralel_size"),
    ("openai", {"max_retires": 3}, "max_retires"),
])
def test_a_typo_is_named(name, options, named):
    with pytest.raises(ConfigError, match=named):
        check_options(name, options)


def test_a_value_the_typed_config_refuses_fails_too():
    with pytest.raises(ConfigError, match="max_concurrency"):
        check_options("openai", {"max_concurrency": 0})
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        check_options("vllm", {"gpu_memory_utilization": 1.5})


@pytest.mark.parametrize(("name", "option", "bad"), [
    ("vllm", "tensor_parallel_size", 0), ("vllm", "gpu_memory_utilization", 0.0), ("vllm", "max_model_len", 1),
    ("openai", "max_concurrency", 0), ("openai", "request_timeout_s", 0.0), ("openai", "max_retries", -1),
    ("openai", "price_prompt_per_1k", -0.5), ("openai", "price_completion_per_1k", -0.5),
])
def test_an_option_out_of_its_range_is_refused_naming_it_and_the_value(name, option, bad):
    with pytest.raises(ConfigError, match=rf"Config: {option}: .*\(got {bad!r}\)"):
        check_options(name, {option: bad})


def test_the_generate_config_refuses_a_backend_typo():
    from inpars_ray.stages.generate import GenerateConfig

    GenerateConfig(backend="openai", model="m", backend_options={"base_url": "http://h/v1"})
    with pytest.raises(ConfigError, match="opneai"):
        GenerateConfig(backend="opneai", model="m")
    with pytest.raises(ConfigError, match="devcie"):
        GenerateConfig(backend="hf", model="m", backend_options={"devcie": "cpu"})
    for name in ("num_docs", "doc_max_tokens"):
        with pytest.raises(ConfigError, match=rf"GenerateConfig: {name}: .*\(got 0\)"):
            GenerateConfig(model="m", **{name: 0})
