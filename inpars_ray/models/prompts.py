"""Few-shot prompts for query generation: ``inpars``, ``inpars-gbq``, ``promptagator`` and user files.

A :class:`PromptTemplate` is plain data (picklable, shipped to every actor). A :class:`PromptBuilder`
binds a template to a backend's tokenizer inside an actor: it cuts every document (the few-shot ones once,
the target one per call) to ``doc_max_tokens`` tokens, so the template itself is never truncated.

Formats follow InPars (arXiv 2202.05144; github.com/zetaalphavector/InPars) and Promptagator
(arXiv 2209.11755); the few-shot texts are data files with a provenance note in ``inpars_ray/data/prompts``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

from inpars_ray import schema as S
from inpars_ray.errors import CollectionError, ConfigError
from inpars_ray.io.catalog import Collection
from inpars_ray.io.text import document_text

logger = logging.getLogger(__name__)

PROMPT_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"
BUILTIN = ("inpars", "inpars-gbq", "promptagator")
#: the placeholder a user template file must hold exactly once
DOCUMENT_PLACEHOLDER = "{document}"
#: added to a generated row's prompt name when its query was asked again without the titles (``untitled_retry``)
UNTITLED_SUFFIX = "+untitled"


def base_prompt_name(name: str) -> str:
    """The prompt a generated row's ``prompt_name`` names, without :data:`UNTITLED_SUFFIX`."""
    return name.removesuffix(UNTITLED_SUFFIX)


@dataclasses.dataclass(frozen=True)
class Example:
    """One few-shot example: a document and the labelled lines that follow it.

    Attributes:
        example_id: the query id in its collection (in-domain examples) or the id in the data file.
        document: the example document's text (cut to ``doc_max_tokens`` when the prompt is built).
        lines: (label, text) pairs rendered as ``label: text`` after the document.
    """

    example_id: str
    document: str
    lines: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A prompt format with its few-shot examples.

    Attributes:
        name: short name recorded in every output row (``inpars``, ``inpars-gbq``, ``promptagator`` or the
            user file's name).
        examples: the few-shot examples, in order.
        document_label: label of the document line (``Document``).
        target_label: label of the line the model completes (``Relevant Query``).
        numbered: whether each block starts with ``Example N:`` (InPars) or not (Promptagator).
        instruction: text before the examples (may be empty).
        fewshot_ids: ids of the collection's queries used as examples (excluded from evaluation); empty when
            the examples do not come from the collection.
        user_text: a user template with one ``{document}`` placeholder; when set it replaces the format above.
        titles: whether a document's title is shown before its text (the target's and, for promptagator, the
            examples'); without it the model sees only the text, so it cannot answer with the title.
    """

    name: str
    examples: tuple[Example, ...] = ()
    document_label: str = "Document"
    target_label: str = "Relevant Query"
    numbered: bool = True
    instruction: str = ""
    fewshot_ids: tuple[str, ...] = ()
    user_text: str | None = None
    titles: bool = True

    def render(self, document: str, cut: Callable[[str], str] = lambda t: t) -> str:
        """The full prompt for ``document`` (already cut); ``cut`` shortens the few-shot documents."""
        if self.user_text is not None:
            return self.user_text.replace(DOCUMENT_PLACEHOLDER, document)
        blocks = [self.instruction] if self.instruction else []
        for n, ex in enumerate(self.examples, 1):
            lines = [f"Example {n}:"] if self.numbered else []
            lines.append(f"{self.document_label}: {cut(ex.document)}")
            lines.extend(f"{label}: {text}" for label, text in ex.lines)
            blocks.append("\n".join(lines))
        last = [f"Example {len(self.examples) + 1}:"] if self.numbered else []
        last += [f"{self.document_label}: {document}", f"{self.target_label}:"]
        blocks.append("\n".join(last))
        return "\n\n".join(blocks)

    def fingerprint(self) -> str:
        """A hash of everything that shapes the prompts (part of the generate stage's config hash)."""
        fields = dataclasses.asdict(self)
        if self.titles:  # added later: templates with titles keep their fingerprints
            fields.pop("titles")
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _inpars_examples() -> list[dict[str, str]]:
    return json.loads((PROMPT_DIR / "inpars_examples.json").read_text())["examples"]


def inpars_template(gbq: bool = False) -> PromptTemplate:
    """The InPars vanilla prompt, or with ``gbq`` the "guided by bad questions" prompt."""
    examples = []
    for ex in _inpars_examples():
        lines = ((("Good Question", ex["good_question"]), ("Bad Question", ex["bad_question"])) if gbq
                 else (("Relevant Query", ex["good_question"]),))
        examples.append(Example(ex["id"], ex["document"], lines))
    return PromptTemplate(name="inpars-gbq" if gbq else "inpars", examples=tuple(examples),
                          target_label="Good Question" if gbq else "Relevant Query")


def collection_name(collection: Collection) -> str:
    """The short name of a collection (``beir/scifact`` -> ``scifact``), used to pick its template."""
    return collection.name


def promptagator_template(collection: Collection, seed: int = 1, num_examples: int = 8,
                          split: str = "train", titles: bool = True) -> PromptTemplate:
    """A Promptagator-style prompt with ``num_examples`` (query, relevant document) pairs of the collection.

    Queries are drawn at random (``seed``) among those with a positive judgement in ``qrels/{split}.tsv``;
    each brings one of its relevant documents (also drawn with ``seed``).
    """
    return promptagator_templates(collection, seed, num_examples, split, titles=titles)[0]


def promptagator_templates(collection: Collection, seed: int = 1, num_examples: int = 8, split: str = "train",
                           sets: int = 1, titles: bool = True) -> tuple[PromptTemplate, ...]:
    """``sets`` Promptagator-style prompts with ``num_examples`` examples each, no example in two of them.

    The sets are drawn one after the other from one seeded generator, each among the queries no earlier set
    took; with at least ``sets * num_examples`` judged queries the first is the one
    :func:`promptagator_template` gives for the same seed. Fewer: the sets share them out evenly (each gets at
    least one); fewer than ``sets``: a :class:`ConfigError`. ``titles`` False leaves the example documents'
    titles out, as the target's (:attr:`PromptTemplate.titles`).
    """
    from inpars_ray.io.load import iter_lines, parse_corpus_lines, read_qrels, read_queries

    if not collection.exists(collection.qrels_path(split)):
        raise ConfigError(f"the promptagator prompt draws its examples from {collection.display('qrels', split + '.tsv')}, "
                          "which does not exist; choose another split or prompt")
    queries, _ = read_queries(collection)
    qrels, _ = read_qrels(collection, split, queries)
    relevant: dict[str, list[str]] = {}
    for qid, did, rel in zip(*(qrels.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RELEVANCE))):
        if rel > 0:
            relevant.setdefault(qid, []).append(did)
    pool = sorted(relevant)
    if not pool:
        raise ConfigError(f"{collection.display('qrels', split + '.tsv')} has no positive judgement to draw examples from")
    if len(pool) < sets:
        raise ConfigError(f"{collection.display('qrels', split + '.tsv')} judges {len(pool)} queries: too few for "
                          f"{sets} few-shot sets; lower fewshot_sets")
    sizes = [num_examples] * sets if len(pool) >= num_examples * sets else \
        [len(pool) // sets + (i < len(pool) % sets) for i in range(sets)]
    rng = random.Random(seed)
    groups: list[list[str]] = []
    doc_of: dict[str, str] = {}
    for size in sizes:  # set by set, each with its documents, so the first set is the single draw's
        group = rng.sample(pool, size)
        doc_of.update({qid: rng.choice(sorted(relevant[qid])) for qid in group})
        groups.append(group)
        taken = set(group)
        pool = [qid for qid in pool if qid not in taken]
    wanted = set(doc_of.values())
    texts: dict[str, str] = {}
    chunk: list[bytes] = []
    first = 1

    def scan(lines: list[bytes], start: int) -> None:
        table, _ = parse_corpus_lines(lines, collection.display("corpus.jsonl"), start)
        for did, title, text in zip(*(table.column(c).to_pylist() for c in (S.DOC_ID, S.TITLE, S.TEXT))):
            if did in wanted:
                texts[did] = document_text(title if titles else None, text)

    for line in iter_lines(collection, collection.corpus_path()):  # one streamed pass, stops early
        chunk.append(line)
        if len(chunk) == 10_000:
            scan(chunk, first)
            first += len(chunk)
            chunk = []
            if len(texts) == len(wanted):
                break
    if chunk:
        scan(chunk, first)
    missing = sorted(wanted - set(texts))
    if missing:
        raise CollectionError(f"qrels name documents absent from {collection.display('corpus.jsonl')}: {missing}")
    spec = json.loads((PROMPT_DIR / "promptagator.json").read_text())["templates"]
    fmt = spec.get(collection_name(collection), spec["default"])
    query_text = dict(zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()))
    return tuple(PromptTemplate(
        name="promptagator", document_label=fmt["document_label"], target_label=fmt["query_label"], numbered=False,
        instruction=fmt["instruction"], fewshot_ids=tuple(group), titles=titles,
        examples=tuple(Example(qid, texts[doc_of[qid]], ((fmt["query_label"], query_text[qid]),)) for qid in group))
        for group in groups)


def user_template(path: str | Path) -> PromptTemplate:
    """A template from a text file holding the whole prompt with one ``{document}`` placeholder."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    count = text.count(DOCUMENT_PLACEHOLDER)
    if count != 1:
        raise ConfigError(f"{path}: a prompt file must hold the placeholder {DOCUMENT_PLACEHOLDER} exactly once "
                          f"(found {count})")
    return PromptTemplate(name=path.name, user_text=text.rstrip("\n"))


def resolve_template(prompt: str, collection: Collection | None = None, seed: int = 1, num_fewshot: int = 8,
                     fewshot_split: str = "train", titles: bool = True) -> PromptTemplate:
    """``inpars``, ``inpars-gbq``, ``promptagator`` (needs ``collection``) or a path to a template file;
    ``titles`` False: documents are shown without their titles (:attr:`PromptTemplate.titles`)."""
    if prompt in ("inpars", "inpars-gbq"):
        return dataclasses.replace(inpars_template(gbq=prompt == "inpars-gbq"), titles=titles)
    if prompt == "promptagator":
        if collection is None:
            raise ConfigError("the promptagator prompt needs the collection to draw its examples from")
        return promptagator_template(collection, seed, num_fewshot, fewshot_split, titles)
    if Path(prompt).is_file():
        return dataclasses.replace(user_template(prompt), titles=titles)
    raise ConfigError(f"prompt {prompt!r} is neither one of {list(BUILTIN)} nor an existing template file")


def resolve_templates(prompt: str, collection: Collection | None = None, seed: int = 1, num_fewshot: int = 8,
                      fewshot_split: str = "train", sets: int = 1, titles: bool = True) -> tuple[PromptTemplate, ...]:
    """:func:`resolve_template`, or with ``sets`` > 1 that many promptagator prompts with disjoint examples
    (:func:`promptagator_templates`); each document is prompted with one of them (:func:`template_index`)."""
    if sets == 1:
        return (resolve_template(prompt, collection, seed, num_fewshot, fewshot_split, titles),)
    if prompt != "promptagator":
        raise ConfigError(f"several few-shot sets draw their examples from the collection: prompt 'promptagator', "
                          f"not {prompt!r}")
    if collection is None:
        raise ConfigError("the promptagator prompt needs the collection to draw its examples from")
    return promptagator_templates(collection, seed, num_fewshot, fewshot_split, sets, titles)


def template_index(doc_id: str, seed: int, count: int) -> int:
    """Which of ``count`` prompts a document is given: a seeded hash of its id (0 when there is one), the same
    on every node and rerun, whatever the batch."""
    if count == 1:
        return 0
    digest = hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def templates_fingerprint(templates: tuple[PromptTemplate, ...]) -> str:
    """The fingerprint of a run's prompts: the template's own when there is one (so older runs keep it)."""
    if len(templates) == 1:
        return templates[0].fingerprint()
    return hashlib.sha256("\0".join(t.fingerprint() for t in templates).encode()).hexdigest()[:16]


class PromptBuilder:
    """Renders prompts for one backend's tokenizer; the few-shot documents are cut once, here.

    Args:
        template: the prompt format and examples.
        cut: shortens a text to ``doc_max_tokens`` tokens (``backend.truncate`` bound to the limit).
    """

    def __init__(self, template: PromptTemplate, cut: Callable[[str], str]) -> None:
        self.template = template
        self._cut = cut
        cut_examples = {ex.document: cut(ex.document) for ex in template.examples}
        self._cut_example = cut_examples.__getitem__

    def build(self, title: str | None, text: str | None) -> str:
        """The prompt for one corpus document (its title left out when the template shows none)."""
        return self.template.render(self._cut(document_text(title if self.template.titles else None, text)),
                                    self._cut_example)
