"""The generate stage's pure batch function: a batch of corpus documents in, its GENERATED rows out.

:func:`generate_batch` builds each document's prompt, asks the backend (answers journaled as they arrive, so a
killed attempt does not pay for them again) and writes one row per query: the query with its token log-probs,
or the reason there is none. :mod:`.generate` runs it inside its Ray Data actors.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.io.journal import Journal, answer_key
from inpars_ray.io.text import copies_document, document_text
from inpars_ray.models.backends.base import Backend, Generation, GenerationParams
from inpars_ray.models.prompts import UNTITLED_SUFFIX, PromptBuilder
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.generate_parts import BACKEND_ERROR, generated_query_id

logger = logging.getLogger(__name__)

STAGE = "generate"
#: what makes an answer worth asking again without titles (``GenerateConfig.untitled_retry``): it copies its
#: document (the filter drops it), or it used every one of ``max_new_tokens`` without ending its line
RETRY_REASONS = ("copies", "unfinished")


def fails(query: str | None, num_tokens: int | None, title: str | None, text: str | None, max_new_tokens: int,
          reasons: tuple[str, ...] = RETRY_REASONS) -> bool:
    """Whether a generated query is one of ``reasons``: a verbatim span of its document (``copies``), or an
    answer that used every one of ``max_new_tokens`` without ending its line (``unfinished``)."""
    if not query:
        return False
    return (("copies" in reasons and copies_document(query, document_text(title, text)))
            or ("unfinished" in reasons and (num_tokens or 0) >= max_new_tokens))


@stage_config
class SamplingParams:
    """How the queries after a document's first are sampled (GPL, arXiv 2112.07577: top-k 25, top-p 0.95);
    the other decoding settings (max_new_tokens, max_prompt_tokens) are the first query's."""

    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(25, ge=0, description="sample among the k most likely tokens only (0: no cut)")


def round_params(params: GenerationParams, sampling: SamplingParams | None, round_: int) -> GenerationParams:
    """Decoding of query ``round_`` of a document: round 0 as configured; a later one sampled with
    ``sampling`` and the seed ``params.seed + round_``, so each round draws other queries, the same on a rerun."""
    if round_ == 0:
        return params
    s = sampling or SamplingParams()
    return dataclasses.replace(params, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                               seed=params.seed + round_)


def _answer_key(prompt: str, round_: int) -> str:
    return answer_key(prompt if round_ == 0 else f"{prompt}\0sample {round_}")


def generate_batch(batch: pa.Table, builder: PromptBuilder | Callable[[str], PromptBuilder], backend: Backend,
                   params: GenerationParams, prompt_name: str, model: str, fewshot_ids: list[str] | None,
                   journal: Journal | None = None, part: str = "", queries_per_doc: int = 1,
                   sampling: SamplingParams | None = None,
                   untitled: Callable[[str], PromptBuilder] | None = None,
                   retry_when: tuple[str, ...] = ("copies",)) -> pa.Table:
    """GENERATED rows for a batch of corpus documents: ``queries_per_doc`` per document (round 0 decoded with
    ``params``, later rounds sampled, :func:`round_params`), each a query or an error row with its reason.

    A prompt longer than ``params.max_prompt_tokens`` (after cutting the document) is an error row and
    never reaches the backend; so is an empty first line. With a ``journal``, each answer is journaled
    under ``part`` as it arrives, and answers an earlier attempt journaled are taken from it, not asked again.
    ``builder`` is the prompt of every document, or a function giving a document's (by id); each row records
    ``fewshot_ids``, or when None its own prompt's examples. Every prompt goes to the backend in one call.
    With ``untitled`` (a document's prompt without titles), an answer that ``retry_when`` names
    (:data:`RETRY_REASONS`) is asked once more with that prompt, and its row's prompt name gets
    :data:`UNTITLED_SUFFIX`.
    """
    S.require_columns(batch.column_names, [S.DOC_ID, S.TITLE, S.TEXT], STAGE)
    doc_ids = batch.column(S.DOC_ID).to_pylist()
    titles, texts = batch.column(S.TITLE).to_pylist(), batch.column(S.TEXT).to_pylist()
    builders = [builder if isinstance(builder, PromptBuilder) else builder(d) for d in doc_ids]
    prompts = [b.build(t, x) for b, t, x in zip(builders, titles, texts)]
    errors: list[str | None] = [None] * len(prompts)
    for i, prompt in enumerate(prompts):
        n_tokens = backend.count_tokens(prompt)
        if n_tokens > params.max_prompt_tokens:
            errors[i] = f"prompt has {n_tokens} tokens, over max_prompt_tokens={params.max_prompt_tokens}"
    todo = [i for i, e in enumerate(errors) if e is None]
    saved = journal.read(part) if journal is not None else {}
    results: dict[tuple[int, int], Generation] = {}

    def answers(rows: list[int], texts_of: dict[int, str], r: int) -> dict[int, Generation]:
        """Round ``r``'s answers to the prompts ``texts_of[i]`` of ``rows``: journaled ones, the rest asked."""
        got = {i: Generation(**saved[k]) for i in rows if (k := _answer_key(texts_of[i], r)) in saved}
        ask = [i for i in rows if i not in got]
        if got:
            logger.info("generate: %d answers of %s (round %d) from the journal, %d asked", len(got), part, r, len(ask))

        def keep(j: int, answer: Generation) -> None:
            got[ask[j]] = answer
            if journal is not None and not answer.error:  # an error is asked again anyway
                journal.append(part, _answer_key(texts_of[ask[j]], r), dataclasses.asdict(answer))

        if ask:
            backend.generate_each([texts_of[i] for i in ask], round_params(params, sampling, r), keep)
        return got

    retried: set[tuple[int, int]] = set()
    for r in range(queries_per_doc):
        results.update({(i, r): g for i, g in answers(todo, dict(enumerate(prompts)), r).items()})
        if untitled is None:
            continue
        again = {i: untitled(doc_ids[i]).build(titles[i], texts[i]) for i in todo
                 if (g := results.get((i, r))) is not None and not g.error
                 and fails(g.text, len(g.token_logprobs), titles[i], texts[i], params.max_new_tokens, retry_when)}
        for i, g in answers(sorted(again), again, r).items():
            results[(i, r)] = g
            retried.add((i, r))
    cols: dict[str, list[Any]] = {name: [] for name in S.GENERATED.names}
    for i, doc_id in enumerate(doc_ids):
        for r in range(queries_per_doc):
            res = results.get((i, r))
            error = errors[i] or (BACKEND_ERROR + res.error if res is not None and res.error else None)
            if error is None and res is not None and not res.text:
                error = "the model generated an empty first line"
            ok = res if error is None else None  # the generation, when it is kept
            cols[S.DOC_ID].append(doc_id)
            cols[S.QUERY_ID].append(generated_query_id(doc_id, r))
            cols[S.QUERY].append(ok.text if ok is not None else None)
            cols[S.TOKEN_LOGPROBS].append([float(x) for x in ok.token_logprobs] if ok is not None else None)
            cols[S.MEAN_LOGPROB].append(float(np.mean(ok.token_logprobs)) if ok is not None and ok.token_logprobs else None)
            cols[S.NUM_TOKENS].append(len(ok.token_logprobs) if ok is not None else None)
            cols[S.PROMPT_NAME].append(prompt_name + (UNTITLED_SUFFIX if (i, r) in retried else ""))
            cols[S.MODEL].append(model)
            cols[S.BACKEND].append(backend.name)
            cols[S.FEWSHOT_IDS].append(list(fewshot_ids if fewshot_ids is not None else builders[i].template.fewshot_ids))
            cols[S.ERROR].append(error)
    return pa.table(cols, schema=S.GENERATED)
