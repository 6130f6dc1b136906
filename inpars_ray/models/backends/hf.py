"""The ``hf`` backend: a transformers causal LM, batched with left padding, on CPU or GPU.

Decoding is greedy by default; with ``temperature > 0`` it samples. In both cases the log-probability
recorded for a token is that of the token actually chosen under the model's own distribution
(``log_softmax`` of the raw logits), so it equals a teacher-forced forward pass over prompt + answer.
The reference toolkit (github.com/zetaalphavector/InPars) took the scores *after* its logits processors,
which is right only for greedy decoding.

Generation stops at the end of the first line. The test decodes the generated tokens and looks for a
newline in the text, so it works for any tokenizer (byte-level BPE, SentencePiece byte fallback, ...):
no newline token id is hard-coded.

Prompts share a long prefix (the few-shot examples: InPars' prompt is ~275 SmolLM2 tokens before the
document), and on a CPU the prompt's forward pass, not the decoding, is most of the time. The backend
computes the keys and values of a batch's common prefix once (kept for the next batches, as vLLM's prefix
caching does) and runs the model over each prompt's own rest only: the rows are laid out as
``prefix | padding | rest`` with the padding masked, so every token keeps the position it has in its
unpadded prompt. ``prefix_cache=False`` turns this off.

A model given as a ``.gguf`` file (or a folder plus ``gguf_file=``) loads through transformers' GGUF
support (packages ``gguf`` and ``accelerate``): its quantised weights are dequantised to ``dtype``
(float32 by default), so the recorded log-probs are exact for the dequantised model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from inpars_ray.errors import BackendError
from inpars_ray.models.backends.base import Backend, Generation, GenerationParams
from inpars_ray.runtime.deps import require

logger = logging.getLogger(__name__)

MIN_PREFIX = 16  #: shortest common prompt prefix (tokens) worth caching
PREFIXES_KEPT = 4  #: prefix caches kept per backend (one per prompt template in practice)


def first_line(token_ids: list[int], logprobs: list[float], decode: Any, stop_ids: set[int]) -> tuple[str, list[float]]:
    """Cut a generated answer at its first newline (found in the decoded text) or stop token.

    Returns the stripped text before the newline and the log-probs of the tokens before the token that
    carries the newline (text the newline token holds before its ``\\n`` is kept in the text).
    """
    for k in range(len(token_ids)):
        if token_ids[k] in stop_ids:
            return decode(token_ids[:k]).strip(), logprobs[:k]
        text = decode(token_ids[: k + 1])
        if "\n" in text:
            return text.split("\n", 1)[0].strip(), logprobs[:k]
    return decode(token_ids).strip(), list(logprobs)


def gguf_source(model: str, gguf_file: str | None = None) -> tuple[str, dict[str, Any]]:
    """(folder or id, extra ``from_pretrained`` keyword arguments) for ``model``.

    A path to a ``.gguf`` file becomes its folder plus ``gguf_file=<name>``; GGUF loading needs the ``gguf``
    and ``accelerate`` packages, checked here so that a missing one is a clear error, not a transformers
    traceback.
    """
    if gguf_file is None and model.endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise BackendError(f"GGUF model file {model} does not exist")
        model, gguf_file = str(path.parent), path.name
    if gguf_file is None:
        return model, {}
    if Path(model).is_dir() and not (Path(model) / gguf_file).is_file():
        raise BackendError(f"GGUF model: no file {gguf_file!r} in {model}")
    require("gguf", "loading a GGUF model (pip install 'inpars-ray[models]')")
    require("accelerate", "loading a GGUF model (pip install 'inpars-ray[models]')")
    return model, {"gguf_file": gguf_file}


class HFBackend(Backend):
    """A transformers causal LM.

    Args:
        model: a Hugging Face model id, a local folder, or a ``.gguf`` file (``local:`` names are resolved
            by :func:`inpars_ray.models.local_models.resolve_model` before they reach a backend).
        device: ``cpu``, ``cuda``, ``cuda:1``...; ``None`` picks ``cuda`` when available.
        dtype: torch dtype name of the weights (``float32``, ``bfloat16``, ``float16``); GGUF weights are
            dequantised to it.
        gguf_file: name of a GGUF file inside the folder ``model``.
        exact_logprobs: after generating, recompute each answer's log-probs with one forward pass over its
            own prompt + answer (no cache, no padding). Generation's incremental decoding sums in another
            order: over SmolLM2's 30 float32 layers its log-probs differ from a teacher-forced pass by up to
            ~3e-5 (the same tokens come out). This makes them equal, at the cost of one more prefill per
            prompt (a backend option: ``backend_options: {exact_logprobs: true}``).
        torch_threads: intra-op threads of torch in this process. ``None`` keeps the process's setting: in a
            Ray actor that is its reserved CPUs (Ray sets ``OMP_NUM_THREADS``), so an actor holding one CPU
            generates on one thread (``backend_options: {torch_threads: 2}`` to use more).
        prefix_cache: reuse the keys and values of the prompts' common prefix (at least
            :data:`MIN_PREFIX` tokens) across the rows of a batch and across batches. A model whose cache
            cannot be reused this way is generated without it (logged once).
    """

    name = "hf"

    def __init__(self, model: str, device: str | None = None, dtype: str = "float32",
                 gguf_file: str | None = None, exact_logprobs: bool = False,
                 torch_threads: int | None = None, prefix_cache: bool = True) -> None:
        super().__init__(model)
        torch = require("torch", "the hf generation backend")
        if torch_threads is not None:
            if torch_threads < 1:
                raise BackendError(f"hf backend: torch_threads must be >= 1, got {torch_threads}")
            torch.set_num_threads(torch_threads)
        transformers = require("transformers", "the hf generation backend")
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        source, load_kwargs = gguf_source(model, gguf_file)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, **load_kwargs)
        self.tokenizer.padding_side = "left"  # a causal LM must see its prompt end right before the answer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), **load_kwargs)
        self.lm.to(self.device).eval()
        self._stop_ids = {i for i in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}
        self._stopping = self._newline_criterion_class()
        self.exact_logprobs = exact_logprobs
        self.prefix_cache = prefix_cache
        self._prefixes: dict[tuple[int, ...], Any] = {}  # prefix token ids -> its cache (batch of one)

    # --- tokens ---------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self._encode(text)
        if len(ids) <= max_tokens:
            return text
        return self.tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # --- generation -----------------------------------------------------------------------------------
    def _newline_criterion_class(self) -> Any:
        transformers = require("transformers", "the hf generation backend")
        torch = self._torch
        decode = self._decode

        class NewlineStop(transformers.StoppingCriteria):  # type: ignore[name-defined]  # a class of a module imported at run time (require)
            """Marks a row done once its decoded answer holds a newline."""

            def __init__(self, prompt_len: int) -> None:
                self.prompt_len = prompt_len

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                tails = input_ids[:, self.prompt_len:].tolist()
                return torch.tensor(["\n" in decode(t) for t in tails], device=input_ids.device)

        return NewlineStop

    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        out: list[Generation | None] = [None] * len(prompts)
        encoded = [self.tokenizer(p)["input_ids"] for p in prompts]
        todo = []
        for i, ids in enumerate(encoded):
            # counted like count_tokens (without special tokens), so the stage's own check and this one agree
            n_tokens = self.count_tokens(prompts[i])
            if n_tokens > params.max_prompt_tokens:
                out[i] = Generation("", [], len(ids),
                                    error=f"prompt has {n_tokens} tokens, over max_prompt_tokens={params.max_prompt_tokens}")
            else:
                todo.append(i)
        if todo:
            try:
                results = self._generate_batch([encoded[i] for i in todo], params)
            except RuntimeError as exc:  # e.g. out of memory: report every prompt of the batch
                logger.exception("hf generation failed for a batch of %d prompts", len(todo))
                results = [Generation("", [], len(encoded[i]), error=f"hf backend: {exc}") for i in todo]
            for i, res in zip(todo, results):
                out[i] = res
        return [g for g in out if g is not None]

    def _cached_prefix(self, encoded: list[list[int]]) -> tuple[int, Any]:
        """(length, a fresh copy of the cache) of the prefix reused for this batch, or (0, None).

        The prefix is the batch's common prefix, cut so that every prompt keeps at least one token of its
        own; a cached prefix that starts this batch's common one is reused as it is.
        """
        import copy
        import os.path

        if not self.prefix_cache:
            return 0, None
        common = os.path.commonprefix(encoded)[: min(len(e) for e in encoded) - 1]
        if len(common) < MIN_PREFIX:
            return 0, None
        key = next((k for k in self._prefixes if len(k) <= len(common) and tuple(common[: len(k)]) == k), None)
        if key is None:
            key = tuple(common)
            with self._torch.no_grad():
                ids = self._torch.tensor([list(key)], device=self.device)
                self._prefixes[key] = self.lm(input_ids=ids, use_cache=True).past_key_values
            while len(self._prefixes) > PREFIXES_KEPT:
                self._prefixes.pop(next(iter(self._prefixes)))  # the oldest first
        cache = copy.deepcopy(self._prefixes[key])
        cache.batch_repeat_interleave(len(encoded))
        return len(key), cache

    def _layout(self, encoded: list[list[int]], prefix: int) -> dict[str, Any]:
        """Input ids and attention mask of ``prefix | padding | rest`` rows (left padding when ``prefix`` is 0)."""
        torch = self._torch
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            rest = len(e) - prefix
            ids[row, :prefix] = torch.tensor(e[:prefix], dtype=torch.long)
            ids[row, width - rest:] = torch.tensor(e[prefix:], dtype=torch.long)
            mask[row, :prefix] = 1
            mask[row, width - rest:] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _generate_batch(self, encoded: list[list[int]], params: GenerationParams) -> list[Generation]:
        torch = self._torch
        try:
            prefix, cache = self._cached_prefix(encoded)
        except (AttributeError, TypeError, ValueError, NotImplementedError) as exc:  # a cache of another shape
            logger.warning("hf backend: the prompts' common prefix cannot be cached for %s (%s); generating "
                           "without it", self.model, exc)
            self.prefix_cache, prefix, cache = False, 0, None
        batch = self._layout(encoded, prefix)
        if cache is not None:
            batch["past_key_values"] = cache
        prompt_len = batch["input_ids"].shape[1]
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample}
        if sample:
            torch.manual_seed(params.seed)
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            res = self.lm.generate(
                **batch, max_new_tokens=params.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                stopping_criteria=[self._stopping(prompt_len)], return_dict_in_generate=True, output_logits=True,
            **kwargs)
        if res.logits is None:  # pragma: no cover - guards a transformers API change
            raise BackendError("transformers did not return the raw logits (output_logits=True)")
        new_ids = res.sequences[:, prompt_len:]
        logits = torch.stack(res.logits, dim=1).double()  # (batch, steps, vocab), raw, float64
        chosen = torch.log_softmax(logits, dim=-1).gather(-1, new_ids[:, : logits.shape[1], None])[..., 0]
        out = []
        for row, ids in enumerate(new_ids.tolist()):
            text, lps = first_line(ids, chosen[row].tolist(), self._decode, self._stop_ids)
            if self.exact_logprobs and lps:
                lps = self._teacher_forced(encoded[row], ids[: len(lps)])
            out.append(Generation(text, lps, len(encoded[row])))
        return out

    def _teacher_forced(self, prompt: list[int], answer: list[int]) -> list[float]:
        """Log-probs of ``answer`` after ``prompt`` from one forward pass over both (no cache, no padding)."""
        torch = self._torch
        with torch.no_grad():
            logits = self.lm(torch.tensor([prompt + answer], device=self.device)).logits[0, len(prompt) - 1: -1]
        logp = torch.log_softmax(logits.double(), dim=-1)
        return logp.gather(-1, torch.tensor(answer, device=self.device)[:, None])[:, 0].tolist()

    def close(self) -> None:
        del self.lm
