"""InPars against the zero-shot start model over several finished ``inpars-ray run`` folders (seeds), pooled.

Reads only what the engine wrote in each run folder (``manifest.json``'s ``extra.systems`` and the per-query
evaluation files it lists) and prints, per run and pooled over all runs' (query, run) pairs, the nDCG@10
difference, the two-sided paired t-test p and better / worse / tied queries: the same rows and pooled test
as ``effectiveness.py`` (its functions), for runs started by hand (``inpars-ray run --set inpars.seed=N``)::

    .venv/bin/python benchmarks/compare_runs.py runs/man-pages-seed-1 runs/man-pages-seed-2 runs/man-pages-seed-3

``--json FILE`` also writes the rows and the summary.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _effectiveness():
    spec = importlib.util.spec_from_file_location("bench_effectiveness", HERE / "effectiveness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def compare(run_dirs: list[Path], label: str = "runs") -> dict:
    """Each run's row (run i is "seed" i) and the summary over all of them, with the pooled paired test."""
    eff = _effectiveness()
    rows, per_query = [], {}
    for i, run in enumerate(run_dirs, 1):
        row, values = eff.run_row(label, i, run)
        row["run_dir"] = str(run)
        rows.append(row)
        per_query[(label, i)] = values
    return {"rows": rows, "summary": eff.summarize(rows, per_query)[label]}


def _line(name: str, delta: float, test: dict) -> str:
    p = test["p_value"]
    shown = "n/a" if p is None else ("< 0.001" if p < 0.001 else f"= {p:.3f}")
    return (f"{name}: {delta:+.4f} nDCG@10 over {test['queries']} queries, p {shown}, {test['better']} better / "
            f"{test['worse']} worse / {test['tied']} tied")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished inpars-ray run folders")
    ap.add_argument("--json", type=Path, default=None, help="also write rows and summary here")
    args = ap.parse_args(argv)
    result = compare(args.runs)
    for row in result["rows"]:
        print(_line(f"{row['run_dir']} (start {row['zero_shot']['nDCG@10']:.4f}, InPars "
                    f"{row['lever_measures']['nDCG@10']:.4f})", row["delta"]["nDCG@10"], row["paired"]["nDCG@10"]))
    s = result["summary"]
    spread = "" if s["delta_std"] is None else f" ± {s['delta_std']:.4f}"
    print(f"mean over {len(s['seeds'])} runs: {s['delta_mean']['nDCG@10']:+.4f}{spread}")
    print(_line("pooled", s["pooled"]["difference"], s["pooled"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
