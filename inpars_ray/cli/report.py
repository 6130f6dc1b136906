"""``inpars-ray report``: rebuild a run's report (Markdown, JSON, PNG plots) from its artifacts alone."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.md, report.json and the plots of a run folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run root written by 'inpars-ray run' (its --out-dir)")
    p.add_argument("--no-plots", action="store_true", help="write the Markdown and JSON only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.report import build_report

    report = build_report(args.run_dir, plots=not args.no_plots)
    print(report.markdown, end="")
    print(f"\nwrote {report.paths['md']}, {report.paths['json'].name}"
          + "".join(f", {p.name}" for p in report.plots))
    return 0
