"""Does a Ray Tune sweep on the synthetic dev set find a better recipe than the demo's, and does the dev set
predict test? (issue 20)

On ``builtin/python-docstrings`` with the demo's real small models (configs/demo.yaml: SmolLM2 queries,
all-MiniLM-L6-v2 bi-encoder), this runs the demo pipeline with ``inpars.tune`` set (``--space``, default
configs/tune-space.yaml; ``--num-samples`` trials, ASHA): the sweep sees only the synthetic dev set (held-out
source documents), then the best trial's model reranks the test run beside the untuned demo model. Then,
for the honesty check only, *every* trial's model reranks the test run, and the benchmark reports the
Spearman rank correlation between the trials' dev and test nDCG@10 (scipy), and the trial-steps ASHA
saved against running every trial to its end. With ``--judge fused`` the dev set is judged against a
fused pseudo-reference (the source document plus the top documents of the teacher's scores fused with
BM25's, ``tune.dev.judge: fused``); each trial's model is then also scored on the dev pairs against both
judgements (source only, and fused), so one sweep gives the dev/test Spearman of both proxies.

Run (slow on 2 cores: generation ~7 minutes, then ~2-3 minutes per trial and ~1 minute per trial's test
rerank; a second run resumes every finished stage and trial)::

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tune_sweep.py --num-samples 8 \\
        --out-dir runs/tune-bench [--judge fused]

Writes ``benchmarks/results/tune_sweep.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--space", default=str(ROOT / "configs" / "tune-space.yaml"))
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--validate-every", type=int, default=4)
    parser.add_argument("--dev-fraction", type=float, default=0.15)
    parser.add_argument("--out-dir", default=str(ROOT / "runs" / "tune-bench"))
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--judge", choices=("source", "fused"), default="source",
                        help="how the dev set is judged (tune.dev.judge; fused needs a teacher in --config)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from scipy.stats import spearmanr

    from inpars_ray.config import load_config
    from inpars_ray.io import catalog, storage
    from inpars_ray.models.rankers import replace_ranker
    from inpars_ray.pipeline import run_pipeline, stage_configs
    from inpars_ray.runtime.raykit import ensure_ray
    from inpars_ray.stages.evaluate import evaluate_files
    from inpars_ray.stages.rerank import rerank_run

    overrides = [f"out_dir={json.dumps(args.out_dir)}", "inpars.tune={}",
                 f"inpars.tune.space_file={json.dumps(args.space)}", f"inpars.tune.num_samples={args.num_samples}",
                 f"inpars.tune.validate_every={args.validate_every}", f"inpars.tune.grace_period={args.validate_every}",
                 f"inpars.tune.dev.fraction={args.dev_fraction}", f"inpars.tune.dev.judge={args.judge}"]
    config = load_config(args.config, overrides)
    ensure_ray(None, args.num_cpus)
    started = time.time()
    summary = run_pipeline(config)
    pipeline_s = time.time() - started
    out = storage.location(config.out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    systems = {s["name"]: s["measures"] for s in manifest["extra"]["systems"]}
    sweep = json.loads(next(p for p in sorted(Path(out.path).glob("tune/sweep-*/manifest.json"))).read_text())

    # every trial's model on the test queries: the proxy's honesty check (the sweep itself never did this)
    collection = catalog.resolve(config.dataset)
    stages = stage_configs(config, out)
    bm25_run = out / "bm25" / f"run.{config.split}.trec"
    exclude = out / "rerank" / "excluded_queries.txt"
    judges = _dev_judgements(out)
    rows = []
    for trial in sweep["extra"]["trials"]:
        model = Path(sweep["extra"]["best_model"]).parent.parent / trial["trial_id"] / "model"
        if trial["dev_ndcg@10"] is None or not (model / "manifest.json").is_file():
            continue
        weight = trial["settings"].get("rerank.first_stage_weight", stages.rerank.first_stage_weight)
        run_path = out / "tune" / "test-check" / trial["trial_id"] / f"run.{config.split}.trec"
        rerank_run(collection, bm25_run.uri, run_path.uri,
                   replace_ranker(dataclasses.replace(stages.rerank, first_stage_weight=weight), model=str(model),
                                  family=None),
                   config.load)
        result, _ = evaluate_files(collection, run_path.uri, config.split, ["nDCG@10"], exclude_file=exclude.uri)
        dev_by_judge = _dev_ndcg(model, weight, stages.train, judges)
        rows.append({"trial_id": trial["trial_id"], "settings": trial["settings"], "dev_ndcg@10": trial["dev_ndcg@10"],
                     **{f"dev_ndcg@10_{name}": value for name, value in dev_by_judge.items()},
                     "test_ndcg@10": result.aggregate["nDCG@10"], "steps": trial["steps"],
                     "planned_steps": trial["planned_steps"], "stopped_early": trial["stopped_early"]})
    rho = spearmanr([r["dev_ndcg@10"] for r in rows], [r["test_ndcg@10"] for r in rows]) if len(rows) > 2 else None
    by_judge = {}
    for name in (n for n in judges if n != "pairs"):
        if len(rows) > 2:
            r = spearmanr([row[f"dev_ndcg@10_{name}"] for row in rows], [row["test_ndcg@10"] for row in rows])
            by_judge[name] = {"rho": float(r.statistic), "p": float(r.pvalue), "trials": len(rows)}
    counts = sweep["counts"]
    payload = {
        "dataset": config.dataset, "config": args.config, "space": args.space, "trials": len(sweep["extra"]["trials"]),
        "bm25_ndcg@10": systems.get("BM25", {}).get("nDCG@10"),
        "untuned_ndcg@10": systems.get("InPars", {}).get("nDCG@10"),
        "tuned_best_ndcg@10": systems.get("InPars (tuned)", {}).get("nDCG@10"),
        "zero_shot_ndcg@10": systems.get("zero-shot", {}).get("nDCG@10"),
        "best_trial": sweep["extra"]["best"]["trial_id"], "best_settings": sweep["extra"]["best_settings"],
        "trial_steps_run": counts["trial_steps"], "trial_steps_planned": counts["trial_steps_planned"],
        "trial_steps_saved": counts["trial_steps_planned"] - counts["trial_steps"],
        "stopped_early": counts["stopped_early"],
        "spearman_dev_test": None if rho is None else {"rho": float(rho.statistic), "p": float(rho.pvalue),
                                                        "trials": len(rows)},
        "judge": args.judge, "spearman_dev_test_by_judge": by_judge,
        "rows": rows, "pipeline_seconds": round(pipeline_s, 1), "summary": summary,
        "note": "the tuned model trains on the training part of the triples (dev documents held out); the "
                "untuned one on all of them. Spearman over trials; a stopped trial's test figure is its model "
                "at the stop.",
        "machine": machine(),
    }
    path = write_result("tune_sweep", payload)
    print(f"| system | test nDCG@10 |\n|---|---|\n| BM25 | {payload['bm25_ndcg@10']:.4f} |\n"
          f"| InPars (demo, untuned) | {payload['untuned_ndcg@10']:.4f} |\n"
          f"| InPars (best trial of {payload['trials']}) | {payload['tuned_best_ndcg@10']:.4f} |")
    print(f"trial-steps: {counts['trial_steps']} run of {counts['trial_steps_planned']} planned "
          f"({payload['trial_steps_saved']} saved by ASHA, {counts['stopped_early']} trials stopped early)")
    if rho is not None:
        print(f"dev/test Spearman over {len(rows)} trials: rho={rho.statistic:.3f} (p={rho.pvalue:.3f})")
    for name, r in by_judge.items():
        print(f"  dev judged by {name}: rho={r['rho']:.3f} (p={r['p']:.3f})")
    print(f"wrote {path}")
    return 0


def _dev_judgements(out) -> dict:
    """The sweep's dev pairs and its dev qrels under both judgements: ``source`` (each dev query's source
    document, from the filter's kept queries) and, when the sweep was judged so, ``fused``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from inpars_ray import schema as S
    from inpars_ray.io import artifacts
    from inpars_ray.io.manifest import published
    from inpars_ray.schema import KEPT_DIR
    from inpars_ray.stages.devset import PAIRS, QRELS

    devset = out / "tune" / "devset"
    pairs = artifacts.read_parquet(devset / PAIRS)
    qrels = artifacts.read_parquet(devset / QRELS)
    manifest = json.loads((devset / "manifest.json").read_text())
    files, _ = published(out / "filter", ("filter", "consistency"), KEPT_DIR)
    kept = pa.concat_tables([artifacts.read_parquet(f, columns=[S.QUERY_ID, S.DOC_ID]) for f in files])
    dev_ids = pc.unique(pairs.column(S.QUERY_ID))
    source = kept.filter(pc.is_in(kept.column(S.QUERY_ID), value_set=dev_ids))
    source = pa.table({S.QUERY_ID: source.column(S.QUERY_ID), S.DOC_ID: source.column(S.DOC_ID),
                       S.RELEVANCE: pa.array([1] * source.num_rows, pa.int64())}, schema=S.QRELS)
    judges = {"pairs": pairs, "source": source}
    if (manifest.get("config", {}).get("config") or {}).get("judge") == "fused":
        judges["fused"] = qrels
    return judges


def _dev_ndcg(model: Path, weight: float, train, judges: dict) -> dict[str, float]:
    """A trial's model on the dev pairs (scored and blended as the sweep scores them) against each judgement."""
    import pyarrow as pa

    from inpars_ray import schema as S
    from inpars_ray.models.rankers import Ranker, RankerConfig
    from inpars_ray.stages.rerank import blend_first_stage
    from inpars_ray.stages.train_loop import ndcg_at_10

    pairs = judges["pairs"]
    ranker = Ranker(RankerConfig(model=str(model), max_length=train.max_length, batch_size=32))
    scored = pairs.append_column(S.SCORE, pa.array(ranker.score(pairs[S.QUERY], pairs[S.TEXT]), pa.float64()))
    if weight and weight > 0:
        scored = blend_first_stage(scored, weight)
    return {name: ndcg_at_10(scored, qrels) for name, qrels in judges.items() if name != "pairs"}


if __name__ == "__main__":
    sys.exit(main())
