"""Environment variables are for machines and processes only, and README lists every one the package reads:
a user setting belongs in a config class (issue 26, section 5)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"INPARS_RAY_[A-Z0-9_]*[A-Z0-9]")


def test_readme_lists_every_environment_variable_the_package_reads():
    used = {m for p in (ROOT / "inpars_ray").rglob("*.py") for m in NAME.findall(p.read_text(encoding="utf-8"))}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(INPARS_RAY_[A-Z0-9_]+)", readme, flags=re.MULTILINE))
    assert used == table, {"read but not listed": sorted(used - table), "listed but not read": sorted(table - used)}
    # settings of a run are config fields, not variables
    assert not {"INPARS_RAY_JAVA_HEAP", "INPARS_RAY_BENCH_EVENTS"} & used
