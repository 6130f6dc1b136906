"""Stage lines: rows, rate and ETA from Ray Data's cumulative counts; a summary line per stage; quiet mode
keeps INFO records off the console and in the log file."""
from __future__ import annotations

import io
import logging
from pathlib import Path

from inpars_ray.runtime import progress


def test_stage_line_counts_rows_across_executions():
    line = progress.StageLine("filter")
    line.update(10, 40)
    line.update(30, 40)
    assert line.rows == 30 and "30/40 rows" in line.render(80) and "ETA" in line.render(80)
    line.update(5, None)  # a new Ray Data execution starts from zero
    assert line.rows == 35 and "5 rows" in line.render(80) and "ETA" not in line.render(80)
    assert len(line.render(30)) <= 29


def test_a_stage_that_counts_its_own_units_shows_them_not_ray_rows():
    """generate's Ray output has one row per block of documents: its line shows documents (issue 18)."""
    with progress.stage("generate") as line:
        line.update(1, 28)  # Ray Data: one block of 28 done
        assert "1/28 rows" in line.render(80)
        progress.count(8, 200, "documents")
        line.update(2, 28)  # later block counts no longer overwrite the stage's own count
        assert "8/200 documents" in line.render(80) and "documents/s" in line.render(80)
        assert "rows" not in line.render(80)
    progress.count(5, 10, "documents")  # no stage running: nothing to update, no error


def test_quiet_console_shows_summaries_and_warnings_only(tmp_path: Path):
    term = io.StringIO()  # not a terminal: no live line, only the summary lines
    try:
        progress.configure(verbose=False, stream=term)
        log = progress.attach_log(tmp_path / "logs" / progress.LOG_NAME)
        logging.getLogger("inpars_ray.test").info("details for the log file")
        logging.getLogger("ray.data").warning("scheduler chatter")
        with progress.stage("mine") as line:
            line.summary = "triples=12"
        logging.getLogger("inpars_ray.test").warning("something the user must see")
    finally:
        progress.restore()
    out = term.getvalue().splitlines()
    assert len(out) == 2 and out[0].startswith("✓ mine") and out[0].endswith("triples=12")
    assert "something the user must see" in out[1]
    text = log.read_text()
    assert "details for the log file" in text and "scheduler chatter" in text and "stage mine done" in text
