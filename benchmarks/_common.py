"""Shared helpers of the benchmarks: machine facts, result files, and process-tree memory sampling.

Every benchmark records the load average next to its figures: on a shared machine absolute numbers are
noisy, and only ratios measured side by side in one run are comparable.
"""
from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# Ray starts its worker processes at niceness 15 (so that its own daemons and the driver stay responsive):
# under any outside load a stage then loses the CPU to everything else, while the one-process contenders
# run at niceness 0. The benchmarks give Ray's workers the contenders' priority (Ray's job manager does the
# same for the jobs it supervises); set RAY_worker_niceness yourself to measure otherwise.
os.environ.setdefault("RAY_worker_niceness", "0")


def machine() -> dict[str, Any]:
    """CPU count, Python, and the load average (1, 5, 15 minutes) at the time of the call."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` (with the machine facts at the end of the run)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = dict(payload, machine_at_end=machine())
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den`` rounded, or None when either is missing."""
    if not num or not den:
        return None
    return round(num / den, 3)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


class TreeMemory:
    """Samples the memory of this process and all its descendants (Ray's GCS, raylet and workers, JVMs).

    ``peak_rss`` is the largest sum of resident set sizes seen; ``peak_pss`` the largest sum of
    proportional set sizes (shared pages, e.g. a memory-mapped store read by several workers, counted once
    overall rather than once per process). Sampled every ``interval`` seconds on a thread.
    """

    def __init__(self, interval: float = 0.5, root_pid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(root_pid or os.getpid())
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int, int]:
        rss = pss = n = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            n += 1
        return rss, pss, n

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss, n = self.sample()
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, n)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def as_dict(self) -> dict[str, Any]:
        return {"peak_rss_mb": round(self.peak_rss / 2**20, 1), "peak_pss_mb": round(self.peak_pss / 2**20, 1),
                "peak_processes": self.peak_processes}


def warm_ray(num_cpus: int) -> None:
    """Start Ray and run one small Ray Data job, so worker start-up is not charged to the first contender
    (a pipeline's later stages find their workers up)."""
    import ray

    from inpars_ray.raykit import ensure_ray

    ensure_ray(num_cpus=num_cpus)
    ray.data.range(4 * num_cpus, override_num_blocks=2 * num_cpus).map_batches(lambda b: b).materialize()
