"""The openai backend against small loopback HTTP servers (no vLLM needed; the real-server tests are in
tests/integration/models/test_openai_backend.py): first-line cutting, retries through injected faults, key
handling, accounting."""
from __future__ import annotations

import logging
import time

import pytest

from inpars_ray.errors import BackendError, ConfigError
from inpars_ray.models.backends.base import GenerationParams
from inpars_ray.models.backends.openai_backend import OpenAIBackend, OpenAIConfig, first_line
from inpars_ray.models.backends.ratelimit import TokenBucket
from tests.fakes.fault_proxy import EchoCompletionsServer, FaultProxy

SECRET = "sk-test-DO-NOT-LEAK-0123456789"


@pytest.fixture()
def echo():
    with EchoCompletionsServer() as server:
        yield server


def _backend(url: str, **options) -> OpenAIBackend:
    options.setdefault("api_key_env", None)
    return OpenAIBackend("echo-model", base_url=f"{url}/v1", **options)


def _expected(prompt: str) -> tuple[str, list[float]]:
    tokens, lps = EchoCompletionsServer.completion_for(prompt)
    cut = tokens.index("\n")
    return "".join(tokens[:cut]).strip(), lps[:cut]


def test_first_line_cuts_on_decoded_text_not_token_ids():
    assert first_line("a b", ["a", " b", "\n", "c"], [-1.0, -2.0, -3.0, -4.0]) == ("a b", [-1.0, -2.0])
    # a token that carries text *and* the newline: text keeps "x", its log-prob is not counted
    assert first_line(" q x", [" q", " x\n"], [-1.0, -2.0]) == ("q x", [-1.0])
    # the server already stopped before the newline token
    assert first_line("q r", ["q", " r"], [-0.5, -0.25]) == ("q r", [-0.5, -0.25])
    assert first_line("", ["\n"], [-0.1]) == ("", [])
    with pytest.raises(BackendError):
        first_line("q", ["q"], [None])


def test_options_build_a_config_and_unknown_options_are_rejected():
    cfg = OpenAIConfig.from_options(base_url="http://h/v1", max_retries=2, max_concurrency=3)
    assert cfg.max_retries == 2 and cfg.max_concurrency == 3
    with pytest.raises(ConfigError, match="temprature"):
        OpenAIConfig.from_options(temprature=0.5)
    # back-off is the openai client's: the knobs of the hand-made loop are refused, not silently ignored
    with pytest.raises(ConfigError, match="base_delay_s"):
        OpenAIConfig.from_options(base_delay_s=0.1)
    with pytest.raises(ConfigError):
        OpenAIConfig(max_concurrency=0)
    with pytest.raises(ConfigError):
        OpenAIConfig(max_retries=-1)


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("INPARS_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$INPARS_TEST_KEY"):
        OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="INPARS_TEST_KEY")


def test_generates_first_lines_with_logprobs_and_accounts_cost(echo):
    prompts = [f"Document: text number {i}\nRelevant Query:" for i in range(12)]
    backend = _backend(echo.url, max_concurrency=4, price_prompt_per_1k=2.0, price_completion_per_1k=10.0)
    try:
        out = backend.generate(prompts, GenerationParams(max_new_tokens=16))
    finally:
        backend.close()
    assert len(out) == len(prompts)
    for prompt, gen in zip(prompts, out, strict=True):
        text, lps = _expected(prompt)
        assert gen.error is None
        assert gen.text == text
        assert gen.token_logprobs == pytest.approx(lps)
        assert gen.prompt_tokens == len(prompt.encode())  # the server's (byte) tokenizer
    usage = backend.usage()
    prompt_tokens = sum(len(p.encode()) for p in prompts)
    assert usage["requests"] == len(prompts) and usage["retries"] == 0 and usage["failed_prompts"] == 0
    assert usage["prompt_tokens"] == prompt_tokens
    assert usage["completion_tokens"] == 5 * len(prompts)  # 4 tokens + the newline token, as billed
    assert usage["cost"] == pytest.approx(prompt_tokens / 1000 * 2.0 + 5 * len(prompts) / 1000 * 10.0)


def test_max_new_tokens_limits_the_completion(echo):
    backend = _backend(echo.url)
    try:
        (gen,) = backend.generate(["Document: abc\nRelevant Query:"], GenerationParams(max_new_tokens=2))
    finally:
        backend.close()
    assert len(gen.token_logprobs) == 2
    assert gen.text.startswith("Q")


def test_survives_injected_faults_and_generates_each_prompt_exactly_once(echo):
    prompts = [f"Document: fault test {i}\nRelevant Query:" for i in range(30)]
    with FaultProxy(echo.url, fail_rate=0.3, seed=7, hang_s=2.0) as proxy:
        backend = _backend(proxy.url, max_concurrency=6, request_timeout_s=0.5, max_retries=10)
        try:
            out = backend.generate(prompts, GenerationParams())
        finally:
            backend.close()
        assert sum(proxy.faults.values()) > 0 and set(proxy.faults) == {"429", "500", "hang"}
        assert [g.error for g in out] == [None] * len(prompts)
        assert [g.text for g in out] == [_expected(p)[0] for p in prompts]
        # every prompt reached the real server successfully exactly once
        assert dict(proxy.upstream_ok) == {p: 1 for p in prompts}
        usage = backend.usage()
        assert usage["retries"] == sum(proxy.faults.values())
        assert usage["requests"] == sum(proxy.attempts.values())


def test_a_prompt_that_keeps_failing_gets_an_error_row_not_an_exception(echo):
    prompts = ["Document: doomed\nRelevant Query:", "Document: also doomed\nRelevant Query:"]
    with FaultProxy(echo.url, fail_rate=1.0, kinds=("500",)) as proxy:
        backend = _backend(proxy.url, max_retries=2)
        try:
            out = backend.generate(prompts, GenerationParams())
        finally:
            backend.close()
        assert all(g.text == "" and g.token_logprobs == [] and "HTTP 500" in g.error for g in out)
        assert dict(proxy.attempts) == {p: 3 for p in prompts}  # first try + 2 retries
        assert backend.usage()["failed_prompts"] == 2


def _generate_timed(backend, prompt: str):
    """(the generation of ``prompt``, seconds it took); the backend is closed after."""
    try:
        started = time.monotonic()
        (gen,) = backend.generate([prompt], GenerationParams())
        return gen, time.monotonic() - started
    finally:
        backend.close()


def test_retry_after_is_honoured_and_an_overlong_one_is_not_waited_for(echo):
    """A 429's ``Retry-After`` sets the wait before the retry (the openai client's own back-off would be
    0.5 s at most); one beyond two minutes ends the prompt at once, as an error row, instead of waiting."""
    prompt = "Document: throttled\nRelevant Query:"
    with FaultProxy(echo.url, fail_rate=1.0, kinds=("429",), retry_after_ms=1500) as proxy:
        backend = _backend(proxy.url, max_retries=1)
        gen, waited = _generate_timed(backend, prompt)
        assert "HTTP 429" in gen.error and proxy.attempts[prompt] == 2
        assert 1.5 <= waited < 10, waited
        assert backend.usage()["requests"] == 2 and backend.usage()["retries"] == 1
    with FaultProxy(echo.url, fail_rate=1.0, kinds=("429",), retry_after_ms=600_000) as proxy:
        gen, waited = _generate_timed(_backend(proxy.url, max_retries=3), prompt)
        assert "HTTP 429" in gen.error and proxy.attempts[prompt] == 1 and waited < 10, waited


def test_rate_limits_hold_every_attempt_retries_included(echo, monkeypatch):
    """Every attempt, a retry too, takes a request token: 6 prompts x 2 attempts at 6 per minute (a bucket of
    6) make the last 6 attempts wait 10 s each, on a simulated clock (the sleeps advance it at once)."""
    from inpars_ray.models.backends import openai_backend

    now = [0.0]

    def bucket(per_minute):
        return TokenBucket(per_minute, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))

    monkeypatch.setattr(openai_backend, "TokenBucket", bucket)
    prompts = [f"Document: limited {i}\nRelevant Query:" for i in range(6)]
    with FaultProxy(echo.url, fail_rate=1.0, kinds=("500",)) as proxy:
        backend = _backend(proxy.url, max_retries=1, requests_per_minute=6.0, max_concurrency=1)
        try:
            out = backend.generate(prompts, GenerationParams())
        finally:
            backend.close()
        assert all("HTTP 500" in g.error for g in out) and dict(proxy.attempts) == {p: 2 for p in prompts}
    usage = backend.usage()
    assert usage["requests"] == 12 and usage["retries"] == 6
    assert usage["rate_limit_wait_s"] == pytest.approx(60.0)


def test_client_errors_are_not_retried_and_the_key_never_leaks(monkeypatch, caplog):
    monkeypatch.setenv("INPARS_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with EchoCompletionsServer(api_key="the-right-key") as server:
        backend = OpenAIBackend("m", base_url=f"{server.url}/v1", api_key_env="INPARS_TEST_KEY",
                                tokenizer="server", max_retries=3)
        try:
            (gen,) = backend.generate(["Document: x\nRelevant Query:"], GenerationParams())
        finally:
            backend.close()
        # the endpoint echoed the wrong key in its 401 message; it must come back scrubbed
        assert gen.error is not None and "401" in gen.error
        assert server.requests["/v1/completions"] == 1  # a 401 is final: no retries
        everything = " ".join([gen.error, repr(backend), str(backend), str(backend.usage()),
                               repr(backend.config), caplog.text])
        assert SECRET not in everything
        assert "***" in gen.error


def test_over_long_prompt_is_an_error_row_without_a_completion_request(echo):
    backend = _backend(echo.url)
    try:
        short, long = backend.generate(["ok", "x" * 50], GenerationParams(max_prompt_tokens=10))
    finally:
        backend.close()
    assert short.error is None
    assert long.error is not None and "max_prompt_tokens=10" in long.error
    assert echo.requests["/v1/completions"] == 1


def test_server_tokenizer_counts_and_truncates(echo):
    backend = _backend(echo.url)
    try:
        assert backend.count_tokens("héllo") == 6  # one token per UTF-8 byte on this server
        assert backend.truncate("héllo world", 3) == "hé"
        assert backend.truncate("short", 10) == "short"
    finally:
        backend.close()


def test_server_tokenizer_on_an_endpoint_without_it_is_a_config_error():
    with EchoCompletionsServer() as server:
        backend = OpenAIBackend("m", base_url=f"{server.url}/other/v1", api_key_env=None)
        try:
            with pytest.raises(ConfigError, match="does not expose its tokenizer"):
                backend.count_tokens("x")
        finally:
            backend.close()
