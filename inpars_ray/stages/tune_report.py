"""What a sweep gives its user: the table of trials, a plot, and the best settings.

Pure functions over the trials (one dict per trial: settings, dev nDCG@10 per evaluation, steps run and
planned, stopped early or not); :func:`trials_table` reads them from Tune's ResultGrid, and
:func:`write_outputs` writes ``trials.json``, ``trials.md`` and ``tune.png`` beside the sweep.
"""
from __future__ import annotations

import io
import json
import logging
import math
from typing import Any

from inpars_ray.io import storage

logger = logging.getLogger(__name__)

METRIC = "dev_ndcg@10"
TABLE_JSON, TABLE_MD, PLOT = "trials.json", "trials.md", "tune.png"


def _trial_id(result) -> str:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return tid
    import os

    return os.path.basename(str(result.path)).split("_")[-3] if result.path else "?"


def trials_table(grid, trials_root: str, flat: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial of a Tune ResultGrid, in trial order."""
    from inpars_ray.stages.tune import STOP_FILE

    rows = []
    for result in grid:
        metrics = result.metrics or {}
        history = []
        frame = result.metrics_dataframe
        if frame is not None and METRIC in frame.columns:
            for step, value in zip(frame["step"].tolist(), frame[METRIC].tolist()):
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    history.append({"step": int(step), METRIC: float(value)})
        history = sorted({h["step"]: h for h in history}.values(), key=lambda h: h["step"])
        tid = _trial_id(result)
        steps = history[-1]["step"] if history else 0
        trained = storage.location(trials_root).join(tid, "manifest.json")
        if trained.is_file():
            # the trial's own train stage is the record of what its model did: the steps it ran and every
            # evaluation (Tune's copy of a trial restored after a killed driver can lack results)
            train_manifest = trained.read_json()
            steps = int(train_manifest.get("counts", {}).get("steps", steps))
            own = [{"step": int(h["step"]), METRIC: float(h[METRIC])}
                   for h in train_manifest.get("extra", {}).get("history", []) if h.get(METRIC) is not None]
            history = own or history
        planned = int(metrics.get("planned_steps") or steps)
        stop = storage.location(trials_root).join(tid, STOP_FILE)
        rows.append({
            "trial_id": tid,
            "settings": {k: result.config.get(k) for k in flat},
            METRIC: history[-1][METRIC] if history else None,
            "best_dev_ndcg@10": max(h[METRIC] for h in history) if history else None,
            "steps": steps, "planned_steps": planned,
            "stopped_early": bool(stop.is_file()) and steps < planned,
            "history": history,
            "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:500],
        })
    return sorted(rows, key=lambda r: r["trial_id"])


def markdown_table(trials: list[dict[str, Any]], flat: dict[str, Any]) -> str:
    """Settings, final dev nDCG@10, steps run / planned, stopped early; the best trial marked."""
    keys = list(flat)
    scored = [t for t in trials if t[METRIC] is not None]
    best = max(scored, key=lambda t: t[METRIC])["trial_id"] if scored else None
    head = ["trial", *keys, "dev nDCG@10", "steps", "stopped early"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in trials:
        cells = [f"**{t['trial_id']}**" if t["trial_id"] == best else t["trial_id"]]
        cells += [_fmt(t["settings"].get(k)) for k in keys]
        cells += [_fmt(t[METRIC]) if t[METRIC] is not None else (t["error"] or "-")[:60],
                  f"{t['steps']}/{t['planned_steps']}", "yes" if t["stopped_early"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    run = sum(t["steps"] for t in trials)
    planned = sum(t["planned_steps"] for t in trials)
    lines.append("")
    lines.append(f"{len(trials)} trials, {sum(t['stopped_early'] for t in trials)} stopped early by ASHA: "
                 f"{run} trial-steps run of {planned} planned ({planned - run} saved).")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot(trials: list[dict[str, Any]], flat: dict[str, Any]) -> bytes:
    """PNG: final dev nDCG@10 against the learning rate, and dev nDCG@10 against steps for every trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for t in trials:
        if t[METRIC] is None:
            continue
        lr = t["settings"].get("train.lr")
        colour = "tab:red" if t["stopped_early"] else "tab:blue"
        if lr is not None:
            left.scatter([lr], [t[METRIC]], color=colour)
        steps = [h["step"] for h in t["history"]]
        right.plot(steps, [h[METRIC] for h in t["history"]], marker="o", color=colour, alpha=0.7)
    if "train.lr" in flat:
        left.set_xscale("log")
    left.set_xlabel("learning rate")
    left.set_ylabel("dev nDCG@10 (final)")
    left.set_title("dev nDCG@10 vs learning rate (red: stopped early)")
    right.set_xlabel("optimizer steps")
    right.set_ylabel("dev nDCG@10")
    right.set_title("dev nDCG@10 per evaluation")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(out: storage.PathLike, trials: list[dict[str, Any]], flat: dict[str, Any]) -> dict[str, str]:
    """``trials.json``, ``trials.md`` and ``tune.png`` under ``out``; returns their URIs."""
    loc = storage.location(out)
    (loc / TABLE_JSON).write_text(json.dumps(trials, indent=2, default=str) + "\n")
    (loc / TABLE_MD).write_text(markdown_table(trials, flat))
    (loc / PLOT).write_bytes(plot(trials, flat))
    return {"json": (loc / TABLE_JSON).uri, "markdown": (loc / TABLE_MD).uri, "plot": (loc / PLOT).uri}
