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

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


class TreeMemory:
    """Samples the memory of this process and all its descendants (Ray's GCS, raylet and workers, JVMs).

    ``peak_rss`` is the largest sum of resident set sizes seen; ``peak_pss`` the largest sum of
    proportional set sizes (shared pages, e.g. a memory-mapped store read by several workers, counted once
    overall rather than once per process); ``peak_anon`` the largest sum of resident pages backed by no file
    (RSS minus file-backed and shared-memory pages: heaps, buffers, the JVM's heap). Sampled every
    ``interval`` seconds on a thread; set :attr:`phase` to record each phase's peaks apart, and with each
    phase's peak RSS the largest processes of that sample (which process a peak comes from).
    """

    def __init__(self, interval: float = 0.5, root_pid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(root_pid or os.getpid())
        self.interval = interval
        self.peak_rss = self.peak_pss = self.peak_anon = 0
        self.peak_processes = 0
        self.phase: str | None = None
        self.phases: dict[str, dict[str, int]] = {}
        self.phase_top: dict[str, list[dict[str, Any]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int, int]:
        """(RSS, PSS, processes) of the tree now."""
        rss, pss, _, n, _ = self._sample()
        return rss, pss, n

    def _sample(self) -> tuple[int, int, int, int, list[tuple[int, int, str]]]:
        rss = pss = anon = n = 0
        each = []
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
                name = " ".join(proc.cmdline())[:80] or proc.name()
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue
            own = info.rss - getattr(info, "shared", 0)
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            anon += own
            each.append((info.rss, own, name))
            n += 1
        return rss, pss, anon, n, each

    def _run(self) -> None:
        mb = lambda v: round(v / 2**20, 1)  # noqa: E731
        while not self._stop.is_set():
            rss, pss, anon, n, each = self._sample()
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_anon = max(self.peak_anon, anon)
            self.peak_processes = max(self.peak_processes, n)
            if self.phase is not None:
                seen = self.phases.setdefault(self.phase, {"rss": 0, "pss": 0, "anon": 0})
                if rss > seen["rss"]:
                    self.phase_top[self.phase] = [{"process": name, "rss_mb": mb(r), "anon_mb": mb(a)}
                                                  for r, a, name in sorted(each, reverse=True)[:6]]
                seen.update(rss=max(seen["rss"], rss), pss=max(seen["pss"], pss), anon=max(seen["anon"], anon))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def as_dict(self) -> dict[str, Any]:
        mb = lambda v: round(v / 2**20, 1)  # noqa: E731
        return {"peak_rss_mb": mb(self.peak_rss), "peak_pss_mb": mb(self.peak_pss),
                "peak_anon_rss_mb": mb(self.peak_anon), "peak_processes": self.peak_processes,
                "peaks_by_phase_mb": {phase: {k: mb(v) for k, v in seen.items()}
                                      for phase, seen in self.phases.items()},
                "largest_processes_at_phase_peak": self.phase_top}


def warm_ray(num_cpus: int) -> None:
    """Start Ray and run one small Ray Data job, so worker start-up is not charged to the first contender
    (a pipeline's later stages find their workers up)."""
    import ray

    from inpars_ray.runtime.raykit import ensure_ray

    ensure_ray(num_cpus=num_cpus)
    ray.data.range(4 * num_cpus, override_num_blocks=2 * num_cpus).map_batches(lambda b: b).materialize()
