"""A real collection with human-written queries, built at run time from the Python standard library.

Every Python install ships the standard library's source, and its docstrings were written by people
(CPython's developers, under the PSF licence). A docstring's summary line is a short natural-language
statement of what a function, class or module does, and the rest of the docstring explains it: the
summary is the *query*, the rest is the *document* it should retrieve. Nothing is imported: the sources
are parsed with :mod:`ast`, so no module runs and the result depends only on the files.

Rules (the constants below; ``BUILDER_VERSION`` changes whenever they do):

* files: every ``*.py`` under the standard library folder, walked in sorted order, except tests, IDLE,
  lib2to3, demos, ``site-packages`` and the two joke modules (``this``, ``antigravity``);
* a docstring (module, class, function) is split at its first blank line into summary and body (without
  a blank line, at its first line break). Whitespace is collapsed to single spaces;
* document: the body, with at least ``MIN_DOC_WORDS`` words; its title is the qualified name
  (``json.JSONEncoder.encode``). Bodies identical after lower-casing are kept once (the first in
  sorted path order): inherited and copied docstrings would otherwise be indistinguishable duplicates;
* query: the summary, kept only when it has ``MIN_QUERY_WORDS``..``MAX_QUERY_WORDS`` words, does not
  look like a signature (``name(args)``), does not occur verbatim in its document (no leak), and no
  other kept document has the same summary (an ambiguous query is dropped, its document stays);
* splits: each query's split is fixed by a hash of its id: ``TEST_QUERIES`` test queries (the ones with
  the smallest hashes), then ``DEV_QUERIES`` dev, the rest train. One relevant document per query.

The same Python version gives the same files; ``manifest.json`` and ``PROVENANCE.md`` beside the
collection record the Python version, the folder read, the counts and the licence.
"""
from __future__ import annotations

import ast
import hashlib
import logging
import os
import platform
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inpars_ray.errors import CollectionError
from inpars_ray.io.beir_writer import split_counts, write_single_judged

logger = logging.getLogger(__name__)

SPEC = "builtin/python-docstrings"
BUILDER_VERSION = 1
MIN_DOC_WORDS = 12
MIN_QUERY_WORDS = 4
MAX_QUERY_WORDS = 32
TEST_QUERIES = 400
DEV_QUERIES = 100
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "ensurepip",
                       "site-packages", "__pycache__", "dist-packages"})
SKIP_FILES = frozenset({"this.py", "antigravity.py"})
_SIGNATURE = re.compile(r"^[\w.]+\s*\(.*\)\s*(->.*)?$")
_WORD = re.compile(r"[A-Za-z]{2,}")
# a sentence ends at . ! ? followed by a space and a capital letter (not "e.g. foo", not "os.path")
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z])")


def _squash(text: str) -> str:
    return " ".join(text.split())


def split_docstring(doc: str) -> tuple[str, str]:
    """(summary, body) of a cleaned docstring: the summary is the first sentence of its first paragraph
    (summaries often wrap over several lines), the body everything after it."""
    text = _squash(doc)
    end = _SENTENCE_END.search(_squash(doc.strip().partition("\n\n")[0]))
    if end is None:  # one sentence in the first paragraph: it is the summary
        head = _squash(doc.strip().partition("\n\n")[0])
    else:
        head = text[: end.start() + 1]
    return head.strip(), text[len(head):].strip()


def good_query(summary: str) -> bool:
    """A summary that reads as a query: enough words, not a signature line."""
    words = summary.split()
    if not MIN_QUERY_WORDS <= len(words) <= MAX_QUERY_WORDS:
        return False
    if _SIGNATURE.match(summary):
        return False
    return len(_WORD.findall(summary)) >= MIN_QUERY_WORDS - 1


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def stdlib_root() -> Path:
    """The folder of this interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def iter_docstrings(root: Path) -> Iterator[tuple[str, str, str]]:
    """(relative file, qualified name, cleaned docstring) for every docstring under ``root``, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if not name.endswith(".py") or name in SKIP_FILES:
                continue
            path = Path(dirpath) / name
            rel = str(rel_dir / name)
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            except (SyntaxError, UnicodeDecodeError, ValueError) as exc:  # e.g. a deliberately bad test file
                logger.warning("python-docstrings: skipping %s (%s)", rel, exc)
                continue
            module = ".".join(Path(rel).with_suffix("").parts)
            if module.endswith(".__init__"):
                module = module[: -len(".__init__")]
            yield from _walk(tree, module, rel)


def _walk(node: ast.AST, qualname: str, rel: str) -> Iterator[tuple[str, str, str]]:
    doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
    if doc:
        yield rel, qualname, doc
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _walk(child, f"{qualname}.{child.name}", rel)


def _hash(text: str) -> str:
    return hashlib.sha256(f"python-docstrings:{text}".encode()).hexdigest()


def collect(root: Path) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, int]]:
    """Documents and queries (``{"_id", "title", "text"}`` / ``{"_id", "text", "doc"}``) and the counts
    of every docstring's fate, so each one is accounted for."""
    counts = {"docstrings": 0, "short_body": 0, "duplicate_body": 0, "documents": 0, "bad_summary": 0,
              "leaked_summary": 0, "ambiguous_summary": 0, "queries": 0}
    docs: list[dict[str, str]] = []
    summaries: list[tuple[str, str]] = []  # (summary, doc id) candidates
    seen_bodies: set[str] = set()
    used_ids: dict[str, int] = {}
    for _rel, qualname, doc in iter_docstrings(root):
        counts["docstrings"] += 1
        summary, body = split_docstring(doc)
        if len(body.split()) < MIN_DOC_WORDS:
            counts["short_body"] += 1
            continue
        key = _norm(body)
        if key in seen_bodies:
            counts["duplicate_body"] += 1
            continue
        seen_bodies.add(key)
        n = used_ids.get(qualname, 0) + 1  # same name twice in a file (e.g. a property's getter and setter)
        used_ids[qualname] = n
        doc_id = qualname if n == 1 else f"{qualname}#{n}"
        docs.append({"_id": doc_id, "title": qualname, "text": body})
        if not good_query(summary):
            counts["bad_summary"] += 1
        elif _norm(summary) in key:
            counts["leaked_summary"] += 1
        else:
            summaries.append((summary, doc_id))
    counts["documents"] = len(docs)
    by_text: dict[str, int] = {}
    for summary, _ in summaries:
        by_text[_norm(summary)] = by_text.get(_norm(summary), 0) + 1
    queries = []
    for summary, doc_id in summaries:
        if by_text[_norm(summary)] > 1:
            counts["ambiguous_summary"] += 1
            continue
        queries.append({"_id": f"q-{doc_id}", "text": summary, "doc": doc_id})
    counts["queries"] = len(queries)
    return docs, queries, counts


def assign_splits(queries: list[dict[str, str]], test: int = TEST_QUERIES, dev: int = DEV_QUERIES) -> dict[str, str]:
    """Query id -> split, by the hash of the id (stable whatever else changes in the collection)."""
    order = sorted(queries, key=lambda q: _hash(q["_id"]))
    return {q["_id"]: ("test" if i < test else "dev" if i < test + dev else "train") for i, q in enumerate(order)}


def build(out_dir: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
          test_queries: int = TEST_QUERIES, dev_queries: int = DEV_QUERIES) -> dict[str, Any]:
    """Write the collection in BEIR layout into ``out_dir`` (created whole: temporary folder, then rename).

    Returns the manifest (also ``out_dir/manifest.json``).
    """
    src = Path(root) if root else stdlib_root()
    if not src.is_dir():
        raise CollectionError(f"python-docstrings: the standard library folder {src} does not exist")
    docs, queries, counts = collect(src)
    if len(queries) < test_queries + dev_queries + 1:
        raise CollectionError(f"python-docstrings: only {len(queries)} usable queries under {src}, "
                              f"fewer than the {test_queries} test + {dev_queries} dev asked for")
    splits = assign_splits(queries, test_queries, dev_queries)
    counted = split_counts(splits)
    manifest = {
        "spec": SPEC, "builder_version": BUILDER_VERSION, "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(), "stdlib_folder": str(src),
        "licence": "PSF-2.0 (Python Software Foundation License), the licence of the Python standard library",
        "counts": counts, "qrels": counted,
        "rules": {"min_doc_words": MIN_DOC_WORDS, "min_query_words": MIN_QUERY_WORDS,
                  "max_query_words": MAX_QUERY_WORDS, "skip_dirs": sorted(SKIP_DIRS), "skip_files": sorted(SKIP_FILES)},
    }
    write_single_judged(out_dir, docs, queries, splits, manifest, _provenance(manifest))
    logger.info("python-docstrings: %d documents, %d queries (%s) in %s", counts["documents"], counts["queries"],
                counted, out_dir)
    return manifest


def _provenance(m: dict[str, Any]) -> str:
    c = m["counts"]
    return (
        "# python-docstrings: provenance\n\n"
        f"Built by inpars-ray (`inpars_ray/io/stdlib_docs.py`, builder version {m['builder_version']}) from the docstrings "
        f"of the Python {m['python_version']} ({m['python_implementation']}) standard library sources in "
        f"`{m['stdlib_folder']}`, parsed with `ast` (no module imported).\n\n"
        f"Licence: {m['licence']}. The texts were written by the CPython developers; the queries are the docstrings' "
        "own summary lines (human-written), the documents the rest of each docstring, titled by qualified name.\n\n"
        f"Counts: {c['docstrings']} docstrings; {c['short_body']} with a body under {m['rules']['min_doc_words']} words "
        f"and {c['duplicate_body']} duplicate bodies left out; {c['documents']} documents. Of their summaries, "
        f"{c['bad_summary']} are not usable as queries (length, signature lines), {c['leaked_summary']} occur verbatim "
        f"in their document and {c['ambiguous_summary']} are shared by several documents: {c['queries']} queries, "
        f"split {m['qrels']} by a hash of the query id. One relevant document per query (relevance 1).\n"
    )


def cache_folder(cache_dir: str | os.PathLike[str]) -> Path:
    """Where the collection of this interpreter lives in the cache (one per Python version and builder)."""
    return Path(cache_dir) / f"python-docstrings-py{platform.python_version()}-v{BUILDER_VERSION}"


def ensure(cache_dir: str | os.PathLike[str]) -> Path:
    """The collection's folder in ``cache_dir``, built on first use."""
    folder = cache_folder(cache_dir)
    if not (folder / "manifest.json").exists():
        build(folder)
    return folder
