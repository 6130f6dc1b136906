"""A node-local journal of answers received, so a killed process never pays for them again.

The generate stage writes a batch's rows as one part file once the whole batch is answered (a part is
whole or absent). Until then the answers live only in the actor's memory: an actor killed (out of memory,
a node agent's kill, a SIGKILL) or a part write failing in a storage outage would lose every answer of
the batch, and the retry would pay for them again. The journal keeps each answer on the node's local disk
the moment it arrives; the retry of the batch reads it back and asks the backend only for the rest.

Layout: ``<root>/<run key>/<part name>.jsonl``, one JSON line per answer (``{"key": ..., "value": ...}``),
appended and flushed to the OS at once (a process killed after the flush keeps the line; only the node's
own crash can lose it). A line torn by a kill mid-write is skipped on reading. The batch's file is deleted
once its part is written, and the run's folder once its stage completes.

What it cannot save: the answer to a request in flight when its process dies (the server answered a client
that was gone), and answers journaled on a node that is itself lost (a preempted VM takes its disk along),
when the retry runs on another node. Both are at most the requests of one batch per lost actor.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def journal_root() -> Path:
    """``$INPARS_RAY_JOURNAL`` or ``~/.cache/inpars-ray/journal``: where a node journals answers."""
    return Path(os.environ.get("INPARS_RAY_JOURNAL", Path.home() / ".cache" / "inpars-ray" / "journal"))


def run_key(*parts: str) -> str:
    """A folder name for one run of one stage (its output's URI and its config hash)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def answer_key(text: str) -> str:
    """The key of one answer: a hash of the request it answers (e.g. the prompt)."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Journal:
    """The answers of one run of one stage on this node, in one file per batch."""

    def __init__(self, key: str, root: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(root) if root is not None else journal_root()
        self.folder = self.folder / key
        self._lock = threading.Lock()
        self._failed = False

    def _file(self, batch: str) -> Path:
        return self.folder / f"{batch}.jsonl"

    def read(self, batch: str) -> dict[str, Any]:
        """``{key: value}`` of the answers journaled for ``batch`` (empty when there are none)."""
        path = self._file(batch)
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return {}
        except OSError as exc:  # best effort, as writing: the answers are asked for again
            logger.warning("cannot read the journal %s (%s); its answers are asked for again", path, exc)
            return {}
        out: dict[str, Any] = {}
        for n, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                out[entry["key"]] = entry["value"]
            except (ValueError, KeyError, TypeError):  # torn by a kill mid-write: that answer is asked again
                logger.warning("journal %s line %d is unreadable; its answer is asked for again", path, n)
        return out

    def append(self, batch: str, key: str, value: Any) -> None:
        """Journal one answer of ``batch`` (one write of one line, flushed to the OS).

        Best effort: a journal that cannot be written (a full local disk) is logged once and the run goes on;
        only a later crash of this batch would then ask for its answers again.
        """
        line = json.dumps({"key": key, "value": value}, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with open(self._file(batch), "ab", buffering=0) as fh:  # unbuffered: one write() per line
                    fh.write(line.encode())
            except OSError as exc:
                if not self._failed:
                    logger.warning("cannot journal answers in %s (%s): a crash would ask for them again",
                                   self.folder, exc)
                self._failed = True

    def discard(self, batch: str) -> None:
        """Forget ``batch``'s answers (its part is written: the part holds them now)."""
        self._file(batch).unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget the whole run's answers (its stage completed)."""
        shutil.rmtree(self.folder, ignore_errors=True)
