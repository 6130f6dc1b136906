"""Turn a document collection into a reranker tuned to it: an LLM writes synthetic queries for its documents
(InPars), the engine filters them, mines negatives, trains a reranker on Ray and reports it against the
model it started from and BM25.

The command line is a map from verb to a small module that parses and delegates. Each module in :data:`COMMANDS` defines ``add_parser(subparsers)`` and ``run(args) -> int``; ``main``
dispatches on the verb. Library code
raises typed errors; only here are they turned into a message on stderr and an exit status.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from inpars_ray.errors import find_typed_error

#: verb -> module under inpars_ray.cli
COMMANDS: dict[str, str] = {
    "index": "index",
    "retrieve": "retrieve",
    "evaluate": "evaluate",
    "run": "run",
    "generate": "generate",
    "filter": "filter",
    "mine": "mine",
    "train": "train",
    "consistency": "consistency",
    "rerank": "rerank",
    "report": "report",
    "tune": "tune",
    "export": "export",
}


def _load_commands() -> dict[str, ModuleType]:
    """verb -> its CLI module, for every verb whose module exists."""
    loaded: dict[str, ModuleType] = {}
    for verb, module in COMMANDS.items():
        try:
            loaded[verb] = importlib.import_module(f"inpars_ray.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"inpars_ray.cli.{module}":
                raise
    return loaded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inpars-ray", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                     epilog="Start with `inpars-ray run --config configs/demo.yaml` (the whole "
                                     "pipeline); `inpars-ray COMMAND --help` lists a command's options.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every log record and Ray's own output on the console (default: a log file)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in _load_commands().values():
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from inpars_ray.runtime import progress

    args = build_parser().parse_args(argv)
    progress.configure(verbose=args.verbose)  # quiet: warnings and stage lines; the rest goes to a log file
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if getattr(args, "shared_fs", False):  # read by inpars_ray.io.storage.check_reachable before any stage works
        from inpars_ray.io.storage import SHARED_FS_ENV

        os.environ[SHARED_FS_ENV] = "1"
    try:
        # dispatch on the verb, not on a parser default: a verb may have an option named --run
        return int(_load_commands()[args.command].run(args) or 0)
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        typed = find_typed_error(exc)
        if typed is None:
            raise
        progress.echo_error(f"inpars-ray {args.command}: error: {typed}")
        return 2
    finally:
        progress.restore()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
