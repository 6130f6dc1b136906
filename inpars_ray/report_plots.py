"""The report's plots (PNG, drawn with matplotlib's Agg backend: files only, never a window)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inpars_ray.report_stats import TIE, fmt_num, fmt_p
from inpars_ray.runtime.deps import require


def pyplot():
    matplotlib = require("matplotlib", "the report's plots")
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_per_query(summary: dict[str, Any], path: Path) -> Path | None:
    """One panel per comparison (each system vs the baseline, then each vs the start model): per-query
    difference of the headline measure, sorted, as bars."""
    head, start = summary["measures"][0], (summary.get("start_model") or {}).get("system")
    panels = [(s, s[key][head], against) for key, against in (("vs_baseline", summary["baseline"]),
                                                              ("vs_start_model", start))
              for s in summary["systems"] if head in s.get(key, {})]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels) + 0.6), squeeze=False)
    for ax, (s, c, against) in zip(axes[:, 0], panels):
        diffs = sorted(c["per_query_difference"].values(), reverse=True)
        colours = ["#2a9d8f" if d > TIE else "#e76f51" if d < -TIE else "#999999" for d in diffs]
        ax.bar(range(len(diffs)), diffs, width=1.0, color=colours)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlim(-0.5, max(len(diffs), 1) - 0.5)
        ax.set_ylabel(f"Δ {head}")
        ax.set_title(f"{s['name']} − {against}: mean Δ {fmt_num(c['difference'], '+.4f')}, "
                     f"{fmt_p(c['p_value'], '')}{', Holm ' + fmt_p(c['p_holm'], '') if 'p_holm' in c else ''}; "
                     f"better {c['better']}, worse {c['worse']}, tied {c['tied']} "
                     f"({c['queries']} queries)", fontsize=10)
    axes[-1, 0].set_xlabel("queries, sorted by difference")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stage_times(times: Sequence[tuple[str, float, bool]], path: Path) -> Path | None:
    """Horizontal bars: seconds per stage (hatched: computed in an earlier run and reused)."""
    if not times:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(times) + 1.2))
    names = [name for name, _, _ in times][::-1]
    seconds = [s for _, s, _ in times][::-1]
    bars = ax.barh(names, seconds, color="#457b9d")
    for bar, (_, s, reused) in zip(bars, list(times)[::-1]):
        if reused:
            bar.set_hatch("//")
            bar.set_alpha(0.6)
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {s:.1f}s", va="center", fontsize=9)
    ax.set_xlabel("seconds (hatched: computed in an earlier run, reused)")
    ax.set_title(f"time per stage (total {sum(seconds):.0f}s)")
    ax.set_xlim(0, max(seconds) * 1.18 if max(seconds) > 0 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path



def plot_collections(rows: Sequence[dict[str, Any]], names: Sequence[str], head: str, path: Path) -> Path | None:
    """Grouped bars: the headline measure of each system (``names``) per collection (``rows`` with results)."""
    if not rows or not names:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) * len(names) + 2), 4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar([j + i * width for j in range(len(rows))],
               [(r["systems"].get(n) or {}).get("mean") or 0.0 for r in rows], width=width, label=n)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [r["collection"] for r in rows],
                  rotation=30, ha="right")
    ax.set_ylabel(head)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(curves: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: Path,
                  dev_key: str = "dev_ndcg@10") -> Path | None:
    """Training curves, one line per training run (``(label, per-step history)``): the loss per step, and the
    dev measure (right axis, markers) at the steps it was scored, so a reader sees whether training converged."""
    curves = [(label, [h for h in history if h.get("loss") is not None]) for label, history in curves]
    curves = [(label, history) for label, history in curves if history]
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    dev_ax = None
    for i, (label, history) in enumerate(curves):
        colour = f"C{i}"
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], color=colour, linewidth=1.2,
                label=f"{label}: loss")
        scored = [h for h in history if h.get(dev_key) is not None]
        if scored:
            dev_ax = dev_ax or ax.twinx()
            dev_ax.plot([h["step"] for h in scored], [h[dev_key] for h in scored], color=colour, marker="o",
                        linestyle="--", label=f"{label}: dev {dev_key.removeprefix('dev_')}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    handles, labels = ax.get_legend_handles_labels()
    if dev_ax is not None:
        dev_ax.set_ylabel(dev_key.removeprefix("dev_") + " (dev set)")
        more = dev_ax.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    first, last = curves[0][1][0]["loss"], curves[0][1][-1]["loss"]
    ax.set_title(f"training loss per step ({curves[0][0]}: {fmt_num(first)} -> {fmt_num(last)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
