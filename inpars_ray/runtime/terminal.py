"""A running stage on the terminal: a tqdm bar while it runs, one summary line when it ends (no logging, no Ray).

:class:`StageBar` is one stage: its elapsed time (until the stage counts something), then tqdm's own
counter, rate and ETA of the units the stage reports (:meth:`StageBar.set_count`); :func:`write` prints a
line above the bars.
:mod:`inpars_ray.runtime.progress` owns the running stages and the switch that turns bars off.
"""
from __future__ import annotations

import threading
import time
from typing import TextIO

from tqdm import tqdm

#: before a stage reports a count: its name and elapsed time only (tqdm's default format once it counts)
WAITING_FORMAT = "{desc}: {elapsed}"


def fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def write(text: str, stream: TextIO) -> None:
    """``text`` on its own line of ``stream``, above any bar tqdm is drawing there."""
    tqdm.write(text, file=stream)


class StageBar:
    """One running stage: its start, the summary its block may set, and its bar when ``live``.

    The bar is a plain ``tqdm`` on ``stream`` (``disable`` when not live: not a terminal, or progress off);
    a small thread refreshes it twice a second so the elapsed time moves while nothing is counted.
    """

    def __init__(self, name: str, stream: TextIO, live: bool) -> None:
        self.name = name
        self.started = time.monotonic()
        self.summary: str | None = None  #: set by the stage's block, shown after the stage's time
        self.done, self.unit = 0, ""
        self.total: int | None = None
        self._bar = tqdm(desc=name, file=stream, disable=not live, leave=False, dynamic_ncols=True,
                         bar_format=WAITING_FORMAT, mininterval=0.25)
        self._stop = threading.Event()
        if live:
            threading.Thread(target=self._tick, name=f"inpars-ray-{name}", daemon=True).start()

    def set_count(self, done: int, total: int | None, unit: str) -> None:
        """The stage's own count: ``done`` of ``total`` ``unit`` (e.g. documents) since it started counting."""
        self._bar.unit, self._bar.total = unit, total
        if not self.unit:  # the first count: tqdm's default format and rate from now on
            self._bar.bar_format = None
            self._bar.reset(total=total)
        self.done, self.total, self.unit = done, total, unit
        self._bar.update(done - self._bar.n)  # drawn at most every mininterval; the ticker draws the rest

    def elapsed(self) -> str:
        return fmt_seconds(time.monotonic() - self.started)

    def close(self, ok: bool) -> str:
        """Remove the bar; the summary line of the ended stage (``✓ name time  summary`` or ``✗ ...``)."""
        self._stop.set()
        self._bar.close()
        elapsed = self.elapsed()
        return f"{'✓' if ok else '✗'} {self.name:<9} {elapsed:>5}" + (f"  {self.summary}" if self.summary else "")

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._bar.refresh()
