"""Arguments several verbs share."""
from __future__ import annotations

import argparse


def add_dataset(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--dataset", required=required,
                        help="collection: a BEIR-layout folder, beir/<name>, bundled/tiny-science or gs://bucket/prefix")
    parser.add_argument("--cache-dir", default=None, help="where beir/<name> downloads go (default ~/.cache/inpars-ray)")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="report malformed rows and go on without them instead of failing")


def add_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray started for this run)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
