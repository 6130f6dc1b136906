"""The run's report, rebuilt from its artifacts alone: measures, paired differences, plots, stage times.

Inputs (all under the run root): the run manifest's ``systems`` list (name, run file, evaluation
summary, per-query values; :mod:`inpars_ray.pipeline` writes it; the first system is the baseline, BM25)
and every stage manifest's timings. Outputs: ``report.md``, ``report.json``, ``report_per_query.png``
(per-query nDCG@10 difference of each system from the baseline) and ``report_stage_times.png``.

Any number of systems: each one after the first is compared with the baseline on the queries both were
measured on, per measure: mean difference, a two-sided paired t-test on the per-query values
(``scipy.stats.ttest_rel``), and how many queries got better, worse or stayed equal.
:func:`collections_report` puts several runs (e.g. all of BEIR) in one table.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inpars_ray.errors import ConfigError
from inpars_ray.io.manifest import MANIFEST_NAME, write_json_atomic
from inpars_ray.runtime.deps import require

logger = logging.getLogger(__name__)

REPORT_MD, REPORT_JSON = "report.md", "report.json"
PER_QUERY_PNG, STAGE_TIMES_PNG = "report_per_query.png", "report_stage_times.png"
TEST_NAME = "two-sided paired t-test on per-query values (scipy.stats.ttest_rel)"
#: differences smaller than this count as ties (per-query values are written with 6 decimals)
TIE = 1e-6


@dataclasses.dataclass
class Report:
    """A built report: its Markdown, its data (report.json) and the files written."""

    markdown: str
    data: dict[str, Any]
    paths: dict[str, Path]
    plots: list[Path]


# --- reading the artifacts ---------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: is this a run folder written by 'inpars-ray run'?") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def read_per_query(path: Path) -> dict[str, dict[str, float]]:
    """measure -> query id -> value, from an ``eval.<split>.per_query.tsv`` file."""
    out: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            out.setdefault(row["measure"], {})[row["query_id"]] = float(row["value"])
    return out


def measure_order(root: Path) -> list[str]:
    """The run's configured measures, headline first."""
    return list(_read_json(root / MANIFEST_NAME).get("config", {}).get("measures") or [])


def read_systems(root: Path) -> list[dict[str, Any]]:
    """The evaluated systems of a run (baseline first), each with its per-query values loaded."""
    manifest = _read_json(root / MANIFEST_NAME)
    systems = manifest.get("extra", {}).get("systems")
    if not systems:
        raise ConfigError(f"{root / MANIFEST_NAME} lists no evaluated systems (written by an older version? "
                          "rerun 'inpars-ray run' to add them)")
    out = []
    for system in systems:
        path = root / system["per_query"]
        if not path.exists():
            raise ConfigError(f"{path} (per-query values of {system['name']}) does not exist")
        out.append({**system, "values": read_per_query(path)})
    return out


def stage_times(root: Path) -> list[tuple[str, float, bool]]:
    """(stage, seconds it took when it ran, reused in the last run) for each stage manifest under ``root``.

    A stage resumed from an earlier run keeps the time it took then; the run manifest says how long this
    run spent on it.
    """
    run_manifest = _read_json(root / MANIFEST_NAME)
    this_run = run_manifest.get("timings", {})
    rows = []
    for path in sorted(root.glob("*/*manifest.json")):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        stage, total = manifest.get("stage"), manifest.get("timings", {}).get("total")
        if not stage or total is None or manifest.get("status") != "complete":
            continue
        folder = path.parent.name
        # a stage run for another system (the zero-shot rerank) is named by its folder, like the pipeline's step
        label, step = (stage, stage) if folder in (stage, "bm25") else (f"{stage} ({folder})", folder)
        now = this_run.get(step)
        rows.append((label, float(total), now is not None and now < 0.5 * float(total)))
    for name, seconds in this_run.items():  # steps without a manifest of their own (evaluation)
        if name.startswith("evaluate"):
            rows.append((name, float(seconds), False))
    order = ["index", "retrieve", "generate", "filter", "mine", "train", "rerank"]
    def rank(label: str) -> int:
        stage = label.split(" ")[0]
        return order.index(stage) if stage in order else len(order)

    return sorted(rows, key=lambda r: (rank(r[0]), r[0]))


# --- statistics ---------------------------------------------------------------------------------------
def compare(baseline: Mapping[str, float], system: Mapping[str, float]) -> dict[str, Any]:
    """Paired comparison of one measure on the queries both systems were measured on."""
    stats = require("scipy.stats", "the report's paired t-test")
    queries = sorted(set(baseline) & set(system))
    a = [baseline[q] for q in queries]
    b = [system[q] for q in queries]
    diffs = [y - x for x, y in zip(a, b)]
    n = len(queries)
    p = None
    if n >= 2 and any(abs(d - diffs[0]) > TIE for d in diffs):  # a t-test needs differences that vary
        p = float(stats.ttest_rel(b, a).pvalue)
    elif n >= 2 and abs(diffs[0]) <= TIE:
        p = 1.0  # identical on every query
    return {
        "queries": n,
        "baseline": math.fsum(a) / n if n else None,
        "system": math.fsum(b) / n if n else None,
        "difference": math.fsum(diffs) / n if n else None,
        "p_value": p,
        "better": sum(d > TIE for d in diffs),
        "worse": sum(d < -TIE for d in diffs),
        "tied": sum(abs(d) <= TIE for d in diffs),
        "per_query_difference": dict(zip(queries, diffs)),
    }


def summarise(systems: Sequence[dict[str, Any]], order: Sequence[str] = ()) -> dict[str, Any]:
    """report.json's content: each system's means and each system's comparison with the first.

    ``order``: the measures' order, headline first (the run's configured measures; manifests sort keys).
    """
    if not systems:
        raise ConfigError("no systems to report")
    base = systems[0]
    measures = [m for m in order if m in base["values"]] + [m for m in base["values"] if m not in order]
    out: dict[str, Any] = {"baseline": base["name"], "measures": measures, "test": TEST_NAME, "systems": []}
    for system in systems:
        values = system["values"]
        entry = {"name": system["name"], "run": system.get("run"),
                 "queries": len(next(iter(values.values()), {})),
                 "means": {m: math.fsum(values[m].values()) / len(values[m]) if values.get(m) else None
                           for m in measures}}
        if system is not base:
            entry["vs_baseline"] = {m: compare(base["values"].get(m, {}), system["values"].get(m, {}))
                                    for m in measures if m in system["values"]}
        out["systems"].append(entry)
    return out


# --- rendering ------------------------------------------------------------------------------------------
def _num(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _p_eq(value: float | None) -> str:
    text = _p(value)
    return f"p{text}" if text.startswith("<") else f"p={text}"


def markdown(summary: dict[str, Any], title: str | None = None, times: Sequence[tuple[str, float, bool]] = (),
             plots: Sequence[str] = ()) -> str:
    """The report as Markdown: one table of measures, one of paired differences on the headline measure."""
    measures = summary["measures"]
    head = measures[0]
    base = summary["baseline"]
    lines = [f"## {title}" if title else "## Results", ""]
    lines.append("| system | queries | " + " | ".join(measures) + " |")
    lines.append("|---|---:|" + "---:|" * len(measures))
    for s in summary["systems"]:
        lines.append(f"| {s['name']} | {s['queries']} | " + " | ".join(_num(s["means"].get(m)) for m in measures)
                     + " |")
    others = [s for s in summary["systems"] if "vs_baseline" in s]
    if others:
        lines += ["", f"| {head} vs {base} | Δ | p | better | worse | tied |", "|---|---:|---:|---:|---:|---:|"]
        for s in others:
            c = s["vs_baseline"].get(head)
            if c is None:
                continue
            lines.append(f"| {s['name']} | {_num(c['difference'], '+.4f')} | {_p(c['p_value'])} | {c['better']} | "
                         f"{c['worse']} | {c['tied']} |")
        lines += ["", f"Δ: mean difference over the queries both systems were measured on; p: {summary['test']}."]
    if times:
        lines += ["", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {name}{' (earlier run)' if reused else ''} | {seconds:.1f} |" for name, seconds, reused in times]
    if plots:
        lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def _pyplot():
    matplotlib = require("matplotlib", "the report's plots")
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_per_query(summary: dict[str, Any], path: Path) -> Path | None:
    """One panel per compared system: per-query difference of the headline measure, sorted, as bars."""
    others = [s for s in summary["systems"] if "vs_baseline" in s]
    head = summary["measures"][0]
    if not others:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(others), 1, figsize=(8, 2.6 * len(others) + 0.6), squeeze=False)
    for ax, s in zip(axes[:, 0], others):
        c = s["vs_baseline"][head]
        diffs = sorted(c["per_query_difference"].values(), reverse=True)
        colours = ["#2a9d8f" if d > TIE else "#e76f51" if d < -TIE else "#999999" for d in diffs]
        ax.bar(range(len(diffs)), diffs, width=1.0, color=colours)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlim(-0.5, max(len(diffs), 1) - 0.5)
        ax.set_ylabel(f"Δ {head}")
        ax.set_title(f"{s['name']} − {summary['baseline']}: mean Δ {_num(c['difference'], '+.4f')}, "
                     f"{_p_eq(c['p_value'])}; better {c['better']}, worse {c['worse']}, tied {c['tied']}",
                     fontsize=10)
    axes[-1, 0].set_xlabel(f"queries, sorted by difference ({others[0]['vs_baseline'][head]['queries']} queries)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stage_times(times: Sequence[tuple[str, float, bool]], path: Path) -> Path | None:
    """Horizontal bars: seconds per stage (hatched: computed in an earlier run and reused)."""
    if not times:
        return None
    plt = _pyplot()
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


def build_report(run_dir: str | os.PathLike[str], plots: bool = True) -> Report:
    """Read a run's artifacts, write report.md, report.json and the PNGs under it, and return them."""
    root = Path(run_dir).resolve()
    systems = read_systems(root)
    summary = summarise(systems, measure_order(root))
    times = stage_times(root)
    manifest = _read_json(root / MANIFEST_NAME)
    dataset = manifest.get("config", {}).get("dataset", root.name)
    written = []
    if plots:
        for made in (plot_per_query(summary, root / PER_QUERY_PNG), plot_stage_times(times, root / STAGE_TIMES_PNG)):
            if made is not None:
                written.append(made)
    text = markdown(summary, title=f"{dataset} ({manifest.get('config', {}).get('split', 'test')})",
                    times=times, plots=[str(p) for p in written])
    data = {"run_dir": str(root), "dataset": dataset, **summary,
            "stage_seconds": [{"stage": n, "seconds": s, "earlier_run": r} for n, s, r in times]}
    (root / REPORT_MD).write_text(text, encoding="utf-8")
    write_json_atomic(root / REPORT_JSON, data)
    return Report(markdown=text, data=data, paths={"md": root / REPORT_MD, "json": root / REPORT_JSON},
                  plots=written)


def terminal_table(report: Report) -> str:
    """The report's two tables only (what a run prints at its end)."""
    return markdown({k: report.data[k] for k in ("baseline", "measures", "test", "systems")},
                    title=f"{report.data['dataset']}")


def collections_report(run_dirs: Mapping[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str],
                       published: Mapping[str, Mapping[str, float]] | None = None) -> Report:
    """One table over several runs (e.g. every BEIR collection): the headline measure of each system per
    collection, its difference from the baseline with the paired t-test, and published figures when given
    (``published[name][column]``). Writes ``report.md``, ``report.json`` and ``report_collections.png``
    under ``out_dir``; a run without results is listed as missing."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    names: list[str] = []
    head = None
    for collection, run_dir in run_dirs.items():
        try:
            summary = summarise(read_systems(Path(run_dir)), measure_order(Path(run_dir)))
        except ConfigError as exc:
            rows.append({"collection": collection, "error": str(exc)})
            continue
        head = head or summary["measures"][0]
        row: dict[str, Any] = {"collection": collection, "systems": {}}
        for s in summary["systems"]:
            names.append(s["name"]) if s["name"] not in names else None
            c = s.get("vs_baseline", {}).get(head)
            row["systems"][s["name"]] = {"mean": s["means"].get(head),
                                         **({"difference": c["difference"], "p_value": c["p_value"]} if c else {})}
        row["published"] = dict((published or {}).get(collection, {}))
        rows.append(row)
    pub_cols = sorted({k for r in rows for k in r.get("published", {})})
    head = head or "nDCG@10"
    lines = [f"## {head} per collection", "", "| collection | " + " | ".join(names + [f"published {c}" for c in pub_cols])
             + " |", "|---|" + "---:|" * (len(names) + len(pub_cols))]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['collection']} | " + " | ".join(["missing"] * len(names) + ["–"] * len(pub_cols))
                         + " |")
            continue
        cells = []
        for n in names:
            v = r["systems"].get(n)
            if v is None:
                cells.append("–")
            elif "difference" in v:
                cells.append(f"{_num(v['mean'])} ({_num(v['difference'], '+.3f')}, {_p_eq(v['p_value'])})")
            else:
                cells.append(_num(v["mean"]))
        cells += [_num(r["published"].get(c), ".3f") if r["published"].get(c) is not None else "–" for c in pub_cols]
        lines.append(f"| {r['collection']} | " + " | ".join(cells) + " |")
    lines += ["", f"In brackets: difference from {names[0] if names else 'the baseline'} and p of a {TEST_NAME}."]
    plot = None
    done = [r for r in rows if "error" not in r]
    if done and names:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(done) * len(names) + 2), 4))
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            ax.bar([j + i * width for j in range(len(done))],
                   [(r["systems"].get(n) or {}).get("mean") or 0.0 for r in done], width=width, label=n)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(done))], [r["collection"] for r in done],
                      rotation=30, ha="right")
        ax.set_ylabel(head)
        ax.legend()
        fig.tight_layout()
        plot = out / "report_collections.png"
        fig.savefig(plot, dpi=110)
        plt.close(fig)
        lines += ["", f"![collections]({plot.name})"]
    text = "\n".join(lines) + "\n"
    data = {"measure": head, "test": TEST_NAME, "systems": names, "collections": rows}
    (out / REPORT_MD).write_text(text, encoding="utf-8")
    write_json_atomic(out / REPORT_JSON, data)
    return Report(markdown=text, data=data, paths={"md": out / REPORT_MD, "json": out / REPORT_JSON},
                  plots=[plot] if plot else [])
