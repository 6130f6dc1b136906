"""Run every throughput/memory benchmark of issue #11 one after another and write one summary table.

Each benchmark runs in its own process (its own Ray, its own memory), writes its JSON to
``benchmarks/results/``, and carries the ratios it measured side by side in that one run, with the load
average; this runner collects them into ``benchmarks/results/summary.md`` (and ``summary.json``).

    .venv/bin/python benchmarks/run_all.py --quick      # small sizes, minutes
    .venv/bin/python benchmarks/run_all.py --full       # the sizes of issue #11, hours on 2 cores
    .venv/bin/python benchmarks/run_all.py --quick --only filter,mine
    .venv/bin/python benchmarks/run_all.py --summary-only   # rebuild the table from the JSON files

The vLLM benchmark runs with ``.venv-vllm/bin/python`` (scripts/setup_vllm_venv.sh) and is skipped, with
a note in the table, when that venv is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

#: name -> (script, result file, python) ; python None = this interpreter
BENCHMARKS = {
    "rerank": ("rerank_throughput.py", "rerank_throughput.json", None),
    "rerank-docstrings": ("rerank_throughput.py", "rerank_throughput_docstrings.json", None),
    "generate-hf": ("generate_throughput.py", "generate_throughput.json", None),
    "generate-vllm": ("generate_vllm.py", "generate_vllm.json", VLLM_PYTHON),
    "filter": ("filter_throughput.py", "filter_throughput.json", None),
    "mine": ("mine_throughput.py", "mine_throughput.json", None),
    "memory": ("memory_flat.py", "memory_flat.json", None),
}

#: arguments a benchmark takes beyond --quick/--full: the rerank benchmark again on real text of varied
#: lengths (the standard library's docstrings), where sorting by length matters as it does on BEIR; the
#: generation stage laid out as Ray lays out work on this machine
EXTRA_ARGS = {"rerank-docstrings": ["--dataset", "builtin/python-docstrings", "--result",
                                    "rerank_throughput_docstrings"],
              # generation: one actor per core, one torch thread each (the plain loop: 2 threads, 1 process)
              "generate-hf": ["--actors", "2"]}
#: per mode: quick 20 test queries x 100 hits, full 200 x 100 and more queries until 20,000 pairs (issue #11)
MODE_ARGS = {("rerank-docstrings", "quick"): ["--queries", "20"], ("rerank-docstrings", "full"): ["--queries", "200"]}


def command(name: str, mode: str) -> list[str]:
    script, _, python = BENCHMARKS[name]
    return [str(python or sys.executable), str(HERE / script), f"--{mode}", *EXTRA_ARGS.get(name, []),
            *MODE_ARGS.get((name, mode), [])]


def shown(cmd: list[str]) -> str:
    """The command as a user types it from the repository root."""
    python = ".venv-vllm/bin/python" if "venv-vllm" in cmd[0] else ".venv/bin/python"
    return " ".join([python, str(Path(cmd[1]).relative_to(REPO)), *cmd[2:]])


def summary(mode_of: dict[str, str]) -> str:
    rows, payload = [], {}
    for name, (_, result, _) in BENCHMARKS.items():
        path = RESULTS / result
        if not path.exists():
            rows.append(f"| {name} | - | - | - | - | not run | |")
            continue
        data = json.loads(path.read_text())
        mode = data.get("mode") or data.get("settings", {}).get("mode", "?")
        load = (data.get("load_average_at_start") or data.get("machine", {}).get("load_average_at_start") or ["?"])
        if str(mode).startswith("sizes "):  # memory_flat.py --sizes-gb A,B (no preset)
            cmd = shown(command(name, "quick")).replace(" --quick", f" --sizes-gb {mode.split()[1]}")
        else:
            cmd = shown(command(name, mode if mode in ("quick", "full") else "quick"))
        targets = data.get("targets", {})
        payload[name] = {"ratios": data.get("ratios", {}), "targets": targets, "mode": mode, "command": cmd,
                         "load_average_at_start": load}
        if not data.get("ratios"):
            rows.append(f"| {name} | - | - | - | - | no ratio in {result} (an older run): rerun | `{cmd}` |")
        for rname, value in (data.get("ratios") or {}).items():
            target = targets.get(rname)  # the target of exactly this ratio, else of a ratio like it
            if target is None:
                target = next((t for k, t in targets.items() if k.split(" / ")[0].split()[0] in rname), None)
            if target is None and len(targets) == 1:
                target = next(iter(targets.values()))
            kind = "<=" if "RSS" in rname or "PSS" in rname else ">="
            met = "-" if value is None or target is None else (
                "yes" if (value <= target if kind == "<=" else value >= target) else "no")
            rows.append(f"| {name} | {rname} | {value if value is not None else 'error'} | "
                        f"{kind} {target if target is not None else '-'} | {met} | {mode}, load {load[0]} | `{cmd}` |")
    head = ("| benchmark | ratio | measured | target | met | run | command |\n"
            "|---|---|---|---|---|---|---|\n")
    (RESULTS / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = ("# Throughput and memory ratios (issue #11)\n\nEach ratio is measured side by side in one run of its "
            "benchmark on this 2-core machine; the load average (1 min) at the start of that run is shown: the "
            "machine is shared, so absolute figures are noisy and only the ratios are comparable.\n\n"
            + head + "\n".join(rows) + "\n")
    (RESULTS / "summary.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    mode.add_argument("--summary-only", action="store_const", dest="mode", const="summary")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ",".join(BENCHMARKS))
    args = ap.parse_args()
    args.mode = args.mode or "quick"
    if args.mode != "summary":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        for name in args.only.split(","):
            cmd = command(name, args.mode)
            if not Path(cmd[0]).exists():
                print(f"[run_all] {name}: {cmd[0]} is missing, skipped", file=sys.stderr)
                continue
            t = time.perf_counter()
            print(f"[run_all] {name}: {shown(cmd)} (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
            proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            log = Path(tempfile.gettempdir()) / f"inpars-ray-bench-{name}.log"
            log.write_text(proc.stdout)
            print(f"[run_all] {name}: exit {proc.returncode} after {time.perf_counter() - t:.0f}s (log: {log})", file=sys.stderr)
    print(summary({}))


if __name__ == "__main__":
    main()
