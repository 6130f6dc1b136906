"""The one interface every query-generation backend (hf, vllm, openai) implements.

A backend takes finished prompt strings and returns, for each, the first line the model generated and the
log-probabilities of the tokens of that line (the tokens actually chosen, also under sampling). Stopping at
the end of the first line must work for any tokenizer: a backend never hard-codes a newline token id (the
InPars toolkit, github.com/zetaalphavector/InPars, hard-codes GPT-2's); it looks for a newline in the
*decoded* text of the generated tokens.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

from inpars_ray.stageconfig import Field, stage_config


@stage_config
class GenerationParams:
    """Decoding settings shared by all backends (defaults: InPars, arXiv 2202.05144 and 2301.01820)."""

    max_new_tokens: int = Field(64, ge=1, description="most tokens generated per prompt (InPars: 64)")
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding; above 0, sampling at that "
                               "temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (used only when sampling)")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens only (used only when "
                       "sampling; 0: no cut; GPL samples with top-k 25 and top-p 0.95)")
    seed: int = Field(1, ge=0, description="seed for sampling, so a rerun draws the same queries")
    max_prompt_tokens: int = Field(2048, ge=1, description="longest prompt (in the model's tokens) a backend "
                                   "accepts (InPars: 2048); longer prompts become error rows")


@dataclasses.dataclass
class Generation:
    """What a backend returns for one prompt.

    Attributes:
        text: the generated first line, without the newline, stripped of surrounding spaces.
        token_logprobs: natural-log probability of each generated token up to (not including) the token that
            carries the newline; ``len(token_logprobs)`` is the query's length in tokens.
        prompt_tokens: tokens in the prompt (for accounting).
        error: set when this prompt failed (e.g. too long, API refused); then ``text`` is empty.
    """

    text: str
    token_logprobs: list[float]
    prompt_tokens: int = 0
    error: str | None = None


class Backend(abc.ABC):
    """A loaded model that generates; constructed once per Ray actor."""

    #: short name recorded in the output ("hf", "vllm", "openai")
    name: str = ""

    def __init__(self, model: str) -> None:
        self.model = model

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` takes in this model's tokenizer (used to truncate documents)."""

    @abc.abstractmethod
    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut to at most ``max_tokens`` tokens of this model's tokenizer."""

    @abc.abstractmethod
    def generate(self, prompts: list[str], params: GenerationParams) -> list[Generation]:
        """One :class:`Generation` per prompt, in order; a failing prompt yields ``error``, never raises."""

    def generate_each(self, prompts: list[str], params: GenerationParams,
                      on_result: Callable[[int, Generation], None]) -> list[Generation]:
        """As :meth:`generate`, calling ``on_result(i, generation)`` as soon as prompt ``i`` is answered, so
        the caller can keep each answer before the batch ends (the generate stage journals it). Backends
        that answer prompt by prompt (openai) override this; the others answer a batch at once."""
        out = self.generate(prompts, params)
        for i, generation in enumerate(out):
            on_result(i, generation)
        return out

    def close(self) -> None:  # noqa: B027 - an optional hook: a backend with nothing to release keeps it
        """Release the model (optional)."""
