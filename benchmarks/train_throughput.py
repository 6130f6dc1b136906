"""Training throughput (examples/s) of the tiny monoT5 with 1 vs 2 Ray Train CPU workers on this machine.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py [--steps 12] [--batch-size 32]
Prints a table and writes benchmarks/results/train_throughput.json. The first steps (process start, data
pipeline warm-up) are left out of the steady-state figure; both figures are reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from inpars_ray.io.manifest import versions
from inpars_ray.runtime.raykit import ensure_ray
from inpars_ray.stages.train import train
from inpars_ray.stages.train_config import TrainConfig
from inpars_ray.testing.tiny_t5 import build_tiny_monot5, build_tiny_triples

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--warmup-steps", type=int, default=2)
    args = ap.parse_args()
    ensure_ray(num_cpus=2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_monot5(Path(tmp) / "model")
        triples = build_tiny_triples(Path(tmp) / "triples", files=4)
        for workers in (1, 2):
            cfg = TrainConfig(base_model=str(model), num_workers=workers, batch_size=args.batch_size,
                              micro_batch_size=args.micro_batch_size, max_length=args.max_length,
                              max_steps=args.steps, checkpoint_every=args.steps, cpus_per_worker=0.5,
                              rows_per_block=64)
            t0 = time.perf_counter()
            manifest = train(triples, Path(tmp) / f"run-{workers}", cfg)
            wall = time.perf_counter() - t0
            hist = manifest["extra"]["history"][args.warmup_steps:]
            steady = sum(h["examples"] for h in hist) / sum(h["examples"] / h["examples_per_s"] for h in hist)
            rows.append({"workers": workers, "steps": manifest["counts"]["steps"], "batch_size": args.batch_size,
                         "micro_batch_size": args.micro_batch_size, "max_length": args.max_length,
                         "steady_examples_per_s": round(steady, 1),
                         "median_step_examples_per_s": round(statistics.median(h["examples_per_s"] for h in hist), 1),
                         "end_to_end_examples_per_s": round(manifest["counts"]["examples"] / wall, 2),
                         "wall_s": round(wall, 1)})
    print(f"{'workers':>7} {'steady ex/s':>12} {'median step ex/s':>17} {'end-to-end ex/s':>16} {'wall s':>7}")
    for r in rows:
        print(f"{r['workers']:>7} {r['steady_examples_per_s']:>12} {r['median_step_examples_per_s']:>17} "
              f"{r['end_to_end_examples_per_s']:>16} {r['wall_s']:>7}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "train_throughput", "model": "tiny monoT5 (inpars_ray.testing)",
                                   "machine": "2 CPU cores (shared), no GPU", "rows": rows,
                                   "versions": versions()}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
