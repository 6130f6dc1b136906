"""The InPars team's published synthetic data (``inpars/generated-data`` on the Hub): write it, read it back.

The layout (the InPars toolkit, github.com/zetaalphavector/InPars: its ``generate.py``, ``filter.py`` and
``generate_triples.py``): one folder per collection holding

* ``queries.jsonl``: one generated query per line, ``{"doc_id", "query", "log_probs", "prompt_text",
  "fewshot_examples"}`` (``log_probs``: the generated tokens' log-probabilities; ``fewshot_examples``: the
  ids of the collection's queries shown as examples, which evaluation must leave out);
* ``queries_filtered_<v>.jsonl``: the kept queries, the same fields plus ``score``, best first;
* ``triples_train_<v>.tsv``: ``query<TAB>positive text<TAB>negative text``, no header.

``<v>`` names the filter: ``v1`` (the generator's log-probs), ``v2`` (a reranker's score, the published
files' name) or ``consistency`` (InPars-light).

:func:`write_generated_data` exports a run's generate, filter and mine (or teacher) outputs in that layout;
:func:`import_generated` reads a ``queries.jsonl`` (a folder, a file, or ``hf://datasets/<owner>/<name>/<dir>``)
into a generate-stage output, so the filter and everything after it run on published data instead of
generating. Rows whose document is not in the collection are listed in ``rejected.parquet`` and counted.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, DownloadError, FormatError, InparsError
from inpars_ray.io import artifacts, storage
from inpars_ray.io.catalog import Collection
from inpars_ray.io.load import LoadConfig, id_hashes, iter_lines, parse_corpus_lines
from inpars_ray.io.manifest import StageRecord, collection_key
from inpars_ray.io.stage import StageResult, StageSpec, run_once

logger = logging.getLogger(__name__)

QUERIES_FILE = "queries.jsonl"
#: the filter strategy -> the version tag of the filtered-queries and triples files
FILTER_TAGS = {"scores": "v1", "reranker": "v2", "consistency": "consistency"}
#: the folder of a run that holds published data imported in place of the generate stage
IMPORT_FOLDER = "synthetic-data"
#: what the GENERATED rows of imported data record as their prompt and backend
PUBLISHED = "published-data"
#: the query id of a document's query, as the generate stage names it (``gen-<doc_id>``); a document with
#: several published queries numbers the later ones (``gen-<doc_id>-2``)
QUERY_ID_PREFIX = "gen-"
PARTS = "parts"
REJECTED = "rejected.parquet"
REJECTED_SCHEMA = pa.schema([pa.field("line", pa.int64()), pa.field(S.DOC_ID, pa.string()),
                             pa.field(S.QUERY, pa.string()), pa.field("reason", pa.string())])
UNKNOWN_DOCUMENT = "unknown_document"
#: rows per Parquet part written by the import
ROWS_PER_PART = 10_000
_CHUNK_LINES = 10_000


def filtered_name(tag: str) -> str:
    return f"queries_filtered_{tag}.jsonl"


def triples_name(tag: str) -> str:
    return f"triples_train_{tag}.tsv"


# --- the corpus, streamed -------------------------------------------------------------------------------
def corpus_chunks(collection: Collection, load_config: LoadConfig = LoadConfig()) -> Iterator[pa.Table]:
    """The corpus as :data:`schema.CORPUS` tables of ``_CHUNK_LINES`` lines, one at a time (bounded memory).
    Bad rows are left out: the index stage has already stopped on them or listed them."""
    chunk: list[bytes] = []
    first = 1
    shown = collection.display("corpus.jsonl")
    for line in iter_lines(collection, collection.corpus_path()):
        chunk.append(line)
        if len(chunk) == _CHUNK_LINES:
            yield parse_corpus_lines(chunk, shown, first, load_config)[0]
            first += len(chunk)
            chunk = []
    if chunk:
        yield parse_corpus_lines(chunk, shown, first, load_config)[0]


def document_texts(collection: Collection, wanted: set[str], load_config: LoadConfig = LoadConfig(),
                   ) -> dict[str, tuple[str, str]]:
    """(title, text) of each document in ``wanted`` that the corpus holds, in one streamed pass."""
    found: dict[str, tuple[str, str]] = {}
    for table in corpus_chunks(collection, load_config):
        for did, title, text in zip(*(table.column(c).to_pylist() for c in (S.DOC_ID, S.TITLE, S.TEXT))):
            if did in wanted:
                found[did] = (title, text)
        if len(found) == len(wanted):
            break
    return found


def corpus_id_hashes(collection: Collection, load_config: LoadConfig = LoadConfig()) -> np.ndarray:
    """Sorted 64-bit hashes of every document id (8 bytes a document, never the texts)."""
    parts = [id_hashes(t.column(S.DOC_ID)) for t in corpus_chunks(collection, load_config)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def _holds(sorted_hashes: np.ndarray, doc_id: str) -> bool:
    h = id_hashes([doc_id])[0]
    at = int(np.searchsorted(sorted_hashes, h))
    return at < len(sorted_hashes) and sorted_hashes[at] == h


def prompt_builder(generate_manifest: dict[str, Any], collection: Collection, doc_ids: set[str],
                   load_config: LoadConfig = LoadConfig()) -> Any:
    """A function ``doc_id -> prompt text`` giving the prompts the generate stage of ``generate_manifest`` built.

    The generate artifact keeps only the prompt's name and few-shot ids, so the prompts are built again with
    the engine's own functions: :func:`~inpars_ray.models.prompts.resolve_templates` from the stage's config (each
    document given the prompt :func:`~inpars_ray.models.prompts.template_index` names),
    checked against the template fingerprint the stage recorded (a changed examples file or prompt file
    would give other prompts: an error, not a wrong export), and a :class:`~inpars_ray.models.prompts.
    PromptBuilder` cutting documents with the generator's own tokenizer (the backend is loaded here, once).
    """
    from inpars_ray.models.backends import make_backend
    from inpars_ray.models.prompts import (
        UNTITLED_SUFFIX,
        PromptBuilder,
        resolve_templates,
        template_index,
        templates_fingerprint,
    )

    cfg = generate_manifest["config"]["config"]
    titles = cfg.get("titles", True)
    if titles == "auto":  # what the stage's probe chose (its key pins the prompts with titles)
        titles = generate_manifest.get("extra", {}).get("titles", {}).get("chosen", True)

    def resolve(shown: bool) -> tuple[Any, ...]:
        return resolve_templates(cfg["prompt"], collection, cfg["seed"], cfg["num_fewshot"], cfg["fewshot_split"],
                                 cfg.get("fewshot_sets", 1), shown)

    templates = resolve(cfg.get("titles", True) is not False)
    if templates_fingerprint(templates) != generate_manifest["config"].get("template"):
        raise ConfigError(f"the prompt {cfg['prompt']!r} built now differs from the one the run generated with "
                          "(its examples or template file changed since); export without prompt texts instead")
    model = cfg["model"]
    if "://" in model and cfg["backend"] != "openai":  # published under a gs:// run root: a local copy
        model = str(artifacts.materialize(model))
    backend = make_backend(cfg["backend"], model, **dict(cfg["backend_options"]))
    limit = int(cfg["doc_max_tokens"])

    def builders_of(shown: tuple[Any, ...]) -> list[Any]:
        return [PromptBuilder(t, lambda text: backend.truncate(text, limit)) for t in shown]

    untitled = builders_of(resolve(False)) if cfg.get("untitled_retry") or not titles else []
    builders = builders_of(templates) if titles else untitled
    texts = document_texts(collection, doc_ids, load_config)

    def prompt_of(doc_id: str, prompt_name: str = "") -> str | None:
        """``doc_id``'s prompt; a row whose ``prompt_name`` ends in ``UNTITLED_SUFFIX`` was asked without titles."""
        if doc_id not in texts:
            return None
        chosen = untitled if prompt_name.endswith(UNTITLED_SUFFIX) else builders
        return chosen[template_index(doc_id, cfg["seed"], len(chosen))].build(*texts[doc_id])

    return prompt_of


# --- writing the layout ---------------------------------------------------------------------------------
def published_row(doc_id: str, query: str | None, log_probs: list[float] | None, prompt_text: str | None,
                  fewshot_ids: list[str] | None, error: str | None = None) -> dict[str, Any]:
    """One line of ``queries.jsonl``. A document the generator failed on keeps its line (an empty query and
    the engine's reason under ``error``), so the file accounts for every sampled document."""
    row: dict[str, Any] = {"doc_id": doc_id, "query": query or "", "log_probs": list(log_probs or []),
                           "prompt_text": prompt_text, "fewshot_examples": list(fewshot_ids or [])}
    if error:
        row["error"] = error
    return row


def _one_row_per_query(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of generate parts, one per query id: a document retried after a backend error has two rows in
    two parts, and its final one (without error, when there is one) is kept; sorted by query id."""
    best: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        old = best.get(row[S.QUERY_ID])
        if old is None or old[S.ERROR] is not None:
            best[row[S.QUERY_ID]] = row
    return [best[k] for k in sorted(best)]


def _tsv_field(text: str) -> str:
    return " ".join((text or "").split())  # tabs and newlines would break the line format


def write_generated_data(generated: pa.Table, kept: pa.Table, triples: pa.Table, dest: str | os.PathLike[str],
                         filter_tag: str, prompt_of: Any = None) -> dict[str, int]:
    """Write ``dest/queries.jsonl``, ``dest/queries_filtered_<filter_tag>.jsonl`` and
    ``dest/triples_train_<filter_tag>.tsv`` from a run's GENERATED rows, kept (FILTERED) rows and TRIPLES.

    ``prompt_of(doc_id, prompt_name)`` gives a row's prompt text (``None``: written as null). Returns the counts.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rows = _one_row_per_query(generated)
    prompts: dict[str, str | None] = {}
    with (dest / QUERIES_FILE).open("w", encoding="utf-8") as out:
        for row in rows:
            prompt = prompt_of(row[S.DOC_ID], row[S.PROMPT_NAME] or "") if prompt_of is not None else None
            prompts[row[S.QUERY_ID]] = prompt
            out.write(json.dumps(published_row(row[S.DOC_ID], row[S.QUERY], row[S.TOKEN_LOGPROBS], prompt,
                                               row[S.FEWSHOT_IDS], row[S.ERROR]), ensure_ascii=False) + "\n")
    kept_rows = sorted(kept.to_pylist(), key=lambda r: (-r[S.FILTER_SCORE], r[S.QUERY_ID]))
    with (dest / filtered_name(filter_tag)).open("w", encoding="utf-8") as out:
        for row in kept_rows:
            line = published_row(row[S.DOC_ID], row[S.QUERY], row[S.TOKEN_LOGPROBS], prompts.get(row[S.QUERY_ID]),
                                 row[S.FEWSHOT_IDS])
            out.write(json.dumps({**line, "score": row[S.FILTER_SCORE]}, ensure_ascii=False) + "\n")
    with (dest / triples_name(filter_tag)).open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        cols = [triples.column(c).to_pylist() for c in (S.QUERY, S.POS_TEXT, S.NEG_TEXT)]
        for query, pos, neg in zip(*cols):
            writer.writerow([_tsv_field(query), _tsv_field(pos), _tsv_field(neg)])
    errors = sum(r[S.ERROR] is not None for r in rows)
    return {"queries": len(rows) - errors, "generation_errors": errors, "kept": len(kept_rows),
            "triples": triples.num_rows}


# --- reading the layout ---------------------------------------------------------------------------------
def resolve_source(source: str) -> Path:
    """The local ``queries.jsonl`` of ``source``: a folder in the layout, the file itself, or
    ``hf://datasets/<owner>/<name>/<folder>`` (downloaded through huggingface_hub into its cache)."""
    if source.startswith("hf://"):
        return _download(source)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / QUERIES_FILE
    if not path.is_file():
        raise ConfigError(f"synthetic data {source!r}: no {QUERIES_FILE} there (a folder in the layout of "
                          "inpars/generated-data, the file itself, or hf://datasets/<owner>/<name>/<folder>)")
    return path.resolve()


def _download(source: str) -> Path:
    parts = source[len("hf://"):].strip("/").split("/")
    if len(parts) < 3 or parts[0] != "datasets":
        raise ConfigError(f"{source!r}: expected hf://datasets/<owner>/<name>/<folder>[/{QUERIES_FILE}]")
    repo_id, inner = "/".join(parts[1:3]), "/".join(parts[3:])
    revision = None
    if "@" in repo_id:
        repo_id, revision = repo_id.split("@", 1)
    filename = inner if inner.endswith(".jsonl") else "/".join(p for p in (inner, QUERIES_FILE) if p)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise DownloadError(f"{source}: reading hf:// needs the huggingface_hub package ({exc})") from exc
    try:  # HF_ENDPOINT is read here, not at huggingface_hub's import, so a mirror set later is used
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision,
                                    endpoint=os.environ.get("HF_ENDPOINT")))
    except Exception as exc:  # noqa: BLE001 - offline mode, no network, 404, auth: all one message for users
        raise DownloadError(f"{source}: could not fetch {filename} of the dataset {repo_id} from the Hub "
                            f"({type(exc).__name__}: {exc}); with no Hub reachable (or HF_HUB_OFFLINE set), "
                            "download that folder elsewhere and give its local path") from None


def _published_lines(path: Path, load_config: LoadConfig) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(1-based line, object or None, why not) for every non-blank line of a ``queries.jsonl``."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                obj, why = None, f"not a JSON object ({exc})"
            else:
                why = "" if isinstance(obj, dict) else "not a JSON object"
                if why == "" and not isinstance(obj.get("doc_id"), (str, int)):
                    why = "no 'doc_id'"
            if why and not load_config.skip_bad_rows:
                raise FormatError(str(path), number, why + " (pass --skip-bad-rows to skip bad rows)")
            yield number, (obj if not why else None), why


def generated_row(obj: dict[str, Any], query_id: str, source: str) -> dict[str, Any]:
    """A :data:`schema.GENERATED` row from one published line (v1's files name the query ``question``)."""
    query = obj.get("query", obj.get("question"))
    logprobs = obj.get("log_probs")
    logprobs = [float(x) for x in logprobs] if isinstance(logprobs, list) else None
    finite = [x for x in logprobs or [] if math.isfinite(x)]
    return {S.DOC_ID: str(obj["doc_id"]), S.QUERY_ID: query_id, S.QUERY: query if isinstance(query, str) else "",
            S.TOKEN_LOGPROBS: logprobs, S.MEAN_LOGPROB: float(np.mean(finite)) if finite else None,
            S.NUM_TOKENS: len(logprobs) if logprobs is not None else None, S.PROMPT_NAME: PUBLISHED,
            S.MODEL: source, S.BACKEND: PUBLISHED,
            S.FEWSHOT_IDS: [str(x) for x in obj.get("fewshot_examples") or []], S.ERROR: obj.get("error") or None}


def import_generated(source: str, collection: Collection, out_dir: storage.PathLike,
                     load_config: LoadConfig = LoadConfig()) -> StageResult:
    """Published synthetic queries as a generate-stage output in ``out_dir`` (``parts/``, ``fewshot.json``,
    ``rejected.parquet``, then the manifest, stage ``generate``), which the filter reads as it reads generated
    queries. A rerun with the same file and collection does nothing.

    Every line is accounted for: ``rows`` = ``imported`` + ``unknown_document`` (+ ``bad_rows`` with
    ``skip_bad_rows``); each rejected row is listed (line, doc_id, query, reason) in ``rejected.parquet``.
    """
    import pyarrow.parquet as pq

    out = storage.location(out_dir)
    path = resolve_source(source)
    info = path.stat()
    pinned = {"source": source, "file": {"name": path.name, "size": info.st_size, "mtime_ns": info.st_mtime_ns},
              "collection": collection_key(collection), "load": load_config}

    def body(record: StageRecord) -> None:
        with record.timed("corpus_ids"):
            known = corpus_id_hashes(collection, load_config)
        counts = {"rows": 0, "imported": 0, UNKNOWN_DOCUMENT: 0, "bad_rows": 0}
        rejected: list[dict[str, Any]] = []
        fewshot: set[str] = set()
        seen: dict[str, int] = {}
        batch: list[dict[str, Any]] = []
        part = 0

        def flush() -> None:
            nonlocal part, batch
            if batch:
                with (out / PARTS / f"part-{part:05d}.parquet").open_output() as fh:
                    pq.write_table(pa.Table.from_pylist(batch, schema=S.GENERATED), fh, **artifacts.PARQUET_WRITE)
                part, batch = part + 1, []

        with record.timed("import"):
            for number, obj, why in _published_lines(path, load_config):
                counts["rows"] += 1
                if obj is None:
                    counts["bad_rows"] += 1
                    rejected.append({"line": number, S.DOC_ID: None, S.QUERY: None, "reason": why})
                    continue
                doc_id = str(obj["doc_id"])
                if not _holds(known, doc_id):
                    counts[UNKNOWN_DOCUMENT] += 1
                    query = obj.get("query", obj.get("question"))
                    rejected.append({"line": number, S.DOC_ID: doc_id, S.QUERY: query if isinstance(query, str) else None,
                                     "reason": UNKNOWN_DOCUMENT})
                    continue
                seen[doc_id] = seen.get(doc_id, 0) + 1
                query_id = QUERY_ID_PREFIX + doc_id + (f"-{seen[doc_id]}" if seen[doc_id] > 1 else "")
                row = generated_row(obj, query_id, source)
                fewshot.update(row[S.FEWSHOT_IDS])
                batch.append(row)
                counts["imported"] += 1
                if len(batch) == ROWS_PER_PART:
                    flush()
            flush()
        if counts["imported"] == 0:
            raise InparsError(f"synthetic data {source}: none of its {counts['rows']} rows names a document of "
                              f"{collection.spec} (is it the data of another collection?)")
        if counts[UNKNOWN_DOCUMENT]:
            logger.warning("synthetic data: %d of %d rows name documents absent from %s; listed in %s",
                           counts[UNKNOWN_DOCUMENT], counts["rows"], collection.spec, (out / REJECTED).uri)
        with (out / REJECTED).open_output() as fh:
            pq.write_table(pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), fh, **artifacts.PARQUET_WRITE)
        (out / "fewshot.json").write_json({"prompt": PUBLISHED, "fewshot_query_ids": sorted(fewshot)})
        record.counts.update(counts)
        record.extra.update(source={"data": source, "file": str(path)}, prompt=PUBLISHED,
                            fewshot_query_ids=sorted(fewshot), parts=PARTS)

    return run_once(StageSpec("generate", out, pinned, outputs=(PARTS, "fewshot.json", REJECTED)), body)

