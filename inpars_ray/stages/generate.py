"""Stage — generate: one synthetic query per sampled document, on Ray Data, resumable at row level.

Layers, as every stage:

* pure functions over Arrow batches: :func:`block_candidates` / :func:`merge_candidates` /
  :func:`below_threshold` (the seeded sample) and :func:`~.generate_rows.generate_batch` (prompts ->
  GENERATED rows; with ``untitled_retry``, an answer that copies its document or runs on is asked again
  without titles);
* :class:`GenerateWorker`, a callable class that loads the backend once per actor and writes each batch's
  rows as one Parquet part file, whole or not at all, through :mod:`inpars_ray.io.storage` (a local folder
  or ``gs://``), from whichever node it runs on;
* :func:`run_generate`, which wires them into Ray Data and writes the manifest.

**Sampling** is seeded and independent of blocks, cluster size and read order (:mod:`.sample`).

**Resume.** ``out/parts/part-<hash of the batch's doc ids>.parquet`` holds the rows (queries and error rows)
of one batch. A rerun with the same config skips every document already present in a complete part file,
so a document is never generated (or paid for) twice. ``out/run.json`` pins the config: a rerun with a
different one is refused instead of mixing outputs. ``manifest.json`` is written last, once every sampled
document has a row, and lists the part files it publishes. Part files are written and read by
:mod:`.generate_parts`.

**Prompts.** One prompt for every document, or with ``fewshot_sets`` > 1 that many promptagator prompts
with disjoint examples, each document given one by a seeded hash of its id
(:func:`~inpars_ray.models.prompts.template_index`): one unlucky draw of examples (a small generator copies
their topic into every query) then writes a share of the queries, not all of them. Within a block, documents
are ordered by their prompt, so a backend batch mostly shares one prompt's prefix (the hf backend caches the
batch's common prefix, and keeps 4).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from inpars_ray import schema as S
from inpars_ray.errors import ArtifactDamagedError, ConfigError, InparsError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.journal import Journal, run_key
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.manifest import StageRecord, collection_key, config_hash, to_jsonable, write_json_atomic
from inpars_ray.io.stage import StageResult, StageSpec, reused
from inpars_ray.models.backends.base import Backend, GenerationParams
from inpars_ray.models.prompts import (
    UNTITLED_SUFFIX,
    PromptBuilder,
    PromptTemplate,
    resolve_templates,
    template_index,
    templates_fingerprint,
)
from inpars_ray.runtime import progress
from inpars_ray.runtime.raykit import one_block_per_call
from inpars_ray.stageconfig import Field, field_validator, stage_config
from inpars_ray.stages.generate_parts import (
    FEWSHOT_FILE,
    PARTS,
    completed_doc_ids,
    needs_retry,
    part_name,
    read_generated,
    write_part,
)
from inpars_ray.stages.generate_rows import RETRY_REASONS, SamplingParams, fails, generate_batch
from inpars_ray.stages.sample import below_threshold, block_candidates, merge_candidates

logger = logging.getLogger(__name__)

STAGE = "generate"
#: ``titles: auto``: how many sampled documents probe the generator with titles, and the share of its answers
#: that copy their document or run on (the filter would drop or keep junk) above which the run shows no titles
TITLES_PROBE_DOCS = 32
TITLES_AUTO_LIMIT = 0.5


@stage_config
class GenerateConfig:
    """What is generated. Every field enters the config hash: a rerun with another value needs a new folder."""

    backend: str = Field("hf", description="hf, vllm or openai")
    model: str = Field("", description="model id, local folder, or API model name")
    prompt: str = Field("inpars", description="inpars, inpars-gbq, promptagator or a template file with a "
                        "{document} placeholder")
    num_docs: int = Field(100_000, ge=1, description="documents sampled from the corpus (InPars: 100,000); all "
                          "of them when the corpus is smaller")
    seed: int = Field(1, ge=0, description="seeds the document sample, the promptagator examples and "
                      "sampling-based decoding")
    doc_max_tokens: int = Field(256, ge=1, description="each document (target and few-shot) is cut to this many "
                                "tokens (InPars: 256)")
    num_fewshot: int = Field(8, ge=0, description="promptagator examples drawn from the collection's qrels "
                             "(Promptagator: up to 8)")
    fewshot_split: str = Field("train", description="qrels split the promptagator examples come from")
    fewshot_sets: int = Field(1, ge=1, description="promptagator: this many prompts with num_fewshot examples "
                              "each (no example in two), each document prompted with one of them (a seeded hash of "
                              "its id), so that no single example set writes every query")
    titles: bool | Literal["auto"] = Field(True, description="show each document's title before its text (target "
                                           "and examples); false where titles are names the model would copy (e.g. "
                                           "manual pages); auto: probe the generator with titles on "
                                           f"{TITLES_PROBE_DOCS} sampled documents and drop them when over "
                                           f"{TITLES_AUTO_LIMIT:.0%} of its answers copy their document or run on")
    untitled_retry: tuple[str, ...] = Field((), description="answers asked once more with the document and examples "
                                            "shown without titles: those that copy their document (`copies`, "
                                            "which the filter drops) and/or ran to max_new_tokens without ending "
                                            "their line (`unfinished`)")
    generation: GenerationParams = Field(GenerationParams(), description="decoding settings")
    queries_per_doc: int = Field(1, ge=1, description="queries written per document: the first decoded with "
                                 "`generation`, each further one sampled with `sampling` (its own seed)")
    sampling: SamplingParams = Field(SamplingParams(), description="decoding of the queries after a document's "
                                     "first (used when queries_per_doc > 1)")
    backend_options: tuple[tuple[str, Any], ...] = Field((), description="extra keyword arguments of the "
                                                         "backend (e.g. device: cuda), as sorted (name, value) pairs")

    @field_validator("untitled_retry", mode="before")
    @classmethod
    def _reasons(cls, value: Any) -> Any:  # one name or several, in one canonical order for the hash
        return tuple(sorted(set([value] if isinstance(value, str) else value)))

    @field_validator("backend_options", mode="before")
    @classmethod
    def _options_from_mapping(cls, value: Any) -> Any:
        # YAML writes options as a mapping; the hash needs one canonical order
        return tuple(sorted(value.items())) if isinstance(value, dict) else value

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("generate: a model is required")
        if unknown := set(self.untitled_retry) - set(RETRY_REASONS):
            raise ConfigError(f"generate.untitled_retry: {sorted(unknown)} not among {list(RETRY_REASONS)}")
        if self.untitled_retry and self.titles is not True:
            raise ConfigError("generate.untitled_retry asks again without titles: it needs titles true")
        if self.fewshot_sets > 1 and (self.prompt != "promptagator" or self.num_fewshot == 0):
            raise ConfigError(f"generate.fewshot_sets {self.fewshot_sets} draws that many sets of the collection's "
                              f"examples: it needs prompt 'promptagator' (not {self.prompt!r}) and num_fewshot > 0")
        from inpars_ray.models.backends import check_options

        check_options(self.backend, dict(self.backend_options))  # a typo fails here, on the driver, before Ray


@stage_config
class GenerateResources:
    """How the work is spread. Not hashed: a resumed run may use another cluster shape."""

    batch_size: int = Field(16, ge=1, description="documents per backend call (and per part file)")
    num_actors: int = Field(1, ge=1, description="backend actors (each loads the model once)")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs reserved by each actor (0 on CPU machines)")
    cpus_per_actor: float = Field(1.0, ge=0, description="CPUs reserved by each actor")


# --- generation over a batch -------------------------------------------------------------------------
def keyed_config(config: GenerateConfig) -> dict[str, Any]:
    """``config`` as it enters the stage's key: ``fewshot_sets``, ``titles`` and ``untitled_retry`` only when not
    their defaults (added later: earlier runs keep their keys)."""
    keyed = to_jsonable(config)
    for name, default in (("fewshot_sets", 1), ("titles", True), ("untitled_retry", ())):
        if getattr(config, name) == default:
            keyed.pop(name)
    return keyed


def run_templates(config: GenerateConfig, collection: Collection | None,
                  titles: bool | None = None) -> tuple[PromptTemplate, ...]:
    """The prompts a generate run with ``config`` builds (one, or ``fewshot_sets`` promptagator prompts);
    ``titles`` (default: the config's; ``auto`` before its probe: with titles) whether they show titles."""
    shown = (config.titles is not False) if titles is None else titles
    return resolve_templates(config.prompt, collection, config.seed, config.num_fewshot, config.fewshot_split,
                             config.fewshot_sets, shown)


def fewshot_ids_of(templates: tuple[PromptTemplate, ...]) -> list[str]:
    """Every few-shot query id of a run's prompts, in order (left out of evaluation)."""
    return [qid for t in templates for qid in t.fewshot_ids]


def answer_journal(parts_dir: storage.PathLike, config: GenerateConfig,
                   templates: PromptTemplate | tuple[PromptTemplate, ...]) -> Journal:
    """This node's journal of the answers received for the run in ``parts_dir`` (see :mod:`.io.journal`)."""
    templates = templates if isinstance(templates, tuple) else (templates,)
    pinned = {"config": keyed_config(config), "template": templates_fingerprint(templates)}
    return Journal(run_key(storage.location(parts_dir).uri, config_hash(pinned)))


def load_backend(config: GenerateConfig) -> Backend:
    """The generator ``config`` names, loaded here (a model published under a gs:// run root is copied once per
    node first, then loaded from local disk)."""
    from inpars_ray.models.backends import make_backend

    model = config.model
    if "://" in model and config.backend != "openai":
        model = str(artifacts.materialize(model))
    return make_backend(config.backend, model, **dict(config.backend_options))


def probe_titles(config: GenerateConfig, templates: tuple[PromptTemplate, ...], batch: pa.Table) -> dict[str, int]:
    """``titles: auto``'s probe: the generator answers ``batch``'s documents with the titled ``templates``;
    returns how many it answered and how many of those copy their document or ran on (:func:`fails`)."""
    backend = load_backend(config)
    try:
        limit = config.doc_max_tokens
        builders = [PromptBuilder(t, lambda text: backend.truncate(text, limit)) for t in templates]
        rows = generate_batch(batch, lambda d: builders[template_index(d, config.seed, len(builders))], backend,
                              config.generation, templates[0].name, config.model, None)
    finally:
        backend.close()
    cols = [rows.column(c).to_pylist() for c in (S.QUERY, S.NUM_TOKENS, S.ERROR)] + \
        [batch.column(c).to_pylist() for c in (S.TITLE, S.TEXT)]
    answered = [(q, n, t, x) for q, n, e, t, x in zip(*cols) if e is None]
    failed = sum(fails(q, n, t, x, config.generation.max_new_tokens) for q, n, t, x in answered)
    return {"probed": len(answered), "failed": failed}


def choose_titles(config: GenerateConfig, collection: Collection, todo: Any, run_file: storage.Location,
                  resources: GenerateResources) -> dict[str, Any]:
    """``titles: auto``: the choice recorded in ``run_file`` by an earlier attempt, else a probe of
    :data:`TITLES_PROBE_DOCS` of the sampled documents (the smallest seeded hashes of their ids, so the same
    ones on every rerun) on a Ray task with the generator's resources; recorded in ``run_file``."""
    import ray

    earlier = run_file.read_json().get("titles")
    if earlier is not None:
        return dict(earlier)

    def probe_key(batch: pa.Table) -> pa.Table:
        ids = batch.column(S.DOC_ID).to_pylist()
        keys = [hashlib.sha256(f"{config.seed}\0{d}".encode()).hexdigest() for d in ids]
        return batch.append_column("_probe_key", pa.array(keys, pa.string()))

    sample = todo.map_batches(probe_key, batch_format="pyarrow", batch_size=None).sort("_probe_key")
    tables = [t for t in ray.get(sample.limit(TITLES_PROBE_DOCS).to_arrow_refs()) if t.num_rows]
    if not tables:  # nothing left to generate: nothing to choose
        return {"chosen": True, "probed": 0, "failed": 0}
    batch = pa.concat_tables(tables).drop_columns(["_probe_key"])
    task = ray.remote(probe_titles).options(num_cpus=resources.cpus_per_actor, num_gpus=resources.gpus_per_actor)
    found = ray.get(task.remote(config, run_templates(config, collection, True), batch))
    share = found["failed"] / found["probed"] if found["probed"] else 0.0
    choice = {"chosen": share <= TITLES_AUTO_LIMIT, **found, "failed_share": round(share, 4),
              "limit": TITLES_AUTO_LIMIT}
    logger.info("generate: titles auto: %d of %d probe answers copy their document or run on (%.0f%%): titles %s",
                found["failed"], found["probed"], 100 * share, "kept" if choice["chosen"] else "left out")
    write_json_atomic(run_file, {**run_file.read_json(), "titles": choice})
    return choice


class GenerateWorker:
    """Ray Data UDF: loads the backend once per actor, generates a batch, writes it as a part file."""

    def __init__(self, config: GenerateConfig, templates: PromptTemplate | tuple[PromptTemplate, ...],
                 parts_dir: storage.Location, untitled: tuple[PromptTemplate, ...] = ()) -> None:
        self.config = config
        self.templates = templates if isinstance(templates, tuple) else (templates,)
        self.parts_dir = storage.location(parts_dir)
        self.backend = load_backend(config)
        limit = config.doc_max_tokens
        self.builders = [PromptBuilder(t, lambda text: self.backend.truncate(text, limit)) for t in self.templates]
        # the same prompts without titles, for untitled_retry (run_templates(config, collection, titles=False))
        self.untitled = [PromptBuilder(t, lambda text: self.backend.truncate(text, limit)) for t in untitled]
        self.journal = answer_journal(self.parts_dir, config, self.templates)
        self._usage: dict[str, float] = {}
        self._worker = f"{socket.gethostname()}:{os.getpid()}"  # counted by the stage: did every actor work?
        self._ready_at = time.time()  # the backend is up: the stage reports how long starting it took

    def _builder_of(self, doc_id: str, untitled: bool = False) -> PromptBuilder:
        """The prompt of ``doc_id``: its few-shot set's (the only one unless ``fewshot_sets`` > 1)."""
        builders = self.untitled if untitled else self.builders
        return builders[template_index(doc_id, self.config.seed, len(builders))]

    def _usage_delta(self) -> str:
        """What this batch cost (tokens, requests, money) for backends that count it (openai), as JSON."""
        usage = getattr(self.backend, "usage", None)
        if usage is None:
            return "{}"
        now = {k: v for k, v in usage().items() if isinstance(v, (int, float))}
        delta = {k: v - self._usage.get(k, 0) for k, v in now.items()}  # the backend's totals are cumulative
        self._usage = now
        return json.dumps(delta)

    def _written(self, name: str) -> pa.Table | None:
        """The part ``name`` if an earlier attempt at this very batch wrote it whole, with final rows only."""
        part = self.parts_dir.join(name)
        if not part.is_file():
            return None
        try:
            table = artifacts.read_parquet(part, schema=S.GENERATED)
        except ArtifactDamagedError:
            return None  # damaged: generate it again, and overwrite it
        retry = needs_retry(table)
        return None if pc.any(retry).as_py() else table

    def __call__(self, batch: pa.Table) -> pa.Table:
        # Ray Data delivers a batch at least once: an actor killed after writing its part but before its
        # result reached the driver gets the batch again, on a restarted actor. The part is named after the
        # batch's documents, so it is found, and its documents are not generated (or paid for) twice.
        name = part_name(batch.column(S.DOC_ID).to_pylist())
        table = self._written(name)
        if table is None:  # each answer is journaled as it arrives: a killed attempt's answers are not paid again
            table = generate_batch(batch, self._builder_of, self.backend, self.config.generation,
                                   self.templates[0].name, self.config.model, None, self.journal, name,
                                   self.config.queries_per_doc, self.config.sampling,
                                   (lambda d: self._builder_of(d, True)) if self.untitled else None,
                                   self.config.untitled_retry)
            name = write_part(table, self.parts_dir)
        self.journal.discard(name)  # the part holds its answers now
        errors = table.num_rows - table.column(S.ERROR).null_count
        docs = len(set(table.column(S.DOC_ID).to_pylist()))
        return pa.table({"part": [name], "docs": [docs], "errors": [errors],
                         "usage": [self._usage_delta()], "worker": [self._worker], "ready_at": [self._ready_at]})


# --- the stage -------------------------------------------------------------------------------------
def run_generate(collection: Collection, out_dir: storage.PathLike, config: GenerateConfig,
                 resources: GenerateResources = GenerateResources(),
                 load_config: LoadConfig = LoadConfig()) -> StageResult:
    """Generate queries for a seeded sample of ``collection`` into ``out_dir``.

    Resumes a previous run of the same config in ``out_dir``; skips entirely when it completed.
    """
    import ray

    from inpars_ray.io.load import read_corpus

    out = storage.location(out_dir)
    storage.check_reachable(out)
    templates = run_templates(config, collection)
    fewshot_ids = fewshot_ids_of(templates)
    # the collection enters by content (its files' fingerprint), never by path
    pinned = {"config": keyed_config(config), "collection": collection_key(collection),
              "template": templates_fingerprint(templates)}
    # only the reuse check of the shared skeleton: generate resumes inside its folder (its journal, its
    # finished parts) instead of deleting them, and marks its manifest incomplete while documents remain
    earlier = reused(StageSpec(STAGE, out, pinned, outputs=(PARTS, FEWSHOT_FILE)))
    if earlier is not None:
        return earlier
    run_file = out / "run.json"
    if run_file.is_file() and run_file.read_json().get("config_hash") != config_hash(pinned):
        raise ConfigError(f"{out} holds a generate run with another config (see {run_file}); "
                          "use a new output folder or delete that one")
    (out / PARTS).mkdir()
    kept_choice = run_file.read_json().get("titles") if run_file.is_file() else None  # titles auto's, if made
    write_json_atomic(run_file, {"config_hash": config_hash(pinned), **pinned,
                                 **({"titles": kept_choice} if kept_choice is not None else {})})
    fewshot: dict[str, Any] = {"prompt": templates[0].name, "fewshot_query_ids": fewshot_ids}
    if len(templates) > 1:  # which examples went together (a document's own set: its rows' fewshot_ids)
        fewshot["fewshot_sets"] = [list(t.fewshot_ids) for t in templates]
    write_json_atomic(out / FEWSHOT_FILE, fewshot)
    if out.is_local:  # half-written parts of a killed run (an object store never shows an unfinished upload)
        for stale in (out / PARTS).local_path().glob(".*.tmp"):
            stale.unlink()

    record = StageRecord(STAGE, pinned)
    done = completed_doc_ids(out, config.queries_per_doc)
    corpus = read_corpus(collection, load_config)
    with record.timed("sample"):
        cands = corpus.map_batches(block_candidates, fn_kwargs={"n": config.num_docs, "seed": config.seed},
                                   batch_format="pyarrow", batch_size=None)
        threshold, n_good, n_bad = merge_candidates(cands.iter_rows(), config.num_docs)
    sampled = min(config.num_docs, n_good)

    def keep_missing(batch: pa.Table, done_ids: set[str]) -> pa.Table:
        kept = below_threshold(batch, config.seed, threshold)
        mask = [d not in done_ids for d in kept.column(S.DOC_ID).to_pylist()]
        kept = kept.filter(pa.array(mask, type=pa.bool_()))
        # backend batches are cut from consecutive rows: ordered by length, a batch pads its prompts little
        # (issue #11); part files are named by their documents, so resuming does not depend on this order.
        # With several prompts, documents of one prompt come together, so a batch shares its examples' prefix
        length = pc.utf8_length(kept.column(S.TEXT))
        if len(templates) == 1:
            return kept.take(pc.sort_indices(length))
        which = [template_index(d, config.seed, len(templates)) for d in kept.column(S.DOC_ID).to_pylist()]
        order = pa.table({"t": pa.array(which, type=pa.int64()), "n": length})
        return kept.take(pc.sort_indices(order, sort_keys=[("t", "ascending"), ("n", "ascending")]))

    # only the sampled documents, read before the actors start: actors holding every CPU (e.g. 2 actors x 1
    # CPU on 2 CPUs) left a streaming read no CPU to run on, and the stage waited forever
    todo = corpus.map_batches(keep_missing, fn_kwargs={"done_ids": done}, batch_format="pyarrow",
                              batch_size=None).materialize()
    if config.titles == "auto":  # probe the generator with titles; the run shows them, or not, as it answers
        with record.timed("titles_probe"):
            record.extra["titles"] = choose_titles(config, collection, todo, run_file, resources)
        templates = run_templates(config, collection, record.extra["titles"]["chosen"])
    batch_size = resources.batch_size
    if config.backend == "vllm":  # the engine batches continuously within a call: hand it large ones (issue #11)
        from inpars_ray.models.backends.vllm_backend import MIN_SUBMISSION

        batch_size = max(batch_size, MIN_SUBMISSION)
    todo = one_block_per_call(todo, batch_size)
    results = todo.map_batches(
        GenerateWorker, batch_size=None,
        fn_constructor_args=(config, templates, out / PARTS,
                             run_templates(config, collection, titles=False) if config.untitled_retry else ()),
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=resources.num_actors),
        num_gpus=resources.gpus_per_actor, num_cpus=resources.cpus_per_actor,
    )
    resumed = len(done)
    logger.info("generate: %d documents sampled (%d already done, %d to generate)", sampled, resumed, sampled - resumed)
    new_docs = new_errors = 0
    usage: dict[str, float] = {}
    with record.timed("generate"):
        workers, started, ready = set(), time.time(), None
        for row in results.iter_rows():
            workers.add(row["worker"])
            ready = max(ready or row["ready_at"], row["ready_at"])
            new_docs += row["docs"]
            new_errors += row["errors"]
            for key, value in json.loads(row["usage"]).items():
                usage[key] = usage.get(key, 0) + value
            logger.info("generate: %d/%d documents done (%d errors this run)", resumed + new_docs, sampled, new_errors)
            # the stage's line counts documents: Ray Data's rows here are blocks (one summary row per call)
            progress.count(new_docs, sampled - resumed, "documents")
    if ready is not None:
        # the part of `generate` spent starting the backends, until the last actor's was up (a vLLM engine
        # takes minutes): `generate` minus this is the generation itself
        record.timings["backend_start"] = round(max(0.0, ready - started), 3)
    final = read_generated(out)
    n_errors = final.num_rows - final.column(S.ERROR).null_count
    n_retry = pc.sum(needs_retry(final)).as_py() or 0
    untitled = sum(name.endswith(UNTITLED_SUFFIX) for name in final.column(S.PROMPT_NAME).to_pylist())
    record.counts.update(sampled=sampled, resumed=resumed, generated_this_run=new_docs, rows=final.num_rows,
                         queries=final.num_rows - n_errors, errors=n_errors, backend_errors=n_retry,
                         bad_corpus_rows=n_bad, **({"asked_untitled": untitled} if config.untitled_retry else {}))
    record.extra.update(prompt=templates[0].name, fewshot_query_ids=fewshot_ids, parts=PARTS,
                        actors_used=len(workers))
    if usage:  # tokens and cost of this run's API calls (never the key)
        record.extra["usage_this_run"] = {k: round(v, 6) for k, v in usage.items()}
    files = artifacts.snapshot(out, PARTS, FEWSHOT_FILE)
    if final.num_rows != sampled * config.queries_per_doc:
        record.write(out, status="incomplete", files=files)
        raise InparsError(f"generate: {out / PARTS} holds {final.num_rows} query rows, expected {sampled} documents "
                          f"x {config.queries_per_doc}")
    if n_retry:  # not complete: a rerun must retry these documents instead of skipping the stage
        logger.warning("generate: %d documents failed in the backend; rerun the same command to retry them", n_retry)
        return StageResult(STAGE, out, record.write(out, status="incomplete", files=files))
    answer_journal(out / PARTS, config, templates).clear()  # every answer is in a part now (on this node)
    return StageResult(STAGE, out, record.write(out, files=files))
