"""The run's report, rebuilt from its artifacts alone: does training beat the model it started from?

Inputs (under the run root): the run manifest's ``extra.systems`` (name, run file, per-query values;
:mod:`inpars_ray.pipeline` writes it; the first is the baseline, BM25), ``extra.start_model``
(``{"system", "model", "family"}``: the row of the untrained model training starts from, reranking the same
hits with the same settings; without it a ``zero-shot`` row is taken) and every stage manifest's timings.
Outputs: ``report.md`` (a plain sentence first: does InPars, and InPars (tuned), beat the start model on the
first configured measure at p < 0.05), ``report.json`` (``headline``, per system ``vs_baseline`` and
``vs_start_model``), ``report_per_query.png``, ``report_stage_times.png`` and ``report_training.png`` (the
training loss per step and the dev measure where scored, from ``train/history.json``). The comparisons
(paired t-test, uncorrected, and Holm-adjusted where a table compares several systems with one reference;
better, worse, tied) are :mod:`inpars_ray.report_stats`', the plots :mod:`inpars_ray.report_plots`'; here:
reading the run folder, the Markdown, and writing the files.
:func:`collections_report` puts several runs in one table.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inpars_ray.errors import ConfigError
from inpars_ray.io.manifest import MANIFEST_NAME, write_json_atomic
from inpars_ray.report_plots import plot_collections, plot_per_query, plot_stage_times, plot_training
from inpars_ray.report_stats import (
    CORRECTION,
    START_SYSTEM,
    TEST_NAME,
    compare,
    fmt_num,
    fmt_p,
    headline_detail,
    holm_table,
    start_model_label,
    summarise,
)

__all__ = ["Report", "build_report", "collections_report", "compare", "evaluation_note", "headline_detail",
           "markdown", "read_evaluation", "read_per_query", "read_start_model", "read_systems", "read_training",
           "stage_times", "summarise", "summarise_run", "terminal_table"]

logger = logging.getLogger(__name__)

REPORT_MD, REPORT_JSON = "report.md", "report.json"
PER_QUERY_PNG, STAGE_TIMES_PNG, TRAINING_PNG = "report_per_query.png", "report_stage_times.png", "report_training.png"


@dataclasses.dataclass
class Report:
    """A built report: its Markdown, its data (report.json) and the files written.

    ``paths`` (``md``, ``json``) and ``plots`` are local files; for a run root on an object store the report is
    built in a local copy that is removed, and they are empty: ``where`` (report.md) and ``published`` (every
    file written, report.md and report.json first) say where the files are, a path or a URI."""

    markdown: str
    data: dict[str, Any]
    paths: dict[str, Path]
    plots: list[Path]
    where: str = ""
    published: list[str] = dataclasses.field(default_factory=list)


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


def read_evaluation(root: Path, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """How the run's systems were evaluated, from their evaluation summaries (``extra.systems[].summary``):
    ``{"ignore_identical_ids": bool, or None when the systems differ, "identical_ids_dropped": {system: hits}}``
    (:mod:`inpars_ray.stages.evaluate`, BEIR's convention). None when no summary records it (older runs)."""
    dropped: dict[str, int] = {}
    settings: set[bool] = set()
    for system in (manifest.get("extra") or {}).get("systems") or []:
        try:
            summary = json.loads((root / system["summary"]).read_text()) if system.get("summary") else {}
        except (OSError, json.JSONDecodeError):
            continue
        if "ignore_identical_ids" in summary:
            settings.add(bool(summary["ignore_identical_ids"]))
            dropped[system["name"]] = int(summary.get("identical_ids_dropped") or 0)
    if not dropped:
        return None
    return {"ignore_identical_ids": settings.pop() if len(settings) == 1 else None, "identical_ids_dropped": dropped}


def evaluation_note(evaluation: Mapping[str, Any]) -> str:
    """One sentence on BEIR's identical-id convention as this run applied it."""
    dropped = evaluation["identical_ids_dropped"]
    if evaluation["ignore_identical_ids"] is None:
        return ("The systems were evaluated with different ignore_identical_ids settings (hits dropped: "
                + ", ".join(f"{n} {k}" for n, k in dropped.items()) + "): their measures are not comparable.")
    if not evaluation["ignore_identical_ids"]:
        return ("Hits whose document id equals the query id were kept (BEIR's evaluation drops them: "
                "ignore_identical_ids).")
    counts = ", ".join(f"{n} {k}" for n, k in dropped.items()) if any(dropped.values()) else "none in this run"
    return ("As in BEIR's evaluation (ignore_identical_ids), a hit whose document id equals its query id was dropped "
            f"before measuring (hits dropped: {counts}).")


def read_training(root: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    """(folder, per-step history) of each training run directly under ``root`` (``train/``): its
    ``history.json`` (written beside the model), else its stage manifest's ``extra.history`` (runs from before
    the file existed); a run with neither is left out."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        history = None
        try:
            if (folder / "history.json").is_file():
                history = json.loads((folder / "history.json").read_text())
            elif (folder / MANIFEST_NAME).is_file():
                manifest = json.loads((folder / MANIFEST_NAME).read_text())
                if manifest.get("stage") == "train" and manifest.get("status") == "complete":
                    history = (manifest.get("extra") or {}).get("history")
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("training history of %s unreadable (%s): no curve for it", folder, exc)
        if isinstance(history, list) and history:
            out.append((folder.name, history))
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
    skipped = {"teacher"} if run_manifest.get("extra", {}).get("teacher_skipped") else set()
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
        if folder in skipped:  # an earlier run's folder this run did not use
            continue
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


def summarise_run(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`summarise` of a run folder, and its run manifest."""
    systems, manifest = read_systems(root), _read_json(root / MANIFEST_NAME)
    return summarise(systems, measure_order(root), read_start_model(manifest, [s["name"] for s in systems])), manifest


# --- rendering ------------------------------------------------------------------------------------------
def _comparison_table(rows: Sequence[dict[str, Any]], key: str, head: str, against: str) -> list[str]:
    """One comparison table; with more than one system in it, the Holm-adjusted p beside the uncorrected one."""
    table = [(s, s[key][head]) for s in rows if head in s[key]]
    holm = any("p_holm" in c for _, c in table)
    p_cols = "p (uncorrected) | p (Holm) |" if holm else "p |"
    lines = ["", f"| {head} vs {against} | Δ | {p_cols} better | worse | tied |",
             "|---|---:|" + "---:|" * (5 if holm else 4)]
    for s, c in table:
        name = f"{s['name']} (for information)" if s.get("role") == "teacher" and key == "vs_start_model" else s["name"]
        p = f"{fmt_p(c['p_value'])} | {fmt_p(c['p_holm'])}" if holm else fmt_p(c["p_value"])
        lines.append(f"| {name} | {fmt_num(c['difference'], '+.4f')} | {p} | {c['better']} | {c['worse']} | "
                     f"{c['tied']} |")
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
        lines.append(f"| {s['name']} | {s['queries']} | " + " | ".join(fmt_num(s["means"].get(m)) for m in measures)
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
        lines += ["", f"Δ: mean difference over the queries both systems were measured on; p: {summary['test']}"
                  + (f"; p (Holm): {summary['correction']}" if summary.get("correction") else "")
                  + ". Every measure's comparisons are in report.json."]
    if summary.get("evaluation"):
        lines += ["", evaluation_note(summary["evaluation"])]
    if times:
        lines += ["", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {name}{' (earlier run)' if reused else ''} | {seconds:.1f} |" for name, seconds, reused in times]
    if plots:
        lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def build_report(run_dir: str | os.PathLike[str], plots: bool = True) -> Report:
    """Read a run's artifacts, write report.md, report.json and the PNGs under it, and return them.

    ``run_dir`` is a local folder or an object-store URI (``gs://bucket/run``): the files the report reads (the
    manifests, the evaluation summaries and per-query values, the training history) are copied to a temporary
    folder, the report is built there, and what it wrote is published back beside the run."""
    from inpars_ray.io import storage

    loc = storage.location(str(run_dir))
    if not loc.is_local:
        return _build_remote(loc, plots)
    report = _build_local(Path(run_dir).resolve(), plots)
    report.where, report.published = str(report.paths["md"]), [str(p) for p in (*report.paths.values(), *report.plots)]
    return report


def _build_remote(root, plots: bool) -> Report:
    import tempfile

    from inpars_ray.io import artifacts

    wanted = [n for n in root.files() if n.endswith(".json") and n.count("/") <= 1
              or n.endswith(".tsv") and "/eval." in f"/{n}"]
    with tempfile.TemporaryDirectory(prefix="inpars-report-") as tmp:
        local = artifacts.download_dir(root, Path(tmp) / "run", names=wanted)
        report = _build_local(local, plots, run_dir=root.uri)
        published = []
        for made in [report.paths["md"], report.paths["json"], *report.plots]:
            target = root.join(made.name)
            target.write_bytes(Path(made).read_bytes())
            published.append(target.uri)
    logger.info("report of %s published: %s", root.uri, ", ".join(published))
    return Report(markdown=report.markdown, data=report.data, paths={}, plots=[], where=published[0],
                  published=published)


def _build_local(root: Path, plots: bool, run_dir: str | None = None) -> Report:
    """The report of the run folder ``root`` (``run_dir``: the run root as the report names it)."""
    run_dir = run_dir or str(root)
    summary, manifest = summarise_run(root)
    evaluation = read_evaluation(root, manifest)
    if evaluation is not None:
        summary["evaluation"] = evaluation
    times = stage_times(root)
    dataset = manifest.get("config", {}).get("dataset", run_dir.rstrip("/").rsplit("/", 1)[-1])
    written = [made for made in (plot_per_query(summary, root / PER_QUERY_PNG),
                                 plot_stage_times(times, root / STAGE_TIMES_PNG),
                                 plot_training(read_training(root), root / TRAINING_PNG)) if made is not None] \
        if plots else []
    text = markdown(summary, title=f"{dataset} ({manifest.get('config', {}).get('split', 'test')})",
                    times=times, plots=[str(p) for p in written])
    data = {"run_dir": run_dir, "dataset": dataset, **summary,
            "stage_seconds": [{"stage": n, "seconds": s, "earlier_run": r} for n, s, r in times]}
    (root / REPORT_MD).write_text(text, encoding="utf-8")
    write_json_atomic(root / REPORT_JSON, data)
    return Report(markdown=text, data=data, paths={"md": root / REPORT_MD, "json": root / REPORT_JSON},
                  plots=written)


def terminal_table(report: Report) -> str:
    """The headline sentence and the report's tables (what a run prints at its end)."""
    keys = ("baseline", "measures", "test", "correction", "systems", "start_model", "headline", "evaluation")
    return markdown({k: report.data.get(k) for k in keys}, title=f"{report.data['dataset']}")


def _ps(c: Mapping[str, Any]) -> str:
    """'p=0.047', and the Holm-adjusted p beside it when the table has one: 'p=0.047, Holm p=0.094'."""
    return fmt_p(c["p_value"], "") + (f", Holm {fmt_p(c['p_holm'], '')}" if "p_holm" in c else "")


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
    # Holm over every comparison of this table (each system against the baseline and against the start model, in
    # every collection): the question the table answers is "where does a system beat its reference?"
    holm_table([c for r in rows for v in r.get("systems", {}).values()
                for c in ([v] if "difference" in v else []) + ([v["vs_start_model"]] if "vs_start_model" in v else [])])
    holm = any("p_holm" in v for r in rows for v in r.get("systems", {}).values())
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
        cells = ["–" if v is None else f"{fmt_num(v['mean'])} ({fmt_num(v['difference'], '+.3f')}, {_ps(v)})"
                 if "difference" in v else fmt_num(v["mean"]) for v in (r["systems"].get(n) for n in names)]
        for z in ((r["systems"].get(n) or {}).get("vs_start_model") for n in vs_start):
            cells.append(f"{fmt_num(z['difference'], '+.3f')} ({_ps(z)})" if z else "–")
        cells += [fmt_num(r["published"].get(c), ".3f") if r["published"].get(c) is not None else "–" for c in pub_cols]
        lines.append(f"| {r['collection']} | " + " | ".join(cells) + " |")
    lines += ["", f"In brackets: difference from {names[0] if names else 'the baseline'} and p of a {TEST_NAME}"
              + (f"; Holm p: {CORRECTION}, every comparison of the table together" if holm else "") + "."
              + (" '− start model': difference from the run's untrained start model, same test." if vs_start else "")]
    plot = plot_collections([r for r in rows if "error" not in r], names, head, out / "report_collections.png")
    if plot is not None:
        lines += ["", f"![collections]({plot.name})"]
    text = "\n".join(lines) + "\n"
    data = {"measure": head, "test": TEST_NAME, **({"correction": CORRECTION} if holm else {}), "systems": names,
            "collections": rows}
    (out / REPORT_MD).write_text(text, encoding="utf-8")
    write_json_atomic(out / REPORT_JSON, data)
    return Report(markdown=text, data=data, paths={"md": out / REPORT_MD, "json": out / REPORT_JSON},
                  plots=[plot] if plot else [])
