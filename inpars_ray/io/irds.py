"""ir_datasets ids as collections: ``irds:<id>``, e.g. ``irds:beir/scifact/test``.

The documents come from the id that provides them (``beir/scifact`` for ``beir/scifact/test``: ir_datasets'
``docs_parent_id``, or the nearest id above that has documents), the queries and judgements from the id
itself. The stages read collection files (Lucene indexes files; Ray Data reads ``corpus.jsonl`` in blocks),
so the id is materialised once, on the driver, into the engine's own BEIR layout
(:mod:`inpars_ray.io.beir_writer`) under the catalog's cache folder:
``<cache>/irds/<id, '/' as '__'>-irds<version>-v<WRITER_VERSION>/``. Any download and ir_datasets' own
document-store build happen there, in one process, so workers never race on them. Documents are streamed
from ``docs_iter()`` to the file one at a time (memory does not grow with the corpus); the folder appears
under its name only when complete, with a ``manifest.json`` recording the resolved ids, the document
fields used and the ir_datasets version. A rerun reuses it without touching ir_datasets' data.

The qrels are written as ``qrels/<split>.tsv``, the split named after what the id adds below its
documents' id (``beir/scifact/test`` -> ``test``, ``msmarco-passage/dev/small`` -> ``dev-small``), or
``test`` when the id is its own documents' id (``beir/arguana``).

ir_datasets is the optional extra ``irds``, imported only when an ``irds:`` spec is resolved.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from inpars_ray.errors import CollectionError, DatasetUnavailableError, InparsError, MissingDependencyError
from inpars_ray.io.beir_writer import MANIFEST, BeirWriter

logger = logging.getLogger(__name__)

SCHEME = "irds:"
#: bump when the files written for the same id would differ (the cache folder's name carries it)
WRITER_VERSION = 1
#: log a line every this many documents written
LOG_EVERY = 100_000


def is_irds(spec: str) -> bool:
    return spec.startswith(SCHEME)


def dataset_id(spec: str) -> str:
    """The ir_datasets id of an ``irds:<id>`` spec."""
    ident = spec[len(SCHEME):].strip().strip("/") if is_irds(spec) else ""
    if not ident:
        raise CollectionError(f"dataset spec {spec!r} names no ir_datasets id (expected irds:<id>, "
                              "e.g. irds:beir/scifact/test)")
    return ident


def _ir_datasets() -> ModuleType:
    try:
        return importlib.import_module("ir_datasets")
    except ImportError as exc:
        raise MissingDependencyError("ir_datasets", "irds", "an irds:<id> dataset spec") from exc


# --- what a record becomes: pure functions over ir_datasets' NamedTuples -------------------------------------
@dataclasses.dataclass(frozen=True)
class TextMapping:
    """Where a record type's title and text come from.

    Attributes:
        title: the field holding the title, or None (no title).
        text: a field name, ``default_text()`` (the type's own rendering, which includes any title, so
            ``title`` is then None), or ``fields`` (every other string field, one per line).
    """

    title: str | None
    text: str


def doc_mapping(doc_cls: type) -> TextMapping:
    """How documents of ``doc_cls`` map to a title and a text: ``text`` or else ``body`` with any ``title``
    (BeirTitleDoc: title + text; GenericDoc: text; MsMarcoDocument: title + body); else ``default_text()``."""
    fields = tuple(getattr(doc_cls, "_fields", ()))
    title = "title" if "title" in fields else None
    for name in ("text", "body"):
        if name in fields:
            return TextMapping(title, name)
    if callable(getattr(doc_cls, "default_text", None)):
        return TextMapping(None, "default_text()")
    return TextMapping(title, "fields")


def query_mapping(query_cls: type) -> TextMapping:
    """How queries of ``query_cls`` map to a text: ``default_text()`` (the dataset's own choice: a TREC
    topic's title, a BEIR query's text), else ``text``, ``title`` or ``query``."""
    if callable(getattr(query_cls, "default_text", None)):
        return TextMapping(None, "default_text()")
    fields = tuple(getattr(query_cls, "_fields", ()))
    return TextMapping(None, next((f for f in ("text", "title", "query") if f in fields), "fields"))


def _text(record: Any, mapping: TextMapping, id_field: str) -> str:
    if mapping.text == "default_text()":
        value = record.default_text()
    elif mapping.text == "fields":
        skip = {id_field, mapping.title}
        value = "\n".join(v for f, v in zip(record._fields, record) if f not in skip and isinstance(v, str) and v)
    else:
        value = getattr(record, mapping.text)
    return "" if value is None else str(value)


def doc_row(doc: Any, mapping: TextMapping) -> dict[str, str]:
    """A corpus row (``_id``, ``title``, ``text``) of an ir_datasets document."""
    title = getattr(doc, mapping.title) if mapping.title else ""
    return {"_id": str(doc.doc_id), "title": "" if title is None else str(title), "text": _text(doc, mapping, "doc_id")}


def query_row(query: Any, mapping: TextMapping) -> dict[str, str]:
    """A queries row (``_id``, ``text``) of an ir_datasets query."""
    return {"_id": str(query.query_id), "text": _text(query, mapping, "query_id")}


def first_judgements(qrels: Iterable[Any], dropped: list[int]) -> Iterator[tuple[str, str, int]]:
    """(query, document, relevance) of each pair's first judgement; later ones (some qrels repeat a pair
    across assessment rounds, which the loader rejects) are counted in ``dropped[0]``."""
    seen: set[tuple[str, str]] = set()
    for q in qrels:
        pair = (str(q.query_id), str(q.doc_id))
        if pair in seen:
            dropped[0] += 1
            continue
        seen.add(pair)
        yield pair[0], pair[1], int(q.relevance)


def split_name(ident: str, docs_id: str) -> str:
    """The qrels split of ``ident``: what it adds below ``docs_id`` ('/' as '-'), or ``test``."""
    if ident.startswith(docs_id + "/"):
        return ident[len(docs_id) + 1:].replace("/", "-")
    return "test"


def cache_folder(cache_dir: str | os.PathLike[str], ident: str, version: str) -> Path:
    """Where ``ident`` is materialised: one folder per id, ir_datasets version and writer version."""
    return Path(cache_dir) / "irds" / f"{ident.replace('/', '__')}-irds{version}-v{WRITER_VERSION}"


# --- ir_datasets itself ---------------------------------------------------------------------------------------
def _load(irds: ModuleType, ident: str) -> Any:
    try:
        return irds.load(ident)
    except KeyError:
        raise CollectionError(f"unknown ir_datasets id {ident!r} (ir_datasets {irds.__version__}; the ids are "
                              "listed at https://ir-datasets.com)") from None


def docs_id(irds: ModuleType, ident: str) -> str:
    """The id that provides ``ident``'s documents: ir_datasets' ``docs_parent_id`` when ``ident`` has
    documents, else the nearest id above it (by '/') that has them."""
    if _load(irds, ident).has_docs():
        return irds.docs_parent_id(ident)
    parts = ident.split("/")
    while len(parts) > 1:
        parts.pop()
        try:
            parent = irds.load("/".join(parts))
        except KeyError:
            continue
        if parent.has_docs():
            return "/".join(parts)
    raise CollectionError(f"ir_datasets id {ident!r} has no documents, nor has any id above it")


def _guarded(records: Callable[[], Iterable[Any]], ident: str, what: str, irds: ModuleType) -> Iterator[Any]:
    """The records ``records()`` gives, as they come; a failure of ir_datasets' own (a download that cannot
    happen offline, a missing or damaged archive) becomes a :class:`DatasetUnavailableError` naming the id."""
    try:
        yield from records()
    except InparsError:
        raise
    except Exception as exc:  # noqa: BLE001 - ir_datasets raises anything from requests, zipfile, OSError...
        raise DatasetUnavailableError(ident, str(irds.util.home_path()),
                                      f"reading its {what}: {type(exc).__name__}: {exc}") from exc


def _logged(rows: Iterable[dict[str, str]], ident: str) -> Iterator[dict[str, str]]:
    for n, row in enumerate(rows, 1):
        if n % LOG_EVERY == 0:
            logger.info("irds:%s: %d documents written", ident, n)
        yield row


def materialise(ident: str, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``ident`` in BEIR layout into ``out`` (created whole); returns its manifest."""
    irds = _ir_datasets()
    dataset = _load(irds, ident)
    source = docs_id(irds, ident)
    docs = _load(irds, source)
    split = split_name(ident, source)
    dmap = doc_mapping(docs.docs_cls())
    qmap = query_mapping(dataset.queries_cls()) if dataset.has_queries() else None
    t0 = time.perf_counter()
    dropped = [0]
    docs_rows = (doc_row(d, dmap) for d in _guarded(docs.docs_iter, ident, f"documents (from {source})", irds))
    query_rows = (query_row(q, qmap) for q in _guarded(dataset.queries_iter, ident, "queries", irds)) if qmap else ()
    with BeirWriter(out, replace=False) as writer:
        n_docs = writer.corpus(_logged(docs_rows, ident))
        n_queries = writer.queries(query_rows)
        n_qrels = writer.qrels(split, first_judgements(_guarded(dataset.qrels_iter, ident, "qrels", irds), dropped)) \
            if dataset.has_qrels() else None
        manifest = {
            "spec": f"{SCHEME}{ident}", "builder": __name__, "writer_version": WRITER_VERSION,
            "ir_datasets_version": irds.__version__, "ir_datasets_home": str(irds.util.home_path()),
            "ids": {"dataset": ident, "docs": source, "queries": ident if qmap else None,
                    "qrels": ident if n_qrels is not None else None},
            "split": split if n_qrels is not None else None,
            "doc_type": docs.docs_cls().__name__, "doc_fields": dataclasses.asdict(dmap),
            "query_type": dataset.queries_cls().__name__ if qmap else None,
            "query_fields": dataclasses.asdict(qmap) if qmap else None,
            "counts": {"documents": n_docs, "queries": n_queries, "qrels": n_qrels or 0,
                       "duplicate_judgements_dropped": dropped[0]},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        writer.finish(manifest)
    logger.info("irds:%s: %d documents, %d queries, %s judgements (split %s) in %s", ident, n_docs, n_queries,
                n_qrels, manifest["split"], out)
    return manifest


def ensure(spec: str, cache_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The folder of ``irds:<id>`` in ``cache_dir`` and its manifest, materialised on first use."""
    ident = dataset_id(spec)
    folder = cache_folder(cache_dir, ident, _ir_datasets().__version__)
    manifest_path = folder / MANIFEST
    if manifest_path.exists():  # the folder is renamed into place complete: its manifest marks it
        return folder, json.loads(manifest_path.read_text(encoding="utf-8"))
    logger.info("irds:%s: materialising into %s (once; later runs reuse it)", ident, folder)
    materialise(ident, folder)
    return folder, json.loads(manifest_path.read_text(encoding="utf-8"))


def provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a run records about an ``irds:`` collection (the resolved ids, split, version, counts)."""
    keys = ("spec", "ids", "split", "ir_datasets_version", "writer_version", "doc_type", "doc_fields", "counts")
    return {k: manifest[k] for k in keys if k in manifest}
