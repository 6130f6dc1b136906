"""Write a collection in BEIR layout, whole or not at all: the one writer of every collection inpars-ray builds.

The builders (``builtin/python-docstrings``, ``builtin/man-pages``, ``irds:<id>``) each decide what the
documents, queries and judgements are; this module writes them as the loader (:mod:`inpars_ray.io.load`)
reads them: ``corpus.jsonl`` and ``queries.jsonl`` (one JSON object a line), ``qrels/<split>.tsv`` (a
``query-id corpus-id score`` header, then one judgement a line) and ``manifest.json``, the builder's record.

Everything goes into a temporary folder beside the final one, streamed row by row (a writer never holds a
file's rows), and the folder is renamed into place only once the manifest, written last, is there: a
crash leaves no folder under the final name, so a folder that exists is complete.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from inpars_ray.errors import CollectionError

logger = logging.getLogger(__name__)

QRELS_HEADER = "query-id\tcorpus-id\tscore"
MANIFEST = "manifest.json"
PROVENANCE = "PROVENANCE.md"


class BeirWriter:
    """Writes one BEIR-layout folder; use as a context manager and call :meth:`finish` last.

    Args:
        out: the collection's final folder.
        replace: what to do when ``out`` already exists at commit time. True: it is replaced (a rebuild);
            False: a complete one (with its manifest) is kept and this build is dropped, as when two
            processes built the same collection at once.
    """

    def __init__(self, out: str | os.PathLike[str], replace: bool = True) -> None:
        self.out = Path(out)
        self.replace = replace
        self.staging: Path | None = None
        self._finished = False

    def __enter__(self) -> BeirWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        (self.staging / "qrels").mkdir()
        return self

    def _path(self, *parts: str) -> Path:
        if self.staging is None:
            raise CollectionError(f"the writer of {self.out} is used outside its 'with' block")
        return self.staging.joinpath(*parts)

    def _lines(self, name: str, lines: Iterable[str]) -> int:
        count = 0
        with self._path(name).open("w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")
                count += 1
        return count

    def corpus(self, docs: Iterable[Mapping[str, Any]]) -> int:
        """Write ``corpus.jsonl`` from documents (``_id``, ``title``, ``text``, ...); returns how many."""
        return self._lines("corpus.jsonl", (json.dumps(dict(d), ensure_ascii=False) for d in docs))

    def queries(self, queries: Iterable[Mapping[str, Any]]) -> int:
        """Write ``queries.jsonl`` from queries (``_id``, ``text``); returns how many."""
        return self._lines("queries.jsonl", (json.dumps(dict(q), ensure_ascii=False) for q in queries))

    def qrels(self, split: str, judgements: Iterable[tuple[str, str, int]]) -> int:
        """Write ``qrels/<split>.tsv`` from (query id, document id, relevance) triples; returns how many."""
        if not split or "/" in split or split.startswith("."):
            raise CollectionError(f"qrels split name {split!r} cannot name a file")
        rows = (f"{qid}\t{did}\t{int(rel)}" for qid, did, rel in judgements)
        return self._lines(os.path.join("qrels", f"{split}.tsv"), _after(QRELS_HEADER, rows)) - 1

    def finish(self, manifest: Mapping[str, Any], provenance: str | None = None) -> None:
        """Write the builder's manifest (and a PROVENANCE.md): the last files of the collection."""
        if provenance is not None:
            self._path(PROVENANCE).write_text(provenance, encoding="utf-8")
        self._path(MANIFEST).write_text(json.dumps(dict(manifest), indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
        self._finished = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        staging, self.staging = self.staging, None
        try:
            if exc_type is None:
                if not self._finished:
                    raise CollectionError(f"the build of {self.out} ended without its manifest: nothing was kept")
                if staging is None:
                    raise CollectionError(f"the build of {self.out} was never started (use it in a with block)")
                self._commit(staging)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, staging: Path) -> None:
        if self.out.exists():
            if not self.replace and (self.out / MANIFEST).exists():
                logger.info("%s was completed meanwhile by another build; keeping that one", self.out)
                return
            shutil.rmtree(self.out)
        try:
            os.replace(staging, self.out)
        except OSError:  # another build renamed its folder into place between the check and the rename
            if self.replace or not (self.out / MANIFEST).exists():
                raise
            logger.info("%s was completed meanwhile by another build; keeping that one", self.out)


def _after(first: str, rest: Iterable[str]) -> Iterable[str]:
    yield first
    yield from rest


#: the splits of a collection built here, each query in exactly one
SPLITS = ("train", "dev", "test")


def split_counts(splits: Mapping[str, str]) -> dict[str, int]:
    """Queries per split, from query id -> split."""
    return {split: sum(s == split for s in splits.values()) for split in SPLITS}


def write_single_judged(out_dir: str | os.PathLike[str], docs: Iterable[Mapping[str, Any]],
                        queries: Sequence[Mapping[str, Any]], splits: Mapping[str, str], manifest: Mapping[str, Any],
                        provenance: str) -> None:
    """A built collection whose every query (``_id``, ``text``) has one relevant document, its ``doc``, judged
    in the split ``splits`` gives it (the built-in collections, whose queries come from their own documents)."""
    with BeirWriter(out_dir) as writer:
        writer.corpus(docs)
        writer.queries({"_id": q["_id"], "text": q["text"]} for q in queries)
        for split in SPLITS:
            writer.qrels(split, ((q["_id"], q["doc"], 1) for q in queries if splits[q["_id"]] == split))
        writer.finish(manifest, provenance)
