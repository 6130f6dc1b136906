"""The openai backend against a real vLLM OpenAI-compatible server on loopback (tiny local Llama).

One server for the module (engine start costs ~40 s). Checks: greedy output and per-token log-probs
equal a teacher-forced transformers forward pass; the server tokenizer counts and truncates like the
model's own tokenizer; behind a fault-injecting proxy (429 / 500 / hangs on ~30% of requests) every
prompt still gets its generation, from exactly one successful upstream request.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from inpars_ray.models.backends.base import GenerationParams
from inpars_ray.models.backends.openai_backend import OpenAIBackend
from tests.fakes.fault_proxy import FAULT_KINDS, FaultProxy, fault_for
from tests.vllm_cpu.hf_reference import greedy, prompts_from_bundled
from tests.vllm_cpu.vllm_env import VLLMServer, requires_vllm_venv

pytestmark = [pytest.mark.vllm, requires_vllm_venv]

MAX_NEW = 24
#: vLLM's CPU kernels and transformers' eager attention differ only by float32 rounding
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from inpars_ray.testing.tiny_lm import tiny_lm_path

    return tiny_lm_path()


@pytest.fixture(scope="module")
def server(tiny_lm, tmp_path_factory):
    reuse = os.environ.get("INPARS_RAY_TEST_VLLM_URL")
    if reuse:  # a server already serving the tiny LM (saves the engine start when iterating locally)
        yield SimpleNamespace(url=reuse.rstrip("/"))
        return
    srv = VLLMServer(tiny_lm, tmp_path_factory.mktemp("vllm") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def prompts():
    return prompts_from_bundled(8)


@pytest.fixture(scope="module")
def direct(server, tiny_lm, prompts):
    """Greedy generations straight from the server (no faults), reused as the expected output."""
    backend = OpenAIBackend(str(tiny_lm), base_url=f"{server.url}/v1", api_key_env=None, max_concurrency=4)
    try:
        return backend.generate(prompts, GenerationParams(max_new_tokens=MAX_NEW)), backend.usage()
    finally:
        backend.close()


def server_text(text: str) -> str:
    """A completion's text as vLLM's server reports it: its incremental detokenizer holds back an unfinished
    UTF-8 sequence at the end (a completion cut by max_tokens mid-character), which transformers' one-shot
    decode shows as U+FFFD."""
    return text.rstrip("\ufffd").strip()


def test_greedy_text_and_logprobs_match_teacher_forced_transformers(direct, tiny_lm, prompts):
    gens, usage = direct
    assert [g.error for g in gens] == [None] * len(prompts)
    assert any(g.text for g in gens)
    for prompt, gen in zip(prompts, gens, strict=True):
        ref = greedy(str(tiny_lm), prompt, MAX_NEW)
        assert gen.text == server_text(ref.text)
        assert len(gen.token_logprobs) == len(ref.ids)
        assert gen.token_logprobs == pytest.approx(ref.logprobs, abs=ATOL)
    assert usage["requests"] == len(prompts) and usage["failed_prompts"] == 0
    assert usage["prompt_tokens"] == sum(g.prompt_tokens for g in gens)
    assert usage["completion_tokens"] >= sum(len(g.token_logprobs) for g in gens)


def test_server_tokenizer_agrees_with_the_local_tokenizer(server, tiny_lm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_lm))
    text = "Coral reef bleaching under thermal stress: larval settlement and algal symbionts in 2019."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    remote = OpenAIBackend(str(tiny_lm), base_url=f"{server.url}/v1", api_key_env=None)
    local = OpenAIBackend(str(tiny_lm), base_url=f"{server.url}/v1", api_key_env=None, tokenizer=str(tiny_lm))
    try:
        assert remote.count_tokens(text) == local.count_tokens(text) == len(ids)
        assert remote.truncate(text, 7) == tok.decode(ids[:7])
        cut = local.truncate(text, 7)
        assert text.startswith(cut) and local.count_tokens(cut) <= 7 < local.count_tokens(text)
        assert remote.truncate(text, len(ids)) == text
    finally:
        remote.close()
        local.close()


def test_over_long_prompt_is_reported_per_row(server, tiny_lm, prompts):
    backend = OpenAIBackend(str(tiny_lm), base_url=f"{server.url}/v1", api_key_env=None)
    try:
        gens = backend.generate([prompts[0], prompts[1] * 20], GenerationParams(max_new_tokens=4,
                                                                                  max_prompt_tokens=200))
    finally:
        backend.close()
    assert gens[0].error is None
    assert gens[1].error is not None and "max_prompt_tokens=200" in gens[1].error


def test_faults_are_survived_and_each_prompt_is_generated_once(server, tiny_lm, prompts, direct):
    expected, _ = direct
    # the client timeout must exceed a real request's latency on a busy 2-core machine; a hang outlasts it
    # the fault plan is a pure function of (seed, prompt, attempt): pick the first seed whose first attempts
    # already show every kind of fault, so the test exercises all three whatever the prompts are
    seed = next(s for s in range(1000) if {fault_for(s, 0.3, FAULT_KINDS, p, 0) for p in prompts} >= set(FAULT_KINDS))
    with FaultProxy(server.url, fail_rate=0.3, seed=seed, hang_s=7.0) as proxy:
        backend = OpenAIBackend(str(tiny_lm), base_url=f"{proxy.url}/v1", api_key_env=None, max_concurrency=4,
                                request_timeout_s=6.0, max_retries=8)
        try:
            gens = backend.generate(prompts, GenerationParams(max_new_tokens=MAX_NEW))
        finally:
            backend.close()
        assert set(proxy.faults) == set(FAULT_KINDS)
        assert [g.error for g in gens] == [None] * len(prompts)
        assert [g.text for g in gens] == [g.text for g in expected]
        for got, want in zip(gens, expected, strict=True):
            assert got.token_logprobs == pytest.approx(want.token_logprobs, abs=ATOL)
        assert dict(proxy.upstream_ok) == {p: 1 for p in prompts}
        assert backend.usage()["retries"] == sum(proxy.faults.values())


def test_generate_stage_on_ray_through_faults_generates_each_document_once(ray_session, server, tiny_lm, tmp_path):
    """The Ray Data generate stage with the openai backend in its actors, behind the fault proxy; a rerun
    of the finished run sends no request at all."""
    from inpars_ray.io.catalog import resolve
    from inpars_ray.stages.generate import GenerateConfig, GenerateResources, read_generated, run_generate

    template = tmp_path / "short.txt"
    template.write_text("Passage: {document}\nQuestion:")
    num_docs = 12
    with FaultProxy(server.url, fail_rate=0.3, seed=5, hang_s=7.0) as proxy:
        options = dict(api_key_env=None, base_url=f"{proxy.url}/v1", max_concurrency=4, request_timeout_s=6.0,
                       max_retries=8)
        config = GenerateConfig(backend="openai", model=str(tiny_lm), prompt=str(template), num_docs=num_docs,
                                seed=3, doc_max_tokens=48, generation=GenerationParams(max_new_tokens=16, seed=3),
                                backend_options=tuple(sorted(options.items())))
        out = tmp_path / "generated"
        manifest = run_generate(resolve("bundled/tiny-science"), out, config, GenerateResources(batch_size=4))
        first_run = sum(proxy.attempts.values())
        assert manifest["counts"]["rows"] == num_docs and manifest["counts"]["errors"] == 0
        table = read_generated(out)
        assert table.num_rows == num_docs
        assert sum(proxy.faults.values()) > 0
        # one successful upstream completion per document, none lost, none repeated
        assert len(proxy.upstream_ok) == num_docs and set(proxy.upstream_ok.values()) == {1}
        usage = manifest["extra"]["usage_this_run"]  # the run's API accounting lands in the manifest
        assert usage["retries"] == sum(proxy.faults.values()) and usage["requests"] == num_docs + usage["retries"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        run_generate(resolve("bundled/tiny-science"), out, config, GenerateResources(batch_size=4))
        assert sum(proxy.attempts.values()) == first_run
