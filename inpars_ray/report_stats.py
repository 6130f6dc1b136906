"""The report's statistics: paired comparisons of per-query values, the summary report.json holds, and the
headline sentence (does InPars beat the start model?).

Every system after the first is compared with the baseline, and every one but the baseline and the start model
with the start model (the ``teacher`` row too, for information; it is never the headline), per measure on the
queries both were measured on: mean difference, two-sided paired t-test (``scipy.stats.ttest_rel``), queries
better, worse, tied. Where a table compares more than one system with its reference (one measure, against
the baseline or against the start model), each comparison also carries its p-value adjusted by Holm's
step-down method over that table's comparisons (``p_holm``), beside the uncorrected ``p_value``. Reading the
run folder and writing the files is :mod:`inpars_ray.report`'s job.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from inpars_ray.errors import ConfigError
from inpars_ray.runtime.deps import require

TEST_NAME = ("two-sided paired t-test on per-query values (scipy.stats.ttest_rel), uncorrected for the number "
             "of comparisons")
TIE = 1e-6  # differences smaller than this count as ties (per-query values are written with 6 decimals)
ALPHA = 0.05  # the headline's significance level
START_SYSTEM, TEACHER = "zero-shot", "teacher"  # the start model's row unless the manifest names one; the teacher's
HEADLINE_SYSTEMS = ("InPars", "InPars (tuned)")  # the trained systems the headline speaks of, when the run has them
CORRECTION = ("Holm's step-down adjustment over the table's comparisons (Holm 1979, Scand. J. Statist. 6:65-70; "
              "it bounds the family-wise error rate)")


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

    def mean(xs: list[float]) -> float | None:
        return math.fsum(xs) / n if n else None

    return {"queries": n, "baseline": mean(a), "system": mean(b), "difference": mean(diffs), "p_value": p,
            "better": sum(d > TIE for d in diffs), "worse": sum(d < -TIE for d in diffs),
            "tied": sum(abs(d) <= TIE for d in diffs), "per_query_difference": dict(zip(queries, diffs))}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the order given (Holm 1979, "A simple sequentially rejective
    multiple test procedure", Scand. J. Statist. 6:65-70): the i-th smallest of m p-values (i from 0) is
    multiplied by m - i, capped at 1, and made non-decreasing in that order, so that rejecting where the
    adjusted p < alpha is Holm's procedure at level alpha. A missing p-value (no test) stays None and does not
    count in m. scipy (1.17) adjusts for the false discovery rate only (``false_discovery_control``)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def holm_table(comparisons: Sequence[dict[str, Any]]) -> None:
    """Add ``p_holm`` (and ``holm_comparisons``, the m it was adjusted for) to each of one table's
    comparisons (:func:`compare`'s dicts), when the table has more than one."""
    if len(comparisons) < 2:
        return
    adjusted = holm([c["p_value"] for c in comparisons])
    tested = sum(p is not None for p in adjusted)
    for c, p in zip(comparisons, adjusted):
        c["p_holm"], c["holm_comparisons"] = p, tested


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
                           "start_model": dict(start_model) if start_model and start is not None else None, "systems": []}
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
    for key in ("vs_baseline", "vs_start_model"):
        for measure in measures:
            holm_table([s[key][measure] for s in out["systems"] if measure in s.get(key, {})])
    if any("p_holm" in c for s in out["systems"] for key in ("vs_baseline", "vs_start_model")
           for c in s.get(key, {}).values()):
        out["correction"] = CORRECTION
    out["headline_detail"] = headline_detail(out)
    out["headline"] = " ".join(d["sentence"] for d in out["headline_detail"])
    return out



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
        numbers, test = f"{fmt_num(diff, '+.4f')} {head} on {n} queries", f"paired t-test {fmt_p(p, ' ')}"
        if start is None:
            verdict = "no comparison"
            text = ("This run has no start-model comparison (no zero-shot row: set inpars.zero_shot to rerank the "
                    "same hits with the untrained start model)" + (f"; {name} vs {summary['baseline']}: {numbers} "
                                                                   f"({test})" if n else ""))
        elif not n:
            verdict, text = "no comparison", f"{name} and {start_model_label(start)} share no query with {head}"
        elif diff is not None and diff > TIE and p is not None and p < ALPHA:
            verdict, text = "beats", f"{name} beats {start_model_label(start)} by {numbers} ({test})"
        elif diff is not None and diff < -TIE:
            verdict, text = "below", f"{name} is below {start_model_label(start)} by {numbers} ({test}" + (
                ")" if p is not None and p < ALPHA else f", not significant at {ALPHA:g})")
        else:
            verdict = "not significant"
            text = (f"{name} does not beat {start_model_label(start)}: {numbers}, "
                    + (f"{fmt_p(p, ' ')} (not significant at {ALPHA:g})" if p is not None
                       else "no paired t-test (the per-query differences do not vary)"))
        out.append({"system": name, "measure": head, "verdict": verdict, "difference": diff, "p_value": p,
                    "queries": n, "sentence": text + "."})
    return out


# --- formatting (the headline, the tables and the plot titles) -----------------------------------------
def fmt_num(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def fmt_p(value: float | None, sep: str | None = None) -> str:
    """'0.047', '<0.001', 'n/a'; with ``sep`` '': 'p=0.047', 'p<0.001'; with ``sep`` ' ': 'p = 0.047', 'p < 0.001'."""
    text = "n/a" if value is None else "<0.001" if value < 0.001 else f"{value:.3f}"
    if sep is None:
        return text
    return f"p{sep}<{sep}{text[1:]}" if text.startswith("<") else f"p{sep}={sep}{text}"

