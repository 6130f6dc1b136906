"""The run's report, rebuilt from its artifacts alone: does training beat the model it started from?

Inputs (under the run root): the run manifest's ``extra.systems`` (name, run file, per-query values;
:mod:`inpars_ray.pipeline` writes it; the first is the baseline, BM25), ``extra.start_model``
(``{"system", "model", "family"}``: the row of the untrained model training starts from, reranking the same
hits with the same settings; without it a ``zero-shot`` row is taken) and every stage manifest's timings.
Outputs: ``report.md`` (a plain sentence first: does InPars, and InPars (tuned), beat the start model on the
first configured measure at p < 0.05), ``report.json`` (``headline``, per system ``vs_baseline`` and
``vs_start_model``), ``report_per_query.png`` and ``report_stage_times.png``. Every system after the first is
compared with the baseline, and every one but the baseline and the start model with the start model (the
``teacher`` row too, for information; it is never the headline), per measure on the queries both were
measured on: mean difference, two-sided paired t-test (``scipy.stats.ttest_rel``, uncorrected for the number
of comparisons), queries better, worse, tied. :func:`collections_report` puts several runs in one table.
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
TEST_NAME = ("two-sided paired t-test on per-query values (scipy.stats.ttest_rel), uncorrected for the number "
             "of comparisons")
TIE = 1e-6  # differences smaller than this count as ties (per-query values are written with 6 decimals)
ALPHA = 0.05  # the headline's significance level
START_SYSTEM, TEACHER = "zero-shot", "teacher"  # the start model's row unless the manifest names one; the teacher's
HEADLINE_SYSTEMS = ("InPars", "InPars (tuned)")  # the trained systems the headline speaks of, when the run has them


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


def read_start_model(manifest: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any] | None:
    """``{"system", "model", "family"}`` from ``extra.start_model``; without it a ``zero-shot`` row (model from
    ``config.inpars.zero_shot``). None when that row is not among ``names``, the evaluated systems."""
    declared = (manifest.get("extra") or {}).get("start_model") or {}
    system = declared.get("system") or START_SYSTEM
    if system not in names:
        if declared:
            logger.warning("start model %r was not evaluated (systems: %s)", system, ", ".join(names))
        return None
    model = declared.get("model")
    if model is None and system == START_SYSTEM:
        model = ((manifest.get("config") or {}).get("inpars") or {}).get("zero_shot")
    return {"system": system, "model": model, "family": declared.get("family")}


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
    order = ["index", "retrieve", "generate", "filter", "consistency", "mine", "teacher", "train", "rerank"]
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
    mean = (lambda xs: math.fsum(xs) / n if n else None)
    return {"queries": n, "baseline": mean(a), "system": mean(b), "difference": mean(diffs), "p_value": p,
            "better": sum(d > TIE for d in diffs), "worse": sum(d < -TIE for d in diffs),
            "tied": sum(abs(d) <= TIE for d in diffs), "per_query_difference": dict(zip(queries, diffs))}


def summarise(systems: Sequence[dict[str, Any]], order: Sequence[str] = (),
              start_model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """report.json's content: each system's means, ``vs_baseline`` (the first system), ``vs_start_model`` and
    the headline. ``order``: the configured measures, headline first; ``start_model``: :func:`read_start_model`."""
    if not systems:
        raise ConfigError("no systems to report")
    base = systems[0]
    measures = [m for m in order if m in base["values"]] + [m for m in base["values"] if m not in order]
    start = next((s for s in systems if start_model and s["name"] == start_model.get("system")), None)
    out: dict[str, Any] = {"baseline": base["name"], "measures": measures, "test": TEST_NAME,
                           "start_model": dict(start_model) if start is not None else None, "systems": []}
    for system in systems:
        values = system["values"]
        role = ("baseline" if system is base else "start model" if system is start
                else "teacher" if system["name"] == TEACHER else "trained")
        entry = {"name": system["name"], "role": role, "run": system.get("run"),
                 "queries": len(next(iter(values.values()), {})),
                 "means": {m: math.fsum(values[m].values()) / len(values[m]) if values.get(m) else None
                           for m in measures}}
        for key, other in (("vs_baseline", base if system is not base else None),
                           ("vs_start_model", start if role in ("trained", "teacher") else None)):
            if other is not None:
                entry[key] = {m: compare(other["values"].get(m, {}), values[m]) for m in measures if m in values}
        out["systems"].append(entry)
    out["headline_detail"] = headline_detail(out)
    out["headline"] = " ".join(d["sentence"] for d in out["headline_detail"])
    return out


def summarise_run(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`summarise` of a run folder, and its run manifest."""
    systems, manifest = read_systems(root), _read_json(root / MANIFEST_NAME)
    return summarise(systems, measure_order(root), read_start_model(manifest, [s["name"] for s in systems])), manifest


def start_model_label(start: Mapping[str, Any]) -> str:
    """'the start model (all-MiniLM-L6-v2, bi-encoder)': its name (a folder or URI: the last part) and family."""
    model = start.get("model")
    if isinstance(model, str) and (model.startswith("/") or "://" in model):
        model = model.rstrip("/").rsplit("/", 1)[-1] or model
    return f"the start model ({', '.join(str(x) for x in (model, start.get('family')) if x) or start['system']})"


def headline_detail(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per headline sentence: InPars, then InPars (tuned) (else the first trained system; never the
    teacher) against the start model on the first measure: ``verdict`` (beats: Δ > 0 and p < ``ALPHA``; not
    significant; below; no comparison), ``difference``, ``p_value``, ``queries`` and the ``sentence``."""
    head, start = summary["measures"][0], summary.get("start_model")
    trained = [s for s in summary["systems"] if s.get("role") == "trained"]
    subjects = [s for name in HEADLINE_SYSTEMS for s in trained if s["name"] == name] or trained[:1]
    if not subjects:
        return [{"system": None, "measure": head, "verdict": "no comparison", "difference": None, "p_value": None,
                 "queries": 0, "sentence": "This run trained no system to compare with the start model."}]
    out = []
    for s in subjects if start else subjects[:1]:
        c = (s.get("vs_start_model" if start else "vs_baseline") or {}).get(head) or {"queries": 0}
        name, diff, p, n = s["name"], c.get("difference"), c.get("p_value"), c["queries"]
        numbers, test = f"{_num(diff, '+.4f')} {head} on {n} queries", f"paired t-test {_p(p, ' ')}"
        if start is None:
            verdict = "no comparison"
            text = ("This run has no start-model comparison (no zero-shot row: set inpars.zero_shot to rerank the "
                    "same hits with the untrained start model)" + (f"; {name} vs {summary['baseline']}: {numbers} "
                                                                   f"({test})" if n else ""))
        elif not n:
            verdict, text = "no comparison", f"{name} and {start_model_label(start)} share no query with {head}"
        elif diff > TIE and p is not None and p < ALPHA:
            verdict, text = "beats", f"{name} beats {start_model_label(start)} by {numbers} ({test})"
        elif diff < -TIE:
            verdict, text = "below", f"{name} is below {start_model_label(start)} by {numbers} ({test}" + (
                ")" if p is not None and p < ALPHA else f", not significant at {ALPHA:g})")
        else:
            verdict = "not significant"
            text = (f"{name} does not beat {start_model_label(start)}: {numbers}, "
                    + (f"{_p(p, ' ')} (not significant at {ALPHA:g})" if p is not None
                       else "no paired t-test (the per-query differences do not vary)"))
        out.append({"system": name, "measure": head, "verdict": verdict, "difference": diff, "p_value": p,
                    "queries": n, "sentence": text + "."})
    return out


# --- rendering ------------------------------------------------------------------------------------------
def _num(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def _p(value: float | None, sep: str | None = None) -> str:
    """'0.047', '<0.001', 'n/a'; with ``sep`` '': 'p=0.047', 'p<0.001'; with ``sep`` ' ': 'p = 0.047', 'p < 0.001'."""
    text = "n/a" if value is None else "<0.001" if value < 0.001 else f"{value:.3f}"
    if sep is None:
        return text
    return f"p{sep}<{sep}{text[1:]}" if text.startswith("<") else f"p{sep}={sep}{text}"


def _comparison_table(rows: Sequence[dict[str, Any]], key: str, head: str, against: str) -> list[str]:
    lines = ["", f"| {head} vs {against} | Δ | p | better | worse | tied |", "|---|---:|---:|---:|---:|---:|"]
    for s, c in ((s, s[key][head]) for s in rows if head in s[key]):
        name = f"{s['name']} (for information)" if s.get("role") == "teacher" and key == "vs_start_model" else s["name"]
        lines.append(f"| {name} | {_num(c['difference'], '+.4f')} | {_p(c['p_value'])} | {c['better']} | "
                     f"{c['worse']} | {c['tied']} |")
    return lines


def markdown(summary: dict[str, Any], title: str | None = None, times: Sequence[tuple[str, float, bool]] = (),
             plots: Sequence[str] = ()) -> str:
    """The report as Markdown: the headline sentence first, then one table of measures and the paired
    differences of the headline measure from the baseline and from the start model."""
    measures, base = summary["measures"], summary["baseline"]
    head = measures[0]
    lines = [summary["headline"], ""] if summary.get("headline") else []
    lines += [f"## {title}" if title else "## Results", ""]
    lines.append("| system | queries | " + " | ".join(measures) + " |")
    lines.append("|---|---:|" + "---:|" * len(measures))
    for s in summary["systems"]:
        lines.append(f"| {s['name']} | {s['queries']} | " + " | ".join(_num(s["means"].get(m)) for m in measures)
                     + " |")
    others = [s for s in summary["systems"] if "vs_baseline" in s]
    start, versus_start = summary.get("start_model"), [s for s in summary["systems"] if "vs_start_model" in s]
    if others:
        lines += _comparison_table(others, "vs_baseline", head, base)
    if start and versus_start:
        lines += _comparison_table(versus_start, "vs_start_model", head, f"start model ({start['system']})")
        lines += ["", f"{start['system']}: {start_model_label(start)}, untrained (the model training starts from), "
                  "reranking the same hits with the same settings."]
    if others:
        lines += ["", f"Δ: mean difference over the queries both systems were measured on; p: {summary['test']}. "
                  "Every measure's comparisons are in report.json."]
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
    """One panel per comparison (each system vs the baseline, then each vs the start model): per-query
    difference of the headline measure, sorted, as bars."""
    head, start = summary["measures"][0], (summary.get("start_model") or {}).get("system")
    panels = [(s, s[key][head], against) for key, against in (("vs_baseline", summary["baseline"]),
                                                              ("vs_start_model", start))
              for s in summary["systems"] if head in s.get(key, {})]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels) + 0.6), squeeze=False)
    for ax, (s, c, against) in zip(axes[:, 0], panels):
        diffs = sorted(c["per_query_difference"].values(), reverse=True)
        colours = ["#2a9d8f" if d > TIE else "#e76f51" if d < -TIE else "#999999" for d in diffs]
        ax.bar(range(len(diffs)), diffs, width=1.0, color=colours)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlim(-0.5, max(len(diffs), 1) - 0.5)
        ax.set_ylabel(f"Δ {head}")
        ax.set_title(f"{s['name']} − {against}: mean Δ {_num(c['difference'], '+.4f')}, "
                     f"{_p(c['p_value'], '')}; better {c['better']}, worse {c['worse']}, tied {c['tied']} "
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
    summary, manifest = summarise_run(root)
    times = stage_times(root)
    dataset = manifest.get("config", {}).get("dataset", root.name)
    written = [made for made in (plot_per_query(summary, root / PER_QUERY_PNG),
                                 plot_stage_times(times, root / STAGE_TIMES_PNG)) if made is not None] if plots else []
    text = markdown(summary, title=f"{dataset} ({manifest.get('config', {}).get('split', 'test')})",
                    times=times, plots=[str(p) for p in written])
    data = {"run_dir": str(root), "dataset": dataset, **summary,
            "stage_seconds": [{"stage": n, "seconds": s, "earlier_run": r} for n, s, r in times]}
    (root / REPORT_MD).write_text(text, encoding="utf-8")
    write_json_atomic(root / REPORT_JSON, data)
    return Report(markdown=text, data=data, paths={"md": root / REPORT_MD, "json": root / REPORT_JSON},
                  plots=written)


def terminal_table(report: Report) -> str:
    """The headline sentence and the report's tables (what a run prints at its end)."""
    keys = ("baseline", "measures", "test", "systems", "start_model", "headline")
    return markdown({k: report.data.get(k) for k in keys}, title=f"{report.data['dataset']}")


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
            summary, _ = summarise_run(Path(run_dir))
        except ConfigError as exc:
            rows.append({"collection": collection, "error": str(exc)})
            continue
        head = head or summary["measures"][0]
        row: dict[str, Any] = {"collection": collection, "systems": {}, "start_model": summary["start_model"],
                               "headline": summary["headline"], "published": {**(published or {}).get(collection, {})}}
        for s in summary["systems"]:
            names.append(s["name"]) if s["name"] not in names else None
            c, z = ({k: v[k] for k in ("difference", "p_value")} if v else None
                    for v in (s.get(key, {}).get(head) for key in ("vs_baseline", "vs_start_model")))
            row["systems"][s["name"]] = {"mean": s["means"].get(head), **(c or {}),
                                         **({"vs_start_model": z} if z else {})}
        rows.append(row)
    pub_cols = sorted({k for r in rows for k in r.get("published", {})})
    # one column per system compared with the start model in some run: its difference and p
    vs_start = [n for n in names if any("vs_start_model" in (r.get("systems", {}).get(n) or {}) for r in rows)]
    head = head or "nDCG@10"
    columns = names + [f"{n} − start model" for n in vs_start] + [f"published {c}" for c in pub_cols]
    lines = [f"## {head} per collection", "", "| collection | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['collection']} | " + " | ".join(["missing"] * len(names)
                                                                + ["–"] * (len(vs_start) + len(pub_cols))) + " |")
            continue
        cells = ["–" if v is None else f"{_num(v['mean'])} ({_num(v['difference'], '+.3f')}, {_p(v['p_value'], '')})"
                 if "difference" in v else _num(v["mean"]) for v in (r["systems"].get(n) for n in names)]
        for z in ((r["systems"].get(n) or {}).get("vs_start_model") for n in vs_start):
            cells.append(f"{_num(z['difference'], '+.3f')} ({_p(z['p_value'], '')})" if z else "–")
        cells += [_num(r["published"].get(c), ".3f") if r["published"].get(c) is not None else "–" for c in pub_cols]
        lines.append(f"| {r['collection']} | " + " | ".join(cells) + " |")
    lines += ["", f"In brackets: difference from {names[0] if names else 'the baseline'} and p of a {TEST_NAME}."
              + (" '− start model': difference from the run's untrained start model, same test." if vs_start else "")]
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
