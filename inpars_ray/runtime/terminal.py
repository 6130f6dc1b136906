"""The progress line of a running stage and the terminal it is drawn on (no logging, no Ray).

:class:`StageLine` holds one stage's counts and renders them (rows or the stage's own unit done, rate, ETA
when the total is known, elapsed time); :class:`Display` rewrites that line in place on a terminal and
prints the summaries. :mod:`inpars_ray.runtime.progress` owns the running lines and feeds them.
"""
from __future__ import annotations

import shutil
import threading
import time
from typing import TextIO


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_count(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size * 10:
            return f"{n / size:.0f}{unit}"
    return f"{n:.0f}"


class StageLine:
    """One stage's progress: rows done of the current Ray Data execution, rate, ETA, elapsed time.

    A stage whose Ray Data rows are not its own unit (generate's output has one row per block of documents)
    reports its own count instead (:func:`count`), and the line then ignores Ray Data's rows.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.rows = 0  # rows done by the stage's Ray Data executions so far
        self.exec_rows = 0  # ... by the current execution
        self.exec_total: int | None = None
        self.exec_started = self.started
        self.unit = "rows"
        self.own_count = False  # the stage counts its own units (count()); Ray Data's rows are then ignored

    def set_count(self, done: int, total: int | None, unit: str) -> None:
        """The stage's own count of ``unit`` done (of ``total``) since it started counting."""
        if not self.own_count:
            self.own_count, self.exec_started = True, time.monotonic()
        self.unit = unit
        self.rows = self.exec_rows = done
        self.exec_total = total

    def update(self, new_rows: int, total_rows: int | None) -> None:
        if self.own_count:
            return
        if new_rows < self.exec_rows:  # a new execution began (Ray Data reports cumulative rows)
            self.exec_started = time.monotonic()
            self.exec_rows = 0
        self.rows += new_rows - self.exec_rows
        self.exec_rows, self.exec_total = new_rows, total_rows

    def render(self, width: int) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"[{self.name}]"]
        if self.rows:
            rate = self.exec_rows / max(time.monotonic() - self.exec_started, 1e-9)
            done = fmt_count(self.exec_rows) + (f"/{fmt_count(self.exec_total)}" if self.exec_total else "")
            unit = self.unit
            parts.append(f"{done} {unit}  {rate:,.1f} {unit}/s" if rate >= 1 else f"{done} {unit}  {rate:.2g} {unit}/s")
            if self.exec_total and rate > 0 and self.exec_rows < self.exec_total:
                parts.append(f"ETA {fmt_seconds((self.exec_total - self.exec_rows) / rate)}")
        parts.append(fmt_seconds(elapsed))
        return "  ".join(parts)[: max(width - 1, 20)]


class Display:
    """Draws the running stage's line on a terminal (rewritten in place) and prints summaries."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        self.stream = stream
        self.live = live  # a terminal: redraw the line; otherwise print only the summaries
        self.current: StageLine | None = None
        self.lock = threading.RLock()
        self._shown = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _width(self) -> int:
        return shutil.get_terminal_size((80, 24)).columns

    def clear(self) -> None:
        """Erase the live line (before a log record or a summary is printed)."""
        with self.lock:
            if self._shown:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
                self._shown = False

    def draw(self) -> None:
        with self.lock:
            if self.live and self.current is not None:
                self.stream.write("\r\x1b[2K" + self.current.render(self._width()))
                self.stream.flush()
                self._shown = True

    def print(self, text: str) -> None:
        with self.lock:
            self.clear()
            self.stream.write(text + "\n")
            self.stream.flush()
            self.draw()

    def start(self, line: StageLine) -> None:
        with self.lock:
            self.current = line
            self.draw()
        if self.live and self._thread is None:
            self._thread = threading.Thread(target=self._tick, name="inpars-ray-progress", daemon=True)
            self._thread.start()

    def stop(self, summary: str | None) -> None:
        with self.lock:
            self.current = None
            self.clear()
            if summary:
                width = self._width() if self.live else 10_000
                self.stream.write((summary if len(summary) < width else summary[: width - 2] + "…") + "\n")
                self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):  # the elapsed time moves even when no rows arrive
            self.draw()
