"""Effectiveness of InPars recipes against BM25 and a zero-shot reranker, over seeds (issue 9.6).

For one BEIR-layout collection, with bounded work, every system is measured on the same test queries:

* ``bm25``: the engine's Lucene BM25 run;
* ``zero-shot``: all-MiniLM-L6-v2 as a bi-encoder reranking BM25's top ``--rerank-depth`` (what a user would
  otherwise reach for);
* ``inpars-<filter>``: the recipe (SmolLM2 queries from the engine's generate stage, BM25 negatives, the
  MiniLM bi-encoder's *query side* fine-tuned with an in-batch contrastive loss against the frozen zero-shot
  document embeddings, so the corpus is embedded once; reranking the same top-k), once per filter strategy: ``all`` (the checks only), ``scores`` (InPars-v1:
  best half by mean log-prob) and ``consistency`` (InPars-light: source document in the top 3 of a ranker
  trained on all candidates);
* ``inpars-all+bm25``: the ``inpars-all`` model's scores blended with BM25's (per query, min-max scaled,
  0.3 on BM25). Beside the rows, ``references`` holds the zero-shot ranker with the same blend, so the
  blend's own gain can be told from InPars'.

Generation runs once (greedy decoding: a document's query does not depend on the seed) over a sample of
``--num-docs`` documents; each seed draws its own training subsample (``--train-fraction``), negatives and
training order, so the spread shows the recipe's stability, not the generator's.

Run (about 25 minutes on 2 busy cores with the defaults)::

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/effectiveness.py \\
        --dataset builtin/python-docstrings --seeds 3 --num-docs 300 --rerank-depth 100 \\
        --max-test-queries 400 --out benchmarks/results/effectiveness.json

Writes ``--out`` (JSON with ``rows``: one per system and seed with nDCG@10, RR@10, R@100, improved / hurt
vs BM25; and ``summary``: mean and standard deviation per system) and a PNG beside it.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recipe_search as rs  # noqa: E402  (a sibling benchmark module)

logger = logging.getLogger("effectiveness")

#: the recipe (see recipe_search.VARIANTS and the search results in the report)
RECIPE: dict[str, Any] = {"family": "bi", "train": True, "query_only": True, "lr": 3e-5, "epochs": 5, "batch": 16,
                          "warmup": 0.1, "negatives": 1, "neg_depth": 30}
FILTERS = {"inpars-all": {"filter": "all"}, "inpars-scores": {"filter": "scores", "keep": 0.5},
           "inpars-consistency": {"filter": "consistency", "consistency_k": 3},
           # the inpars-all model, its scores blended with BM25's (per-query min-max, 0.3 on BM25: the weight
           # recipe_search measured for the zero-shot ranker; the engine's rerank.first_stage_weight)
           "inpars-all+bm25": {"filter": "all", "alpha": 0.3}}
#: systems measured for reference beside the rows (not InPars): the zero-shot ranker with the same blend
REFERENCES = {"zero-shot+bm25": {"family": "bi", "alpha": 0.3}}


def generate(dataset: str, out: Path, num_docs: int, cache_dir: str | None, batch_size: int = 8) -> Path:
    """The engine's generate stage (hf backend, SmolLM2 GGUF) over ``num_docs`` documents; resumable."""
    import ray

    from inpars_ray.io import catalog
    from inpars_ray.models.backends.base import GenerationParams
    from inpars_ray.models.local_models import SMOLLM2, resolve_model
    from inpars_ray.stages.generate import GenerateConfig, GenerateResources, run_generate

    rs._ray_local(str(out.parent / "ray"))
    run_generate(catalog.resolve(dataset, cache_dir), out,
                 GenerateConfig(backend="hf", model=resolve_model(SMOLLM2), prompt="inpars", num_docs=num_docs,
                                seed=1, generation=GenerationParams(max_new_tokens=32, seed=1)),
                 GenerateResources(batch_size=batch_size, num_actors=1, cpus_per_actor=1))
    ray.shutdown()
    return out / "parts"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="builtin/python-docstrings", help="collection spec (BEIR layout)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--num-docs", type=int, default=300, help="documents the generator writes queries for")
    ap.add_argument("--generated", default=None, help="reuse a generate stage's parts folder instead of generating")
    ap.add_argument("--rerank-depth", type=int, default=100, help="BM25 hits each reranker reorders per query")
    ap.add_argument("--depth", type=int, default=100, help="BM25 run depth (R@100 needs 100); hits below the "
                    "rerank depth keep their BM25 order")
    ap.add_argument("--max-test-queries", type=int, default=400)
    ap.add_argument("--train-fraction", type=float, default=0.8, help="share of generated queries each seed trains on")
    ap.add_argument("--systems", default="bm25,zero-shot,inpars-all,inpars-scores,inpars-consistency,"
                    "inpars-all+bm25")
    ap.add_argument("--work", default="runs/effectiveness", help="index, runs and generated queries go here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="benchmarks/results/effectiveness.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work).resolve()
    t_start = time.time()
    systems = args.systems.split(",")
    gen_dir = args.generated
    if gen_dir is None and any(s.startswith("inpars") for s in systems):
        gen_dir = str(generate(args.dataset, work / "generate", args.num_docs, args.cache_dir))
    data = rs.load_data(args.dataset, gen_dir or "", str(work), args.depth, args.max_test_queries,
                        args.cache_dir)
    all_gen = list(data.gen)
    bm25_m = rs.measure({q: data.test_run.get(q, [])[:args.depth] for q in data.test_queries}, data)
    rows: list[dict[str, Any]] = []
    zs_m = None
    zs_model = rs.BiEncoder(rs.minilm_path())
    for seed in range(1, args.seeds + 1):
        rng = random.Random(seed)
        data.gen = sorted(rng.sample(all_gen, int(len(all_gen) * args.train_fraction)), key=lambda r: r["query_id"])
        # per seed: the "all" model serves the consistency filter too; the zero-shot model (and its document
        # embeddings, which query-side fine-tuning keeps) is shared by all seeds
        cache: dict[str, Any] = {"zs-model": zs_model}
        for system in systems:
            t0 = time.time()
            if system == "bm25":
                m = bm25_m
            elif system == "zero-shot":  # deterministic: measured once
                zs_m = zs_m or rs.measure(rs.run_variant(system, {"family": "bi", "rerank_depth": args.rerank_depth},
                                                         data, args.depth, seed, cache), data)
                m = zs_m
            elif system in FILTERS:
                spec = {**RECIPE, **FILTERS[system], "rerank_depth": args.rerank_depth}
                m = rs.measure(rs.run_variant(system, spec, data, args.depth, seed, cache), data)
            else:
                raise SystemExit(f"unknown system {system!r}")
            better, worse = rs.vs_bm25(m, bm25_m)
            row = {"system": system, "seed": seed, "nDCG@10": round(m["nDCG@10"], 4), "RR@10": round(m["RR@10"], 4),
                   "R@100": round(m["R@100"], 4), "improved_vs_bm25": better, "hurt_vs_bm25": worse,
                   "seconds": round(time.time() - t0, 1), "train": cache.get(f"info:{system}")}
            logger.info("ROW %s", json.dumps(row))
            rows.append(row)
            write_result(args, data, all_gen, rows, systems, t_start, final=False)
    references = {}
    for name, spec in REFERENCES.items():  # deterministic (no training): measured once
        m = rs.measure(rs.run_variant(name, {**spec, "rerank_depth": args.rerank_depth}, data, args.depth, 1,
                                      {"zs-model": zs_model}), data)
        better, worse = rs.vs_bm25(m, bm25_m)
        references[name] = {k: round(m[k], 4) for k in ("nDCG@10", "RR@10", "R@100")} | {
            "improved_vs_bm25": better, "hurt_vs_bm25": worse}
    write_result(args, data, all_gen, rows, systems, t_start, final=True, references=references)
    return 0


def write_result(args: argparse.Namespace, data: rs.Data, all_gen: list, rows: list[dict[str, Any]],
                 systems: list[str], t_start: float, final: bool, references: dict | None = None) -> None:
    """Write the JSON (after every row, so an interrupted run keeps what it measured) and, at the end,
    the PNG and the Markdown table."""
    summary = {}
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue
        summary[system] = {k: {"mean": round(statistics.fmean(r[k] for r in mine), 4),
                               "std": round(statistics.pstdev(r[k] for r in mine), 4)}
                           for k in ("nDCG@10", "RR@10", "R@100", "improved_vs_bm25", "hurt_vs_bm25")}
    from inpars_ray.io.manifest import versions

    result = {"dataset": args.dataset, "test_queries": len(data.test_queries), "generated_queries": len(all_gen),
              "num_docs": args.num_docs, "rerank_depth": args.rerank_depth, "seeds": args.seeds,
              "train_fraction": args.train_fraction, "recipe": RECIPE, "filters": FILTERS,
              "generator": "local:smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF, hf backend, prompt inpars, greedy)",
              "ranker": "local:minilm (all-MiniLM-L6-v2)", "wall_seconds": round(time.time() - t_start, 1),
              "complete": final, "versions": versions(), "rows": rows, "summary": summary,
              "references": references or {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if final:
        plot(result, out.with_suffix(".png"))
        print(table(result))


def table(result: dict[str, Any]) -> str:
    """The summary as a Markdown table (mean ± std over seeds)."""
    lines = ["| system | nDCG@10 | RR@10 | R@100 | improved / hurt vs BM25 |", "|---|---|---|---|---|"]
    for system, s in result["summary"].items():
        cell = lambda k: f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}"  # noqa: E731
        lines.append(f"| {system} | {cell('nDCG@10')} | {cell('RR@10')} | {cell('R@100')} | "
                     f"{s['improved_vs_bm25']['mean']:.0f} / {s['hurt_vs_bm25']['mean']:.0f} |")
    for name, r in result.get("references", {}).items():  # one deterministic run: no spread
        lines.append(f"| ({name}, reference) | {r['nDCG@10']:.3f} | {r['RR@10']:.3f} | {r['R@100']:.3f} | "
                     f"{r['improved_vs_bm25']} / {r['hurt_vs_bm25']} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """nDCG@10 per system: one dot per seed, a bar for the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(result["summary"])
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for i, system in enumerate(systems):
        vals = [r["nDCG@10"] for r in result["rows"] if r["system"] == system]
        ax.bar(i, statistics.fmean(vals), color="#4c72b0" if system.startswith("inpars") else "#999999", alpha=0.8)
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        ax.text(i, statistics.fmean(vals) + 0.01, f"{statistics.fmean(vals):.3f}", ha="center", fontsize=8)
    bm25 = result["summary"].get("bm25", {}).get("nDCG@10", {}).get("mean")
    if bm25 is not None:
        ax.axhline(bm25, color="#c44e52", linestyle="--", linewidth=1, label="BM25")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(range(len(systems)), systems, rotation=15, fontsize=8)
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"{result['dataset']}: {result['test_queries']} test queries, rerank top-{result['rerank_depth']}, "
                 f"{result['seeds']} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
