"""The ``openai`` backend: any OpenAI-compatible completions endpoint (OpenAI, a vLLM server, ...).

InPars-v1 generated its queries with OpenAI's GPT-3 Curie through this API (arXiv 2202.05144); the same
code drives a self-hosted vLLM server, which is how the tests run it (a tiny model on loopback).

What it does per prompt: one ``completions.create`` call with ``logprobs=1`` and ``stop=["\\n"]``
(temperature 0 unless asked otherwise), from a bounded pool of threads inside the actor; request- and
token-per-minute buckets keep the actor under the provider's limits (every attempt takes its tokens);
408 / 409 / 429 / 5xx answers, timeouts and dropped connections are retried by the openai client itself
(``max_retries``; its exponential back-off, or the server's ``Retry-After`` up to two minutes: a longer one
is not waited for); a prompt that still fails becomes ``Generation(error=...)``. Token and cost totals are exposed by :meth:`OpenAIBackend.usage` for the
stage's manifest.

Token counting (documents are truncated to a token budget before prompting) uses, by the ``tokenizer``
option:

* ``"server"`` (default) -- the endpoint's own tokenizer through vLLM's ``/tokenize`` and ``/detokenize``
  routes (next to ``/v1``), exact for a vLLM server; asked through the same openai client (its HTTP
  connections, credentials, timeout and retries);
* a local Hugging Face tokenizer (path or hub id, loaded offline) -- for endpoints that do not expose
  tokenization, e.g. OpenAI itself; give the tokenizer of the model the endpoint serves.

The API key is read from the environment variable named by ``api_key_env`` inside the actor; it is never
stored in the config, and it is scrubbed from error messages, so it reaches no log, repr, manifest or
output row.
"""
from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

from inpars_ray.errors import BackendError, ConfigError, redact
from inpars_ray.models.backends.base import Backend, Generation, GenerationParams
from inpars_ray.models.backends.ratelimit import TokenBucket
from inpars_ray.models.backends.vllm_backend import request_seed
from inpars_ray.runtime.deps import require
from inpars_ray.stageconfig import Field, stage_config

log = logging.getLogger(__name__)

SERVER_TOKENIZER = "server"


@stage_config
class OpenAIConfig:
    """Options of :class:`OpenAIBackend` (every field can be passed as a keyword option)."""

    base_url: str | None = Field(None, description="the endpoint, e.g. http://127.0.0.1:8000/v1 for a vLLM "
                                 "server; None: OpenAI's")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="name of the environment variable holding the "
                                    "key; None for endpoints without auth (a local vLLM server), which then get "
                                    "a placeholder key")
    tokenizer: str = Field(SERVER_TOKENIZER, description='"server" (vLLM /tokenize) or a local Hugging Face '
                           "tokenizer path or id")
    max_concurrency: int = Field(8, ge=1, description="requests in flight at once from one actor (threads)")
    requests_per_minute: float | None = Field(None, description="request budget of one actor; None: no "
                                              "client-side limit")
    tokens_per_minute: float | None = Field(None, description="token budget of one actor (prompt tokens + "
                                            "max_new_tokens per request, the way providers count it); None: no "
                                            "client-side limit")
    request_timeout_s: float = Field(60.0, gt=0, description="a request that has not answered after this long "
                                     "is abandoned and retried")
    max_retries: int = Field(6, ge=0, description="retries of a failed request (the openai client's, see the "
                             "module docstring) before the prompt is given up (its row gets `error`)")
    price_prompt_per_1k: float = Field(0.0, ge=0, description="currency units per 1,000 prompt tokens, for the "
                                       "cost estimate")
    price_completion_per_1k: float = Field(0.0, ge=0, description="currency units per 1,000 generated tokens, "
                                           "for the cost estimate")

    @classmethod
    def from_options(cls, **options: Any) -> OpenAIConfig:
        """Build from keyword options, naming any the backend does not take."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) for the openai backend: {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
        return cls(**options)


@dataclasses.dataclass
class Usage:
    """Running totals of one backend instance (one actor).

    Attributes:
        requests: completion requests sent (including retries).
        retries: requests that were repeats of an earlier failed attempt.
        failed_prompts: prompts given up after the last retry (their rows carry ``error``).
        prompt_tokens: prompt tokens billed (from the server's ``usage``).
        completion_tokens: generated tokens billed.
        rate_limit_wait_s: seconds spent waiting on the client-side rate limits.
        cost: estimated cost from the configured prices.
    """

    requests: int = 0
    retries: int = 0
    failed_prompts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rate_limit_wait_s: float = 0.0
    cost: float = 0.0


def first_line(text: str, tokens: list[str], logprobs: list[float | None]) -> tuple[str, list[float]]:
    """The first line of a completion and the log-probs of its tokens.

    The cut is made on the *decoded* text of each token (no newline token id is assumed): tokens are
    kept up to, not including, the first one whose text contains a newline -- whether the server
    reports that token or stopped before it. Raises :class:`BackendError` if a log-prob is missing.
    """
    kept: list[float] = []
    for tok, lp in zip(tokens, logprobs, strict=False):
        if "\n" in tok:
            break
        if lp is None:
            raise BackendError(f"the endpoint returned no log-prob for generated token {tok!r}")
        kept.append(float(lp))
    return text.split("\n", 1)[0].strip(), kept


class OpenAIBackend(Backend):
    """Generation through an OpenAI-compatible completions endpoint (see the module docstring)."""

    name = "openai"

    def __init__(self, model: str, config: OpenAIConfig | None = None, **options: Any) -> None:
        super().__init__(model)
        if config is not None and options:
            raise ConfigError("give either config=OpenAIConfig(...) or keyword options, not both")
        self.config = config if config is not None else OpenAIConfig.from_options(**options)
        cfg = self.config
        if cfg.api_key_env is None:
            key = "none"  # the client insists on a key; an endpoint without auth ignores it
        else:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise ConfigError(
                    f"the openai backend reads its API key from ${cfg.api_key_env}, which is not set "
                    "(set api_key_env=None for an endpoint without authentication)"
                )
        self.__key = key
        # credentials in the URL (http://user:password@proxy/v1): the HTTP client sends them as Basic auth;
        # they are secrets as much as the key, in every form a server might quote back
        parts = urllib.parse.urlsplit(cfg.base_url or "")
        basic = base64.b64encode(f"{parts.username or ''}:{parts.password}".encode()).decode() \
            if parts.password is not None else None
        self.__secrets = [s for s in (key, parts.password, basic) if s and len(s) >= 4]
        openai = require("openai", "the openai generation backend")
        self._openai = openai
        # every attempt the client makes (its retries included) passes the hook: rate limits and accounting
        self._client = openai.OpenAI(
            api_key=key, base_url=cfg.base_url, max_retries=cfg.max_retries, timeout=cfg.request_timeout_s,
            http_client=openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]}),
        )
        self._rpm = TokenBucket(cfg.requests_per_minute) if cfg.requests_per_minute else None
        self._tpm = TokenBucket(cfg.tokens_per_minute) if cfg.tokens_per_minute else None
        self._attempts = threading.local()  # the completion a pool thread is sending: its token cost, tries
        self._lock = threading.Lock()
        self._usage = Usage()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=cfg.max_concurrency, thread_name_prefix="inpars-openai"
        )
        self._hf_tokenizer = None
        if cfg.tokenizer != SERVER_TOKENIZER:
            transformers = require("transformers", "local token counting for the openai backend")
            self._hf_tokenizer = transformers.AutoTokenizer.from_pretrained(cfg.tokenizer)
        self._server_root = _server_root(cfg.base_url) if cfg.tokenizer == SERVER_TOKENIZER else None

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model!r}, base_url={redact(self.config.base_url or '')!r}, "
            f"tokenizer={self.config.tokenizer!r}, api_key_env={self.config.api_key_env!r})"
        )

    __str__ = __repr__

    # --- accounting ------------------------------------------------------------------------------------
    def usage(self) -> dict[str, float | int]:
        """Token, request and cost totals so far (plain numbers, safe to write into a manifest)."""
        with self._lock:
            out = dataclasses.asdict(self._usage)
        waits = [b.waited_s for b in (self._rpm, self._tpm) if b is not None]
        out["rate_limit_wait_s"] = round(sum(waits), 3)
        return out

    def _add_usage(self, **delta: float) -> None:
        cfg = self.config
        with self._lock:
            for k, v in delta.items():
                setattr(self._usage, k, getattr(self._usage, k) + v)
            u = self._usage
            u.cost = (
                u.prompt_tokens / 1000.0 * cfg.price_prompt_per_1k
                + u.completion_tokens / 1000.0 * cfg.price_completion_per_1k
            )

    # --- errors, attempts, the tokenizer routes ----------------------------------------------------------
    def _redact(self, message: str) -> str:
        for secret in self.__secrets:
            message = message.replace(secret, "***")
        return redact(message)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, self._openai.APIStatusError):
            return f"HTTP {exc.status_code}: {exc.message}"
        return f"{type(exc).__name__}: {exc}"

    def _on_request(self, request: Any) -> None:
        """The HTTP client's hook, in the sending thread, before every attempt: a completion's attempt waits
        for the rate limits and is counted (the tokenizer routes are neither)."""
        cost = getattr(self._attempts, "cost", None)
        if cost is None:
            return
        if self._rpm is not None:
            self._rpm.acquire(1)
        if self._tpm is not None:
            self._tpm.acquire(cost)
        self._add_usage(requests=1, retries=1 if self._attempts.sent else 0)
        self._attempts.sent += 1

    def _server_post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        oa = self._openai
        if self._server_root is None:  # set exactly when the server's own tokenizer is configured
            raise RuntimeError(f"{route} is a tokenizer route, but this backend does not use the server's tokenizer")
        try:
            return self._client.post(self._server_root + route, cast_to=dict, body=body)
        except oa.NotFoundError:
            raise ConfigError(
                f"{redact(_server_root(self.config.base_url))}{route} does not exist: the endpoint does not "
                "expose its tokenizer; pass tokenizer=<local Hugging Face tokenizer of the served model>"
            ) from None
        except oa.OpenAIError as exc:
            raise BackendError(self._redact(f"POST {route}: {self._describe(exc)}")) from None

    def _token_ids(self, text: str) -> list[int]:
        if self._hf_tokenizer is not None:
            return list(self._hf_tokenizer(text, add_special_tokens=False)["input_ids"])
        out = self._server_post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return list(out["tokens"])

    def count_tokens(self, text: str) -> int:
        return len(self._token_ids(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens < 0:
            raise ConfigError(f"max_tokens must be >= 0, got {max_tokens}")
        if self._hf_tokenizer is not None and getattr(self._hf_tokenizer, "is_fast", False):
            enc = self._hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            if len(offsets) <= max_tokens:
                return text
            return text[: offsets[max_tokens - 1][1]] if max_tokens else ""
        ids = self._token_ids(text)
        if len(ids) <= max_tokens:
            return text
        if self._hf_tokenizer is not None:
            return self._hf_tokenizer.decode(ids[:max_tokens])
        return self._server_post("/detokenize", {"model": self.model, "tokens": ids[:max_tokens]})["prompt"]

    # --- generation ------------------------------------------------------------------------------------
    def _complete(self, prompt: str, params: GenerationParams) -> Generation:
        try:
            n_prompt = self.count_tokens(prompt)
        except BackendError as exc:
            return Generation(text="", token_logprobs=[], error=self._redact(str(exc)))
        if n_prompt > params.max_prompt_tokens:
            return Generation(
                text="",
                token_logprobs=[],
                prompt_tokens=n_prompt,
                error=f"prompt has {n_prompt} tokens, more than max_prompt_tokens={params.max_prompt_tokens}",
            )

        request: dict[str, Any] = dict(
            model=self.model,
            prompt=prompt,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            logprobs=1,
            stop=["\n"],
        )
        if params.temperature > 0:
            request.update(top_p=params.top_p, seed=request_seed(params.seed, prompt))
            if params.top_k > 0:  # not in OpenAI's API; vLLM's and llama.cpp's servers read it from the body
                request["extra_body"] = {"top_k": params.top_k}
        self._attempts.cost, self._attempts.sent = n_prompt + params.max_new_tokens, 0
        try:
            try:
                resp = self._client.completions.create(**request)
            except self._openai.OpenAIError as exc:  # what the client's retries could not mend
                raise BackendError(self._redact(f"completion: {self._describe(exc)}")) from None
            finally:
                self._attempts.cost = None
            choice = resp.choices[0]
            lp = choice.logprobs
            if lp is None or lp.tokens is None or lp.token_logprobs is None:
                raise BackendError("the endpoint returned no logprobs (does it support logprobs=1?)")
            text, logprobs = first_line(choice.text or "", list(lp.tokens), list(lp.token_logprobs))
        except BackendError as exc:
            self._add_usage(failed_prompts=1)
            return Generation(text="", token_logprobs=[], prompt_tokens=n_prompt, error=self._redact(str(exc)))
        if resp.usage is not None:
            self._add_usage(prompt_tokens=resp.usage.prompt_tokens, completion_tokens=resp.usage.completion_tokens)
        return Generation(text=text, token_logprobs=logprobs, prompt_tokens=n_prompt)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        return self.generate_each(prompts, params, lambda i, g: None)

    def generate_each(self, prompts: list[str], params: GenerationParams,
                      on_result: Callable[[int, Generation], None]) -> list[Generation]:
        futures = {self._pool.submit(self._complete, p, params): i for i, p in enumerate(prompts)}
        out: list[Generation | None] = [None] * len(prompts)
        for fut in concurrent.futures.as_completed(futures):  # each answer reported as it arrives
            try:
                generation = fut.result()
            except Exception as exc:  # a bug, not an API failure; still one row per prompt, never a raise
                log.exception("openai backend: unexpected failure")
                generation = Generation(text="", token_logprobs=[], error=self._redact(f"{type(exc).__name__}: {exc}"))
            out[futures[fut]] = generation
            on_result(futures[fut], generation)
        return [g for g in out if g is not None]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


def _server_root(base_url: str | None) -> str:
    """``http://host:port`` of a vLLM server whose OpenAI routes live under ``<root>/v1``."""
    if not base_url:
        raise ConfigError("tokenizer='server' needs base_url (a vLLM server); else pass a local tokenizer")
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root
