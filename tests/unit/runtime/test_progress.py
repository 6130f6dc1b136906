"""Stage bars (tqdm) and summary lines; the one switch that turns every bar off; quiet mode keeps INFO records
off the console and in the log file; library use draws and prints nothing."""
from __future__ import annotations

import io
import logging
import os
import re
import time
from pathlib import Path

import pytest

from inpars_ray.runtime import progress

ENV = ("INPARS_RAY_QUIET", "INPARS_RAY_PROGRESS", "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS",
       "TRANSFORMERS_VERBOSITY")


class Terminal(io.StringIO):
    """What a terminal receives (tqdm draws on it as on a tty)."""

    def isatty(self) -> bool:
        return True


def _drawn(term: Terminal, text: str) -> None:
    """Wait (a deadline, not a time) until the terminal shows ``text``."""
    deadline = time.monotonic() + 10
    while text not in term.getvalue():
        assert time.monotonic() < deadline, f"{text!r} never drawn: {term.getvalue()!r}"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
    for name in ENV:  # whatever configure() sets, monkeypatch puts back
        monkeypatch.delenv(name, raising=False)
    yield
    progress.restore()


def test_a_stage_that_counts_its_own_units_shows_them_on_its_bar():
    term = Terminal()
    progress.configure(verbose=False, stream=term)
    with progress.stage("generate") as bar:
        assert "generate: 00:00" in term.getvalue()  # elapsed time until the stage counts something
        progress.count(8, 200, "documents")
        _drawn(term, "8/200")
        progress.count(20, 200, "documents")  # within tqdm's redraw interval: the bar's ticker draws it
        _drawn(term, "20/200")
        bar.summary = "rows=20"
    drawn = term.getvalue()
    assert "documents/s" in drawn  # tqdm's rate of the stage's own unit
    last = re.split(r"[\r\n]", drawn.strip())[-1]
    assert last.startswith("✓ generate") and last.endswith("rows=20")  # the bar gone, the summary line last
    progress.count(5, 10, "documents")  # no stage running: nothing to update, no error


def test_one_switch_turns_every_bar_off_and_keeps_the_summaries(monkeypatch):
    monkeypatch.setenv("INPARS_RAY_PROGRESS", "0")
    term = Terminal()
    progress.configure(verbose=False, stream=term)
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    with progress.stage("generate"):
        progress.count(8, 200, "documents")
    assert term.getvalue().splitlines() == [term.getvalue().strip()]  # one line: the summary
    assert term.getvalue().startswith("✓ generate") and "8/200" not in term.getvalue()
    progress.restore()
    assert "TQDM_DISABLE" not in os.environ  # the environment as it was before the command
    assert os.environ["INPARS_RAY_PROGRESS"] == "0"


def test_configure_switch_overrides_the_environment():
    term = Terminal()
    progress.configure(verbose=False, stream=term, show_progress=False)
    assert not progress.enabled()
    with progress.stage("mine"):
        progress.count(3, 4, "triples")
    assert "3/4" not in term.getvalue() and term.getvalue().startswith("✓ mine")


def test_a_failed_stage_says_so(tmp_path: Path):
    term = io.StringIO()
    progress.configure(verbose=False, stream=term)
    with pytest.raises(RuntimeError), progress.stage("train"):
        raise RuntimeError("boom")
    assert term.getvalue().startswith("✗ train")


def test_library_use_draws_and_prints_nothing(capsys):
    with progress.stage("filter") as bar:
        progress.count(1, 2, "queries")
        bar.summary = "kept=1"
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_quiet_console_shows_summaries_and_warnings_only(tmp_path: Path):
    term = io.StringIO()  # not a terminal: no bars, only the summary lines
    progress.configure(verbose=False, stream=term)
    log = progress.attach_log(tmp_path / "logs" / progress.LOG_NAME)
    logging.getLogger("inpars_ray.test").info("details for the log file")
    logging.getLogger("ray.data").warning("scheduler chatter")
    with progress.stage("mine") as line:
        line.summary = "triples=12"
    logging.getLogger("inpars_ray.test").warning("something the user must see")
    progress.restore()
    out = term.getvalue().splitlines()
    assert len(out) == 2 and out[0].startswith("✓ mine") and out[0].endswith("triples=12")
    assert "something the user must see" in out[1]
    text = log.read_text()
    assert "details for the log file" in text and "scheduler chatter" in text and "stage mine done" in text


def test_ray_data_progress_follows_the_switch(monkeypatch):
    ray_data = pytest.importorskip("ray.data")
    ctx = ray_data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    try:
        progress.install()  # library use: Ray Data's own bars
        assert ctx.enable_progress_bars is True
        monkeypatch.setenv("INPARS_RAY_PROGRESS", "0")
        progress.install()  # ... off by the switch
        assert ctx.enable_progress_bars is False
        monkeypatch.setenv("INPARS_RAY_PROGRESS", "1")
        progress.configure(verbose=True, stream=io.StringIO())
        progress.install()  # verbose: Ray Data's bars as Ray draws them
        assert ctx.enable_progress_bars is True
        progress.configure(verbose=False, stream=io.StringIO())
        progress.install()  # quiet: the stage bars only
        assert ctx.enable_progress_bars is False
    finally:
        ctx.enable_progress_bars = saved
