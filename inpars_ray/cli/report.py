"""``inpars-ray report``: rebuild a run's report (Markdown, JSON, PNG plots) from its artifacts alone."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild report.md, report.json and the plots of a run folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run root written by 'inpars-ray run' (its --out-dir): a "
                   "folder or gs://bucket/run (the report is written beside the run)")
    p.add_argument("--no-plots", action="store_true", help="write the Markdown and JSON only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from inpars_ray.report import build_report

    report = build_report(args.run_dir, plots=not args.no_plots)
    print(report.markdown, end="")
    print(f"\nwrote {report.where}" + "".join(f", {p.rsplit('/', 1)[-1]}" for p in report.published[1:]))
    return 0
