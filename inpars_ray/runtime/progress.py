"""What the terminal shows while stages run: a progress bar per stage, one summary line when it ends.

Quiet by default: everything logged (inpars-ray's INFO lines, Ray's and Ray Data's own logs) goes to a log
file under the run folder; the terminal shows warnings, the running stage's tqdm bar (its elapsed time, then
the units it counts: rate, ETA when the total is known) and one summary line per stage. ``verbose`` restores
everything on the console (Ray Data's own progress bars and the output of Ray workers included). In quiet mode Ray does not forward the workers' output to the driver
(``ray.init(log_to_driver=False)``): it stays in Ray's session logs, whose folder the log file names.

One switch turns every progress bar off (ours, Ray Data's, and tqdm's in transformers and the Hugging Face
hub): ``INPARS_RAY_PROGRESS=0`` or ``configure(show_progress=False)``; the summary lines stay. Library code
only wraps a stage in :func:`stage` and never prints: nothing is drawn until the CLI calls :func:`configure`.
"""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from inpars_ray.runtime import terminal
from inpars_ray.runtime.terminal import StageBar

logger = logging.getLogger(__name__)

LOG_NAME = "inpars-ray.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


_stream: TextIO | None = None  # the terminal the CLI configured (None: library use, nothing is drawn)
_live = False  # draw bars on it: a terminal, quiet, progress on
_running: list[StageBar] = []  # running stages, innermost last


class _ConsoleHandler(logging.StreamHandler):
    """Console logging written above the running bars, so records never break them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            terminal.write(self.format(record), self.stream)
        except Exception:  # logging's own contract: a failing handler reports, never raises
            self.handleError(record)


def log_file(out: Any) -> Path:
    """Where a run's logs go: ``<out>/logs/inpars-ray.log`` (``out`` is a run folder). An object store
    takes no appends: the log of a ``gs://`` run stays on this machine, under ``~/.cache/inpars-ray/logs``."""
    from inpars_ray.io import storage

    loc = storage.location(out)
    if loc.is_local:
        return loc.local_path() / "logs" / LOG_NAME
    cache = Path(os.environ.get("INPARS_RAY_CACHE", Path.home() / ".cache" / "inpars-ray"))
    return cache / "logs" / loc.scheme / loc.path / LOG_NAME


_console: _ConsoleHandler | None = None
_saved_env: dict[str, str | None] = {}  # what configure() changed in os.environ, for restore()
_early: logging.handlers.MemoryHandler | None = None
_log_path: Path | None = None
_saved_fd: int | None = None  # the terminal's fd 2 while native output goes to the log file
_saved_stderr: TextIO | None = None


def enabled() -> bool:
    """The one progress switch: bars on unless ``INPARS_RAY_PROGRESS=0`` (or ``configure(show_progress=False)``)."""
    return os.environ.get("INPARS_RAY_PROGRESS", "1") != "0"


def configure(verbose: bool = False, stream: TextIO | None = None, show_progress: bool | None = None) -> None:
    """Set up the console for one CLI command: warnings, stage bars and summaries (quiet), or every record
    (verbose); ``show_progress=False`` (default: :func:`enabled`) turns every progress bar off.

    Log records go to the log file once :func:`attach_log` names it.
    """
    global _stream, _live, _console
    show = enabled() if show_progress is None else show_progress
    _set_env("INPARS_RAY_QUIET", "0" if verbose else "1")
    _set_env("INPARS_RAY_PROGRESS", "1" if show else "0")  # Ray Data's bars follow it (install())
    # before transformers, huggingface_hub or tqdm read them (Ray workers inherit them too)
    if not verbose:
        _set_env("HF_HUB_DISABLE_PROGRESS_BARS", os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"))
        _set_env("TRANSFORMERS_VERBOSITY", os.environ.get("TRANSFORMERS_VERBOSITY", "error"))
    if not show:
        _set_env("TQDM_DISABLE", "1")  # every tqdm bar whose caller does not decide itself
        _set_env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    stream = stream or sys.stderr
    root = logging.getLogger()
    if _console is not None:
        root.removeHandler(_console)
    root.setLevel(logging.DEBUG)
    _stream, _live = stream, stream.isatty() and not verbose and show
    _console = _ConsoleHandler(stream)
    _console.setFormatter(logging.Formatter(_FORMAT if verbose else "%(levelname)s %(name)s: %(message)s"))
    _console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        _console.addFilter(_quiet_filter)
    root.addHandler(_console)
    global _early
    if _early is not None:
        root.removeHandler(_early)
    # records logged before the command knows its log file (e.g. while Ray starts) wait here for it
    _early = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    _early.setLevel(logging.DEBUG)
    root.addHandler(_early)
    logging.captureWarnings(True)  # Python warnings become log records: in the log file, not the console
    if not verbose:
        _route_ray_logs()
        _route_ray_data_logs()  # Ray Data configures its logger at import: earlier imports left a console on it
    for noisy in ("filelock", "urllib3", "fsspec", "asyncio", "matplotlib", "PIL", "kivy", "jnius"):
        logging.getLogger(noisy).setLevel(logging.INFO)


def _set_env(name: str, value: str) -> None:
    _saved_env.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def attach_log(path: str | os.PathLike[str]) -> Path:
    """Write every log record (DEBUG and up) to ``path``; when quiet, also what native code (the JVM, Ray's
    C++ core, the Ray processes this command starts) writes to stderr."""
    global _log_path
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_inpars_ray", None) == "file":
            root.removeHandler(handler)
            handler.close()
    _log_path = Path(path).resolve()
    _log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(_log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    handler._inpars_ray = "file"  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    global _early
    if _early is not None:
        _early.setTarget(handler)
        _early.flush()
        root.removeHandler(_early)
        _early = None
    if quiet():
        _redirect_native_stderr(_log_path)
    return _log_path


def _redirect_native_stderr(path: Path) -> None:
    # fd 2 -> the log file, so that writes from outside Python (Lucene's JVM, Ray's core worker, a local
    # raylet started later) land there; Python's own stderr (our lines, errors) keeps the terminal
    global _saved_fd, _saved_stderr, _stream
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):  # stderr is not a file (e.g. captured by a test runner)
        return
    if _saved_fd is None:
        sys.stderr.flush()
        _saved_fd = os.dup(2)
        _saved_stderr = sys.stderr
        tty = os.fdopen(os.dup(_saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        if _stream is _saved_stderr:
            _stream = tty
        sys.stderr = tty
        if _console is not None:
            _console.setStream(tty)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


def restore() -> None:
    """End of a CLI command: fd 2 back to the terminal, our handlers removed, the environment as before."""
    global _saved_fd, _saved_stderr, _stream, _live, _console, _log_path, _early
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler is _console or getattr(handler, "_inpars_ray", None) == "file":
            root.removeHandler(handler)
            if handler is not _console:
                handler.close()
    if _early is not None:
        root.removeHandler(_early)
    _stream = _console = _log_path = _early = None
    _live = False
    for name, value in _saved_env.items():  # the environment as it was before configure()
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_env.clear()
    if _saved_fd is None:
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(_saved_fd, 2)
    os.close(_saved_fd)
    tty, sys.stderr = sys.stderr, _saved_stderr
    with contextlib.suppress(Exception):
        tty.close()
    _saved_fd = _saved_stderr = None


def quiet() -> bool:
    """True when the CLI asked for quiet output (the default); library use outside the CLI is not quiet."""
    return os.environ.get("INPARS_RAY_QUIET") == "1"


def install() -> None:
    """After ``ray.init``, on the driver: Ray Data's own progress bars follow the switch (library use and
    ``--verbose``: as Ray Data draws them); a quiet command shows the stage bars only (Ray Data's global bar,
    drawn beside them, stayed at 0 rows and on screen after its execution) and routes Ray's loggers to the
    log file. Ray's worker output is kept off a quiet console by ``ray.init(log_to_driver=False)``."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = enabled() and not quiet()
    if not quiet():
        return
    _route_ray_logs()
    _route_ray_data_logs()


def _quiet_filter(record: logging.LogRecord) -> bool:
    """Quiet console: our own warnings, and only errors from libraries (Ray warns a lot about sizing)."""
    ours = record.name.split(".")[0] in ("inpars_ray", "__main__", "full_beir")
    return record.levelno >= (logging.WARNING if ours else logging.ERROR)


def _route_ray_logs() -> None:
    # Ray sets up its "ray" logger at import with a console handler and propagate=False: send its records
    # through the root handlers instead (the log file; the console only for errors)
    import ray  # noqa: F401 - importing configures the logger we change

    ray_logger = logging.getLogger("ray")
    for handler in list(ray_logger.handlers):
        if not isinstance(handler, logging.FileHandler):
            ray_logger.removeHandler(handler)
    ray_logger.propagate = True


def _route_ray_data_logs() -> None:
    # Ray Data logs to its own logger with a console handler (and propagate=False): keep its session file
    # handler, replace the console by ours (root's handlers: our log file, warnings on the console)
    data_logger = logging.getLogger("ray.data")
    for handler in list(data_logger.handlers):
        if not isinstance(handler, logging.FileHandler):
            data_logger.removeHandler(handler)
    data_logger.propagate = True


@contextlib.contextmanager
def stage(name: str) -> Iterator[StageBar]:
    """Show ``name``'s bar while the block runs; log (and print, when the CLI configured a console) a
    summary line after. The block may set ``bar.summary`` (e.g. counts) for the summary line."""
    bar = StageBar(name, _stream or sys.stderr, live=_live and quiet())
    _running.append(bar)
    ok = False
    try:
        yield bar
        ok = True
    finally:
        _running.remove(bar)
        elapsed = bar.elapsed()
        text = bar.close(ok)
        logger.info("stage %s %s in %s%s", name, "done" if ok else "failed", elapsed,
                    f": {bar.summary}" if bar.summary else "")
        if _stream is not None and quiet():
            terminal.write(text, _stream)


def count(done: int, total: int | None, unit: str) -> None:
    """Report the running stage's own progress, ``done`` of ``total`` ``unit`` (e.g. documents), on its bar;
    a no-op when no stage is running."""
    if _running:
        _running[-1].set_count(done, total, unit)


def echo_error(text: str) -> None:
    """An error message for the user, on the terminal's stderr (also while native stderr is redirected)."""
    terminal.write(text, sys.stderr)


def echo(text: str) -> None:
    """Print a line of the CLI's output without breaking a running bar."""
    if _stream is not None:
        terminal.write(text, _stream)
    else:
        print(text)
