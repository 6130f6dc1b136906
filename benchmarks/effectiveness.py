"""Effectiveness of InPars' levers against the zero-shot start model, measured by the engine itself.

Every figure here comes from ``inpars-ray run``: each (lever, seed) is one run of the product, exactly as a
user runs it (``.venv/bin/inpars-ray run --config <generated yaml>`` in a subprocess), and this script only
writes the configs, starts the runs and reads what they wrote (``manifest.json``, ``report.json`` and the
per-query evaluation files listed under the manifest's ``extra.systems``). It has no training, ranking or
scoring code of its own.

Configs: ``configs/demo.yaml`` scaled down (:data:`SCALE`: 100 generated documents, BM25's top 20 reranked,
4 epochs), then one lever overlay (:func:`lever_overlays`) merged over it, then ``inpars.seed`` and ``out_dir``. The
engine has no cap on the number of test queries, so every run is evaluated on the collection's whole test
split (python-docstrings: 400 queries).

Levers (each against the zero-shot start model, i.e. ``local:minilm`` untrained, reranking the same hits):

* ``hard-labels``: InPars as before (binary labels, in-batch contrastive loss, both towers trained);
* ``hard-labels+query-only``, ``hard-labels+wise``: that, with the query tower only / WiSE-FT alpha 0.5;
* ``hard-labels+whole-batch``: that, with every document of the whole batch as a negative (``in_batch:
  batch``; "as before" is the micro-batch's documents only); ``hard-labels+dense+wise+whole-batch``: hard
  labels on the demo's data (4 BM25 and 2 dense negatives), whole-batch negatives and WiSE-FT 0.5;
* ``teacher``: GPL, all-mpnet-base-v2 (``local:mpnet``) scores each query's positive and 4 BM25 negatives,
  the student learns the margins (``margin-mse``);
* ``teacher+query-only``, ``teacher+query-only+wise``: that, with the query tower only, then WiSE-FT 0.5;
* ``teacher+wise``: the teacher, both towers, WiSE-FT 0.5;
* ``teacher+dense``: the teacher, with 2 dense negatives (the start model's top 30) beside BM25's 4;
* ``teacher+dense+wise+bm25``: the demo's recipe with BM25 fused into the teacher (weight 0.2);
* ``teacher+dense+hard``: the teacher's margins and hard labels together (``contrastive_weight`` 0.01, whole-batch
  negatives), dense negatives, no WiSE-FT;
* ``teacher+dense+hard+fewshot-sets``: that, with 4 prompts of disjoint few-shot examples (``generate.fewshot_sets``),
  each document given one, in a run folder of its own (its generation differs);
* ``teacher+dense+hard+no-titles``: that, with documents prompted without their titles (``generate.titles``), in a
  run folder of its own;
* ``teacher+dense+hard+titles-auto``: that, with ``generate.titles: auto`` (the demo's setting), in a run folder of
  its own;
* ``teacher+dense+hard+untitled-retry``: that, with titles, but an answer that copies its document or runs to the
  token limit asked once more without them (``generate.untitled_retry``), in a run folder of its own;
* ``teacher+dense+wise+finished``: the demo's recipe, dropping queries whose generation ran to
  ``max_new_tokens`` without ending its line (``filter.drop_unfinished``);
* ``teacher+sampled``, ``teacher+dense+wise+sampled``: the teacher (alone, or with the demo's recipe), 3
  queries per document (greedy, then 2 sampled: top-k 25, top-p 0.95), in a run folder of their own (their
  generation differs);
* ``generator`` (``--with-gemma``): the best lever with a Gemma generator, if the engine has a local one.

Reuse: the levers of one seed run one after another in the SAME run folder, so the stages whose config does
not change (index, BM25, generate, filter, mine, the teacher, the zero-shot rerank) are found complete by the
engine and skipped ("already complete" on their stage line; recorded per run as ``reused_stages``); train and
rerank are redone. Levers are ordered so that the mine stage (negatives 1, then 4) changes once per seed. Right
after each run its ``report.json``, ``manifest.json`` and evaluation files are copied to
``<work-dir>/seed-<s>/levers/<lever>/`` (the next lever overwrites the run folder). A (lever, seed) whose copy
exists with the same config is skipped (``--force`` reruns it); an interrupted run resumes in the engine.

Full benchmark: 3 seeds x 20 levers = 60 runs; never run whole here, it was measured a few levers at a time
(``--levers``). One lever over 3 seeds, generation included, took 27-32 minutes per seed on this 2-core
machine while a test run shared it (``teacher+dense+wise+bm25``); a lever that reuses its seed's
generation, mining and zero-shot costs its teacher (when its key changes), train and rerank::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/effectiveness.py --seeds 3

Mechanics only, in minutes (tiny random models on bundled/tiny-science, 1 seed, 2 levers; writes under the
work dir, never benchmarks/results)::

    .venv/bin/python benchmarks/effectiveness.py --smoke

Writes ``--out`` (default ``benchmarks/results/effectiveness.json``): each lever's overlay and resolved config;
per (lever, seed) nDCG@10 / RR@10 / R@100 of the zero-shot start model and of the lever, the difference, the
paired t-test p (two-sided, uncorrected, on per-query nDCG@10) and better / worse / tied queries, wall seconds
and the stages reused; per lever the mean, spread (sample std over seeds), min and max of the difference and
one paired test over all seeds' queries pooled. ``effectiveness.md`` beside it holds the tables.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEMO = REPO / "configs" / "demo.yaml"
CLI = REPO / ".venv" / "bin" / "inpars-ray"

logger = logging.getLogger("effectiveness")

#: the measure the paired tests, better/worse/tied and the summary are about
HEADLINE = "nDCG@10"
#: names the run manifest gives the two systems compared (pipeline._zero_shot, pipeline._evaluate("InPars"))
ZERO_SHOT, INPARS = "zero-shot", "InPars"
#: a per-query difference smaller than this counts as a tie
TIE = 1e-9

#: the benchmark's scale over configs/demo.yaml (100 documents; BM25's top 20 reranked). The zero-shot
#: row is pinned to the start model (train.base_model, untrained) whatever the demo names.
# 4 training epochs and micro-batches of 8 lists, as results/effectiveness.json was measured (the demo itself
# now trains 2 epochs, its whole batch of 16 in one pass)
# titles pinned on: the demo's `titles: auto` is a lever of its own here, and the recorded levers were run with titles
SCALE: dict[str, Any] = {"inpars": {"generate": {"num_docs": 100, "titles": True}, "rerank": {"depth": 20},
                                    "zero_shot": "start",
                                    "train": {"epochs": 4, "micro_batch_size": 8}}}

#: the teacher of the full benchmark: all-mpnet-base-v2, the rerank stage's ranker settings
MPNET_TEACHER: dict[str, Any] = {"model": "local:mpnet", "family": "bi-encoder", "max_length": 192, "batch_size": 32}


def lever_overlays(teacher_ranker: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each lever as a YAML overlay over the base config, in run order (levers that share the mine stage's
    settings are adjacent). Every overlay pins all the lever keys, so a lever means the same thing whatever
    the base config sets (``hard-labels`` stays InPars as before if the demo's recipe changes)."""
    hard = {"inpars": {"teacher": None, "mine": {"negatives": 1, "dense": None},
                       "filter": {"drop_unfinished": False},
                       "train": {"loss": "contrastive", "query_only": False, "interpolate": 1.0,
                                 "in_batch": "micro-batch", "contrastive_weight": 0.0}}}
    teacher = {"inpars": {"teacher": {"rankers": [dict(teacher_ranker)], "bm25_weight": 0.0},
                          "mine": {"negatives": 4, "dense": None}, "filter": {"drop_unfinished": False},
                          "train": {"loss": "margin-mse", "query_only": False, "interpolate": 1.0,
                                    "contrastive_weight": 0.0}}}
    query_only = {"inpars": {"train": {"query_only": True}}}
    wise = {"inpars": {"train": {"interpolate": 0.5}}}
    # the start model mines 2 dense negatives beside BM25's 4 (never the positive or a near-copy of it)
    dense = {"inpars": {"mine": {"dense": {"model": "local:minilm", "negatives": 2, "depth": 30}}}}
    # GPL's 3 queries per document: the greedy one, then 2 sampled (top-k 25, top-p 0.95)
    sampled = {"inpars": {"generate": {"queries_per_doc": 3}}}
    # BM25 beside the teacher in its fusion (z-scores; the rankers' weights sum to 1)
    bm25 = {"inpars": {"teacher": {"bm25_weight": 0.2}}}
    # the contrastive loss with every document of the whole batch (all workers) as a negative
    whole_batch = {"inpars": {"train": {"in_batch": "batch"}}}
    # hard labels on the demo recipe's data: 4 BM25 and 2 dense negatives per query, WiSE-FT 0.5
    hard_demo_data = overlay(hard, {"inpars": {"mine": {"negatives": 4}}}, dense, wise, whole_batch)
    # hard labels beside the teacher's margins, weighted so that both carry about the same gradient at the start
    # model (measured on python-docstrings' training lists: margin-MSE's gradient norm is ~0.013 of the
    # contrastive loss's), every document of the whole batch a negative
    teacher_hard = {"inpars": {"train": {"contrastive_weight": 0.01, "in_batch": "batch"}}}
    # 4 promptagator prompts with disjoint examples, each document given one (a seeded hash of its id)
    fewshot_sets = {"inpars": {"generate": {"fewshot_sets": 4}}}
    # documents shown to the generator without their titles (the target's and the examples')
    no_titles = {"inpars": {"generate": {"titles": False}}}
    # titles shown, and an answer that copies its document asked once more without them
    untitled_retry = {"inpars": {"generate": {"untitled_retry": ["copies", "unfinished"]}}}
    # titles chosen by the generate stage's probe (left out when most probe answers copy or run on)
    titles_auto = {"inpars": {"generate": {"titles": "auto"}}}
    # queries whose generation ran to max_new_tokens without ending its line are dropped
    finished = {"inpars": {"filter": {"drop_unfinished": True}}}
    return {
        "hard-labels": hard,
        "hard-labels+query-only": overlay(hard, query_only),
        "hard-labels+wise": overlay(hard, wise),
        "hard-labels+whole-batch": overlay(hard, whole_batch),
        "teacher": teacher,
        "teacher+query-only": overlay(teacher, query_only),
        "teacher+query-only+wise": overlay(teacher, query_only, wise),
        "teacher+wise": overlay(teacher, wise),
        "teacher+dense": overlay(teacher, dense),
        "teacher+dense+wise": overlay(teacher, dense, wise),
        "teacher+dense+wise+bm25": overlay(teacher, dense, wise, bm25),
        "teacher+dense+hard": overlay(teacher, dense, teacher_hard),
        "teacher+dense+hard+fewshot-sets": overlay(teacher, dense, teacher_hard, fewshot_sets),
        "teacher+dense+hard+no-titles": overlay(teacher, dense, teacher_hard, no_titles),
        "teacher+dense+hard+untitled-retry": overlay(teacher, dense, teacher_hard, untitled_retry),
        "teacher+dense+hard+titles-auto": overlay(teacher, dense, teacher_hard, titles_auto),
        "hard-labels+dense+wise+whole-batch": hard_demo_data,
        "teacher+dense+wise+finished": overlay(teacher, dense, wise, finished),
        "teacher+sampled": overlay(teacher, sampled),
        "teacher+dense+wise+sampled": overlay(teacher, dense, wise, sampled),
    }


#: levers whose generation differs from the others': their own run folder, so the rest stay reusable
OWN_RUN_FOLDER = {"teacher+sampled": "run-sampled", "teacher+dense+wise+sampled": "run-sampled",
                  "teacher+dense+hard+fewshot-sets": "run-fewshot-sets",
                  "teacher+dense+hard+no-titles": "run-no-titles",
                  "teacher+dense+hard+untitled-retry": "run-untitled-retry",
                  "teacher+dense+hard+titles-auto": "run-titles-auto"}


#: what each lever is, in the table's words
DESCRIPTIONS = {
    "hard-labels": "InPars as before: binary labels, in-batch contrastive loss, both towers",
    "hard-labels+query-only": "hard labels, query tower only (document embeddings of the start model)",
    "hard-labels+wise": "hard labels, WiSE-FT: saved weights 0.5 start + 0.5 trained",
    "hard-labels+whole-batch": "hard labels, every document of the whole batch a negative (gradient caching)",
    "hard-labels+dense+wise+whole-batch": "hard labels on the demo's data (4 BM25 + 2 dense negatives), "
                                          "whole-batch negatives, WiSE-FT 0.5",
    "teacher": "GPL: teacher scores the positive and 4 BM25 negatives, margin-mse",
    "teacher+query-only": "teacher, query tower only",
    "teacher+query-only+wise": "teacher, query tower only, WiSE-FT 0.5",
    "teacher+wise": "teacher, both towers, WiSE-FT 0.5",
    "teacher+dense": "teacher, 2 dense negatives (the start model's top 30) beside BM25's 4",
    "teacher+dense+wise": "teacher, 2 dense negatives beside BM25's 4, WiSE-FT 0.5",
    "teacher+dense+wise+bm25": "teacher fused with BM25 (weight 0.2), dense negatives, WiSE-FT 0.5",
    "teacher+dense+hard": "teacher's margins + hard labels (weight 0.01, whole-batch negatives), dense "
                          "negatives, no WiSE-FT",
    "teacher+dense+hard+fewshot-sets": "the demo's recipe (margins + hard labels, dense negatives) with 4 "
                                       "prompts of disjoint few-shot examples, each document given one",
    "teacher+dense+hard+no-titles": "the demo's recipe with documents prompted without their titles",
    "teacher+dense+hard+untitled-retry": "the demo's recipe, an answer that copies its document or runs on "
                                         "asked again without titles",
    "teacher+dense+hard+titles-auto": "the demo's recipe, titles left out when most of a probe's answers copy "
                                      "their document or run on",
    "teacher+dense+wise+finished": "the demo's recipe without queries that ran to the generator's token limit",
    "teacher+sampled": "teacher, 3 queries per document (greedy + 2 sampled, top-k 25, top-p 0.95)",
    "teacher+dense+wise+sampled": "teacher, dense negatives, WiSE-FT 0.5, 3 queries per document",
    "generator": "the best lever with another generator",
}
GENERATOR = "generator"


# --- pure parts: configs --------------------------------------------------------------------------------
def overlay(base: Mapping[str, Any], *overs: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each of ``overs`` deep-merged over it (mappings merge key by key; anything else, lists and
    None included, replaces). Inputs are not modified."""
    out = copy.deepcopy(dict(base))
    for over in overs:
        for key, value in over.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = overlay(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def lever_config(base: Mapping[str, Any], lever: Mapping[str, Any], seed: int, out_dir: str) -> dict[str, Any]:
    """The config one (lever, seed) runs with: base, lever overlay, then the seed and the run folder."""
    return overlay(base, lever, {"inpars": {"seed": seed}, "out_dir": out_dir})


def config_key(config: Mapping[str, Any]) -> str:
    """A short content hash of a config (a (lever, seed) result is reused only for the same config)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def load_base(path: Path = DEMO, scale: Mapping[str, Any] = SCALE) -> dict[str, Any]:
    """configs/demo.yaml with the benchmark's scale merged over it."""
    return overlay(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, scale)


# --- pure parts: reading a run's files and comparing systems ---------------------------------------------
def read_per_query(path: Path) -> dict[str, dict[str, float]]:
    """An ``eval.<split>.per_query.tsv`` (query_id, measure, value) as {measure: {query_id: value}}."""
    out: dict[str, dict[str, float]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            out.setdefault(row["measure"], {})[row["query_id"]] = float(row["value"])
    return out


def systems_of(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The evaluated systems a run manifest lists (``extra.systems``), by name."""
    return {s["name"]: s for s in manifest.get("extra", {}).get("systems", [])}


def paired(base: Mapping[str, float], system: Mapping[str, float]) -> dict[str, Any]:
    """``system`` against ``base`` on the queries both hold: mean difference, two-sided paired t-test p
    (scipy.stats.ttest_rel; 1.0 when every difference is 0), better / worse / tied queries."""
    from scipy import stats

    queries = sorted(set(base) & set(system))
    a = [base[q] for q in queries]
    b = [system[q] for q in queries]
    diffs = [y - x for x, y in zip(a, b)]
    if not queries:
        return {"queries": 0, "difference": None, "p_value": None, "better": 0, "worse": 0, "tied": 0}
    if all(abs(d) <= TIE for d in diffs):
        p = 1.0
    elif len(queries) < 2:
        p = None
    else:
        p = float(stats.ttest_rel(b, a).pvalue)
        p = None if math.isnan(p) else p
    return {"queries": len(queries), "difference": statistics.fmean(diffs), "p_value": p,
            "better": sum(d > TIE for d in diffs), "worse": sum(d < -TIE for d in diffs),
            "tied": sum(abs(d) <= TIE for d in diffs)}


def run_row(lever: str, seed: int, results: Path) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """One (lever, seed)'s row from its copied files, and the per-query values of both systems
    ({"zero-shot": {qid: nDCG@10}, "InPars": {...}})."""
    manifest = json.loads((results / "manifest.json").read_text())
    systems = systems_of(manifest)
    missing = [s for s in (ZERO_SHOT, INPARS) if s not in systems]
    if missing:
        raise ValueError(f"{results}: the run manifest lists no {missing} system (systems: {sorted(systems)})")
    per_query = {name: read_per_query(results / systems[name]["per_query"]) for name in (ZERO_SHOT, INPARS)}
    measures = list(systems[INPARS]["measures"])
    zs, lv = systems[ZERO_SHOT]["measures"], systems[INPARS]["measures"]
    test = paired(per_query[ZERO_SHOT].get(HEADLINE, {}), per_query[INPARS].get(HEADLINE, {}))
    row = {"lever": lever, "seed": seed,
           "zero_shot": {m: zs[m] for m in measures}, "lever_measures": {m: lv[m] for m in measures},
           "delta": {m: lv[m] - zs[m] for m in measures},
           "paired": {HEADLINE: test}, "queries": test["queries"],
           "start_model": manifest.get("extra", {}).get("start_model"),
           "bm25": systems.get("BM25", {}).get("measures"),
           "teacher": systems.get("teacher", {}).get("measures"),
           "counts": manifest.get("counts", {}), "stage_seconds": manifest.get("timings", {}),
           "versions": manifest.get("versions")}
    meta = results / "run.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        row.update(wall_seconds=m.get("wall_seconds"), reused_stages=m.get("reused_stages"),
                   config_key=m.get("config_key"))
    return row, {name: per_query[name].get(HEADLINE, {}) for name in per_query}


def summarize(rows: Sequence[Mapping[str, Any]], per_query: Mapping[tuple[str, int], Mapping[str, Mapping[str, float]]]
              ) -> dict[str, dict[str, Any]]:
    """Per lever, over its seeds: the mean, sample std, min and max of the nDCG@10 difference (and the mean
    differences of the other measures), and one paired test over every seed's queries pooled (a query of
    seed 1 and the same query of seed 2 are two pairs)."""
    out: dict[str, dict[str, Any]] = {}
    for lever in dict.fromkeys(r["lever"] for r in rows):
        mine = [r for r in rows if r["lever"] == lever]
        deltas = [r["delta"][HEADLINE] for r in mine]
        base_pooled, lever_pooled = {}, {}
        for r in mine:
            values = per_query[(lever, r["seed"])]
            base_pooled.update({(r["seed"], q): v for q, v in values[ZERO_SHOT].items()})
            lever_pooled.update({(r["seed"], q): v for q, v in values[INPARS].items()})
        measures = list(mine[0]["delta"])
        out[lever] = {
            "seeds": [r["seed"] for r in mine],
            "zero_shot_mean": {m: statistics.fmean(r["zero_shot"][m] for r in mine) for m in measures},
            "lever_mean": {m: statistics.fmean(r["lever_measures"][m] for r in mine) for m in measures},
            "delta_mean": {m: statistics.fmean(r["delta"][m] for r in mine) for m in measures},
            "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else None,
            "delta_min": min(deltas), "delta_max": max(deltas),
            "seeds_above_zero_shot": sum(d > TIE for d in deltas),
            "seeds_significant_above": sum(1 for r in mine if r["delta"][HEADLINE] > 0
                                           and (r["paired"][HEADLINE]["p_value"] or 1) < 0.05),
            "pooled": paired(base_pooled, lever_pooled),
        }
    return out


def best_lever(summary: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The lever with the largest mean nDCG@10 difference (the generator lever builds on it)."""
    levers = [k for k in summary if k != GENERATOR]
    return max(levers, key=lambda k: summary[k]["delta_mean"][HEADLINE]) if levers else None


def _f(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2g}" if value < 0.001 else f"{value:.3f}")


def markdown(result: Mapping[str, Any]) -> str:
    """The summary table (one row per lever) and the per-run table."""
    s = result["summary"]
    lines = [f"# Effectiveness of InPars' levers ({result['dataset']}, measured by `inpars-ray run`)", "",
             f"{result.get('test_queries', '?')} test queries; BM25 top {result['rerank_depth']} reranked; "
             f"{result['num_docs']} generated documents; seeds {result['seeds']}. Zero-shot is the start model "
             f"({result.get('start_model') or '?'}) untrained, reranking the same hits in the same run. "
             f"Δ = lever - zero-shot on {HEADLINE}; p: paired t-test (two-sided, uncorrected) on per-query "
             f"{HEADLINE}, pooled over all seeds' queries; std: sample std of Δ over seeds.", "",
             f"| lever | zero-shot {HEADLINE} | lever {HEADLINE} | Δ mean | Δ std | Δ min | Δ max | seeds > zs "
             f"(p<0.05) | pooled p | better / worse / tied | Δ RR@10 | Δ R@100 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for lever, x in s.items():
        pooled = x["pooled"]
        other = lambda m, x=x: _f(x["delta_mean"].get(m), sign=True)  # noqa: E731
        lines.append(
            f"| {lever} | {_f(x['zero_shot_mean'][HEADLINE])} | {_f(x['lever_mean'][HEADLINE])} | "
            f"{_f(x['delta_mean'][HEADLINE], sign=True)} | {_f(x['delta_std'])} | {_f(x['delta_min'], sign=True)} | "
            f"{_f(x['delta_max'], sign=True)} | {x['seeds_above_zero_shot']}/{len(x['seeds'])} "
            f"({x['seeds_significant_above']}) | {_p(pooled['p_value'])} | "
            f"{pooled['better']} / {pooled['worse']} / {pooled['tied']} | {other('RR@10')} | {other('R@100')} |")
    lines += ["", "Per run:", "",
              f"| lever | seed | zero-shot {HEADLINE} | lever {HEADLINE} | Δ | p | better / worse / tied | "
              f"wall s | stages reused |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        t = r["paired"][HEADLINE]
        lines.append(f"| {r['lever']} | {r['seed']} | {_f(r['zero_shot'][HEADLINE])} | "
                     f"{_f(r['lever_measures'][HEADLINE])} | {_f(r['delta'][HEADLINE], sign=True)} | "
                     f"{_p(t['p_value'])} | {t['better']} / {t['worse']} / {t['tied']} | "
                     f"{_f(r.get('wall_seconds'), 0)} | {', '.join(r.get('reused_stages') or []) or '-'} |")
    for what in ("skipped", "failed"):
        for item in result.get(what, []):
            lines.append(f"\n{what}: {item}")
    return "\n".join(lines) + "\n"


def reused_from_log(text: str) -> list[str]:
    """The stages a run's terminal output reports as reused ("<stage> ... already complete")."""
    out = []
    for line in text.splitlines():
        if "already complete" in line:
            words = line.replace("✓", " ").split()
            if words:
                out.append(words[0].rstrip(":"))
    return list(dict.fromkeys(out))


# --- driving the engine ----------------------------------------------------------------------------------
def copy_results(run_dir: Path, dest: Path) -> None:
    """A run's report, manifest and every listed system's evaluation files, into ``dest`` (same relative paths)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "report.json", "report.md"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for system in systems_of(manifest).values():
        for key in ("per_query", "summary"):
            if system.get(key):
                (dest / system[key]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run_dir / system[key], dest / system[key])


def run_engine(config_path: Path, log_path: Path, num_cpus: int | None, label: str) -> tuple[int, float, str]:
    """``inpars-ray run --config config_path`` in a subprocess: its output goes to ``log_path`` and, one line
    each, to this log. Returns (exit code, wall seconds, output)."""
    cmd = [str(CLI), "run", "--config", str(config_path)]
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    logger.info("%s: %s", label, " ".join(cmd))
    t0 = time.time()
    lines: list[str] = []
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            lines.append(line)
            if line.strip():
                logger.info("%s | %s", label, line.rstrip()[:200])
        code = proc.wait()
    return code, time.time() - t0, "".join(lines)


def run_lever(name: str, seed: int, config: dict[str, Any], work: Path, args: argparse.Namespace) -> Path | None:
    """Run one (lever, seed) unless its results exist for this config; returns its results folder (None when
    the run failed)."""
    seed_dir = work / f"seed-{seed}"
    results = seed_dir / "levers" / name
    key = config_key(config)
    meta = results / "run.json"
    if meta.is_file() and not args.force:
        if json.loads(meta.read_text()).get("config_key") == key:
            logger.info("seed %d, %s: results exist (%s), skipped (--force reruns)", seed, name, results)
            return results
        logger.info("seed %d, %s: results exist for another config: rerun", seed, name)
    if results.exists():
        shutil.rmtree(results)
    (seed_dir / "configs").mkdir(parents=True, exist_ok=True)
    config_path = seed_dir / "configs" / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    from inpars_ray.config import load_config

    load_config(config_path)  # a bad key fails here, before any run
    results.mkdir(parents=True)
    log_path = seed_dir / "configs" / f"{name}.log"
    code, wall, output = run_engine(config_path, log_path, args.num_cpus, f"seed {seed}, {name}")
    if code != 0:
        logger.error("seed %d, %s: inpars-ray run exited %d after %.0f s (log: %s)", seed, name, code, wall, log_path)
        shutil.rmtree(results)
        return None
    copy_results(Path(config["out_dir"]), results)
    shutil.copy2(config_path, results / "config.yaml")
    shutil.copy2(log_path, results / "run.log")
    reused = reused_from_log(output)
    report = json.loads((results / "report.json").read_text()) if (results / "report.json").is_file() else {}
    meta.write_text(json.dumps({"lever": name, "seed": seed, "config_key": key, "wall_seconds": round(wall, 1),
                                "reused_stages": reused, "exit_code": code,
                                "headline": report.get("headline"),
                                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    logger.info("seed %d, %s: done in %.0f s; reused: %s", seed, name, wall, ", ".join(reused) or "nothing")
    if not args.keep_checkpoints:  # Ray Train's checkpoints only resume an interrupted training (~0.5 GB each)
        shutil.rmtree(Path(config["out_dir"]) / "train" / "ray", ignore_errors=True)
    return results


def gemma_name() -> str | None:
    """A local Gemma generator the engine knows (``local_models``), else None."""
    import importlib.util

    from inpars_ray.models import local_models

    if importlib.util.find_spec(local_models.GEMMA3_PACKAGE[0]) is None:
        return None  # the optional extra inpars-ray[gemma] (Gemma terms of use) is not installed
    return local_models.GEMMA3


def smoke_setup(work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The smoke mode's base config and teacher: tiny random models on bundled/tiny-science (mechanics only:
    the figures mean nothing). The tiny bi-encoder is built once into the work dir, start model and teacher."""
    from inpars_ray.testing.tiny_bert import build_tiny_bi_encoder

    model = work / "models" / "tiny-bi-encoder"
    if not (model / "config.json").is_file():
        build_tiny_bi_encoder(model)
    base = overlay(load_base(), {
        "dataset": "bundled/tiny-science", "k": 100,
        "inpars": {"generate": {"model": "local:tiny-lm", "num_docs": 16, "generation": {"max_new_tokens": 12}},
                   "generate_resources": {"batch_size": 8},
                   "filter": {"min_tokens": 1},
                   "train": {"base_model": str(model), "family": "bi-encoder", "batch_size": 8, "max_length": 64},
                   "rerank": {"depth": 20, "ranker": {"max_length": 64}}}})
    teacher = {"model": str(model), "family": "bi-encoder", "max_length": 64, "batch_size": 32}
    return base, teacher


def collect(order: Sequence[tuple[str, int]], work: Path) -> tuple[list[dict[str, Any]], dict]:
    """The rows (and per-query values) of every (lever, seed) whose results exist, in run order."""
    rows, per_query = [], {}
    for lever, seed in order:
        results = work / f"seed-{seed}" / "levers" / lever
        if (results / "run.json").is_file():
            row, values = run_row(lever, seed, results)
            rows.append(row)
            per_query[(lever, seed)] = values
    return rows, per_query


def write_outputs(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]], per_query: dict,
                  final: bool) -> dict[str, Any]:
    from inpars_ray.io.manifest import versions

    summary = summarize(rows, per_query) if rows else {}
    start = next((r["start_model"] for r in rows if r.get("start_model")), None)
    result = {**meta, "complete": final, "test_queries": rows[0]["queries"] if rows else None,
              "start_model": f"{start['model']} ({start['family']})" if start else None,
              "versions": versions(), "runs": rows, "summary": summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(out)
    if rows:
        out.with_suffix(".md").write_text(markdown(result))
    return result


def plot(result: Mapping[str, Any], path: Path) -> None:
    """Δ nDCG@10 against zero-shot per lever: one dot per seed, a bar for the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levers = list(result["summary"])
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=120)
    for i, lever in enumerate(levers):
        vals = [r["delta"][HEADLINE] for r in result["runs"] if r["lever"] == lever]
        mean = statistics.fmean(vals)
        ax.bar(i, mean, color="#4c72b0" if mean > 0 else "#c44e52", alpha=0.8)
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
    ax.axhline(0, color="#555555", linewidth=1)
    ax.set_xticks(range(len(levers)), levers, rotation=20, fontsize=7, ha="right")
    ax.set_ylabel(f"Δ {HEADLINE} vs zero-shot")
    ax.set_title(f"{result['dataset']}: {result.get('test_queries')} test queries, seeds {result['seeds']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="inpars.seed = 1..N (default 3)")
    ap.add_argument("--levers", default=None, help="comma-separated subset, in run order (default: all of them; "
                    "--smoke: hard-labels,teacher)")
    ap.add_argument("--with-gemma", action="store_true", help="also the best lever with a Gemma generator, "
                    "when the engine has a local one")
    ap.add_argument("--work-dir", default=None, help="run folders and per-lever results (default "
                    "runs/effectiveness, --smoke: runs/effectiveness-smoke; runs/ is git-ignored)")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/effectiveness.json; "
                    "--smoke: <work-dir>/effectiveness.json)")
    ap.add_argument("--num-cpus", type=int, default=None, help="passed to inpars-ray run (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun (lever, seed)s whose results exist")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep Ray Train's checkpoints of each run")
    ap.add_argument("--smoke", action="store_true", help="mechanics only: tiny random models on "
                    "bundled/tiny-science, 1 seed, 2 levers (minutes)")
    ap.add_argument("--dry-run", action="store_true", help="write and validate the configs, run nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(args.work_dir or ("runs/effectiveness-smoke" if args.smoke else "runs/effectiveness"))
    work = (work if work.is_absolute() else REPO / work).resolve()
    out = Path(args.out) if args.out else (work / "effectiveness.json" if args.smoke
                                           else HERE / "results" / "effectiveness.json")
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        base, teacher = smoke_setup(work)
        seeds = [1]
        default_levers = "hard-labels,teacher"
    else:
        base, teacher = load_base(), MPNET_TEACHER
        seeds = list(range(1, args.seeds + 1))
        default_levers = None
    overlays = lever_overlays(teacher)
    chosen = (args.levers or default_levers or ",".join(overlays)).split(",")
    unknown = [x for x in chosen if x not in overlays]
    if unknown:
        raise SystemExit(f"unknown lever(s) {unknown}; known: {list(overlays)}")
    chosen = [x for x in overlays if x in chosen]  # run order: mine's settings change once per seed
    t_start = time.time()
    meta: dict[str, Any] = {
        "benchmark": "effectiveness", "mode": "smoke" if args.smoke else "full",
        "command": " ".join(["benchmarks/effectiveness.py", *(argv if argv is not None else sys.argv[1:])]),
        "engine_command": ".venv/bin/inpars-ray run --config <work-dir>/seed-<s>/configs/<lever>.yaml",
        "dataset": base.get("dataset"), "base_config": "configs/demo.yaml", "scale": SCALE,
        "num_docs": base["inpars"]["generate"]["num_docs"], "rerank_depth": base["inpars"]["rerank"]["depth"],
        "seeds": seeds, "headline_measure": HEADLINE, "work_dir": str(work),
        "test_queries_note": "the engine has no test-query cap: the whole test split is evaluated",
        "levers": {name: {"description": DESCRIPTIONS[name], "overlay": overlays[name],
                          "config": lever_config(base, overlays[name], seeds[0], "<work-dir>/seed-<s>/run")}
                   for name in chosen},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "skipped": [], "failed": [],
    }
    order = [(lever, seed) for seed in seeds for lever in chosen]
    done = 0
    for seed in seeds:
        for lever in chosen:
            run_dir = work / f"seed-{seed}" / OWN_RUN_FOLDER.get(lever, "run")
            done += 1
            logger.info("=== (%d/%d) seed %d, lever %s", done, len(order), seed, lever)
            config = lever_config(base, overlays[lever], seed, str(run_dir))
            if args.dry_run:
                path = work / f"seed-{seed}" / "configs" / f"{lever}.yaml"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                from inpars_ray.config import load_config

                load_config(path)
                logger.info("config ok: %s", path)
                continue
            if run_lever(lever, seed, config, work, args) is None:
                meta["failed"].append(f"{lever} seed {seed} (log: {work}/seed-{seed}/configs/{lever}.log)")
            rows, per_query = collect(order, work)
            meta["wall_seconds"] = round(time.time() - t_start, 1)
            write_outputs(out, meta, rows, per_query, final=False)
    if args.with_gemma and not args.dry_run:
        gemma = gemma_name()
        rows, per_query = collect(order, work)
        best = best_lever(summarize(rows, per_query)) if rows else None
        if gemma is None:
            message = "generator lever: the engine has no local Gemma model (inpars_ray.models.local_models); skipped"
            logger.warning(message)
            meta["skipped"].append(message)
        elif best is None:
            meta["skipped"].append("generator lever: no lever measured to build on; skipped")
        else:
            over = overlay(overlays[best], {"inpars": {"generate": {"model": gemma}}})
            meta["levers"][GENERATOR] = {"description": f"{best} with generator {gemma}", "overlay": over,
                                         "builds_on": best}
            for seed in seeds:  # another generation: its own run folder, so the others' stages stay reusable
                order.append((GENERATOR, seed))
                config = lever_config(base, over, seed, str(work / f"seed-{seed}" / "run-generator"))
                if run_lever(GENERATOR, seed, config, work, args) is None:
                    meta["failed"].append(f"{GENERATOR} seed {seed}")
    if args.dry_run:
        return 0
    rows, per_query = collect(order, work)
    meta["wall_seconds"] = round(time.time() - t_start, 1)
    result = write_outputs(out, meta, rows, per_query, final=not meta["failed"])
    if rows:
        plot(result, out.with_suffix(".png"))
        print(markdown(result))
    logger.info("wrote %s and %s", out, out.with_suffix(".md"))
    return 1 if meta["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
