"""What the terminal shows while stages run: one progress line per stage, one summary line when it ends.

Quiet by default: everything logged (inpars-ray's INFO lines, Ray's and Ray Data's own logs, the output
of Ray workers and actors) goes to a log file under the run folder; the terminal shows warnings and,
for each running stage, one line rewritten in place (rows done, rate, ETA when Ray Data knows the
total, elapsed time), then a one-line summary. ``verbose`` restores everything on the console (Ray
Data's progress bars included).

Rows come from Ray Data's streaming executor: :func:`install` gives it a progress manager that forwards
each execution's row counts to the running stage's line instead of drawing bars. Library code only
wraps a stage in :func:`stage`; the CLI calls :func:`configure` once.
"""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from inpars_ray.runtime.terminal import Display, StageLine, fmt_seconds

logger = logging.getLogger(__name__)

LOG_NAME = "inpars-ray.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


_display: Display | None = None
_lines: list[StageLine] = []  # running stages, innermost last


class _ConsoleHandler(logging.StreamHandler):
    """Console logging that erases the progress line first, so records never interleave with it."""

    def emit(self, record: logging.LogRecord) -> None:
        if _display is None:
            super().emit(record)
            return
        with _display.lock:
            _display.clear()
            super().emit(record)
            _display.draw()


def log_file(out: Any) -> Path:
    """Where a run's logs go: ``<out>/logs/inpars-ray.log`` (``out`` is a run folder). An object store
    takes no appends: the log of a ``gs://`` run stays on this machine, under ``~/.cache/inpars-ray/logs``."""
    from inpars_ray.io import storage

    loc = storage.location(out)
    if loc.is_local:
        return loc.local_path() / "logs" / LOG_NAME
    cache = Path(os.environ.get("INPARS_RAY_CACHE", Path.home() / ".cache" / "inpars-ray"))
    return cache / "logs" / loc.scheme / loc.path / LOG_NAME


_console: logging.Handler | None = None
_early: logging.handlers.MemoryHandler | None = None
_log_path: Path | None = None
_saved_fd: int | None = None  # the terminal's fd 2 while native output goes to the log file
_saved_stderr: TextIO | None = None


def configure(verbose: bool = False, stream: TextIO | None = None) -> None:
    """Set up the console for one CLI command: warnings and stage lines (quiet), or every record (verbose).

    Log records go to the log file once :func:`attach_log` names it.
    """
    global _display, _console
    os.environ["INPARS_RAY_QUIET"] = "0" if verbose else "1"
    if not verbose:  # before tqdm, transformers or huggingface_hub read them
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    stream = stream or sys.stderr
    root = logging.getLogger()
    if _console is not None:
        root.removeHandler(_console)
    root.setLevel(logging.DEBUG)
    _display = Display(stream, live=stream.isatty() and not verbose)
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
    global _saved_fd, _saved_stderr
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):  # stderr is not a file (e.g. captured by a test runner)
        return
    if _saved_fd is None:
        sys.stderr.flush()
        _saved_fd = os.dup(2)
        _saved_stderr = sys.stderr
        terminal = os.fdopen(os.dup(_saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        sys.stderr = terminal
        if _display is not None:
            _display.stream = terminal
        if _console is not None:
            _console.setStream(terminal)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


def restore() -> None:
    """End of a CLI command: fd 2 back to the terminal, our handlers removed, quiet mode off."""
    global _saved_fd, _saved_stderr, _display, _console, _log_path, _early
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler is _console or getattr(handler, "_inpars_ray", None) == "file":
            root.removeHandler(handler)
            if handler is not _console:
                handler.close()
    if _early is not None:
        root.removeHandler(_early)
    _display = _console = _log_path = _early = None
    os.environ.pop("INPARS_RAY_QUIET", None)
    if _saved_fd is None:
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(_saved_fd, 2)
    os.close(_saved_fd)
    terminal, sys.stderr = sys.stderr, _saved_stderr
    with contextlib.suppress(Exception):
        terminal.close()
    _saved_fd = _saved_stderr = None


def quiet() -> bool:
    """True when the CLI asked for quiet output (the default); library use outside the CLI is not quiet."""
    return os.environ.get("INPARS_RAY_QUIET") == "1"


def install() -> None:
    """After ``ray.init``: route Ray's worker output and Ray Data's logs and progress to the log file and
    the stage lines (a no-op unless quiet)."""
    if not quiet():
        return
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True  # keep Ray Data's progress calls, drawn by our manager below
    ctx.enable_operator_progress_bars = False
    _route_ray_logs()
    _route_ray_data_logs()
    _hook_progress_manager()
    _route_worker_output()


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
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled" notes


def _hook_progress_manager() -> None:
    """Make Ray Data's streaming executor report row counts to the running stage's line."""
    try:
        from ray.data._internal.execution import streaming_executor as se
        from ray.data._internal.progress.base_progress import NoopExecutionProgressManager
    except ImportError:  # another Ray layout: stage lines then show elapsed time only
        logger.debug("Ray Data progress hook unavailable", exc_info=True)
        return
    if getattr(se.get_progress_manager, "_inpars_ray", False):
        return

    class StageProgressManager(NoopExecutionProgressManager):
        def update_total_progress(self, new_rows: int, total_rows: int | None) -> None:
            if _lines:
                _lines[-1].update(new_rows, total_rows)

    def get_progress_manager(ctx: Any, dataset_id: str, topology: Any, verbose_progress: bool) -> Any:
        return StageProgressManager(dataset_id, topology, False, verbose_progress)

    get_progress_manager._inpars_ray = True  # type: ignore[attr-defined]
    se.get_progress_manager = get_progress_manager


def _route_worker_output() -> None:
    """Ray prints the stdout/stderr of workers and actors (and raylet warnings) on the driver's console:
    write them to the log file instead (held in memory until the command names its log file)."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    if dispatcher is None:
        return
    lock = threading.Lock()

    pending: list[str] = []

    def to_file(data: dict) -> None:
        prefix = f"({data.get('actor_name') or data.get('task_name') or 'worker'} pid={data.get('pid')}"
        prefix += f", ip={data.get('ip')}) " if data.get("ip") else ") "
        with lock:
            pending.extend(prefix + line + "\n" for line in data.get("lines", []))
            if _log_path is None:
                del pending[:-1000]  # before the log file is known: keep the latest lines only
                return
            with contextlib.suppress(OSError), open(_log_path, "a", encoding="utf-8") as fh:
                fh.writelines(pending)
            pending.clear()

    # raylet warnings (e.g. "N worker processes have been started") bypass the dispatcher
    ray_worker.print_to_stdstream = lambda data, ignore_prefix=False: to_file(data)
    with contextlib.suppress(Exception):
        dispatcher.remove_handler("ray_print_logs")
    with contextlib.suppress(Exception):
        dispatcher.remove_handler("inpars_ray_log_file")
    dispatcher.add_handler("inpars_ray_log_file", to_file)


@contextlib.contextmanager
def stage(name: str) -> Iterator[StageLine]:
    """Show ``name``'s progress line while the block runs; log (and print, when quiet) a summary after.

    The block may set ``line.summary`` (e.g. counts) for the summary line.
    """
    line = StageLine(name)
    line.summary = None  # type: ignore[attr-defined]
    _lines.append(line)
    if _display is not None and quiet():
        _display.start(line)
    ok = False
    try:
        yield line
        ok = True
    finally:
        _lines.remove(line)
        elapsed = fmt_seconds(time.monotonic() - line.started)
        detail = line.summary  # type: ignore[attr-defined]
        text = f"{'✓' if ok else '✗'} {name:<9} {elapsed:>5}" + (f"  {detail}" if detail else "")
        logger.info("stage %s %s in %s%s", name, "done" if ok else "failed", elapsed,
                    f": {detail}" if detail else "")
        if _display is not None and quiet():
            _display.stop(text)


def count(done: int, total: int | None, unit: str) -> None:
    """Report the running stage's own progress, ``done`` of ``total`` ``unit`` (e.g. documents), in place of
    the Ray Data rows its line shows by default; a no-op when no stage line is running."""
    if _lines:
        _lines[-1].set_count(done, total, unit)


def echo_error(text: str) -> None:
    """An error message for the user, on the terminal's stderr (also while native stderr is redirected)."""
    if _display is not None:
        _display.clear()
    print(text, file=sys.stderr)


def echo(text: str) -> None:
    """Print a line of the CLI's output without breaking a live progress line."""
    if _display is not None:
        _display.print(text)
    else:
        print(text)
