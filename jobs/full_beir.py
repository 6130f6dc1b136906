"""Run the inpars-ray pipeline over BEIR collections, as a Ray job.

    ray job submit --working-dir . -- python jobs/full_beir.py --out-dir /mnt/shared/inpars-runs
    python jobs/full_beir.py --datasets bundled/tiny-science --out-dir runs/   # local Ray

Each dataset runs through :func:`inpars_ray.pipeline.run_pipeline` into ``<out-dir>/<name>/``; stages
whose manifests match are skipped, so a resubmitted job resumes where the last one stopped. The job
ends with a table of nDCG@10 next to the published figures (REFERENCE: arXiv 2202.05144, 2301.01820)
and writes it to ``<out-dir>/summary.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from inpars_ray.catalog import BEIR_MD5
from inpars_ray.pipeline import PipelineConfig, run_pipeline
from inpars_ray.raykit import ensure_ray

logger = logging.getLogger("full_beir")

#: published nDCG@10 (BM25 / InPars-v1 / InPars-v2), only where the papers give a per-dataset figure we carry
PUBLISHED = {"scifact": {"bm25": 0.678, "inpars_v1": 0.774, "inpars_v2": 0.774}}
#: BEIR datasets in the order of the InPars-v2 table (those downloadable without a licence)
DEFAULT_DATASETS = [f"beir/{name}" for name in BEIR_MD5 if name != "msmarco"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated dataset specs")
    ap.add_argument("--out-dir", default="runs", help="root folder of every dataset's run")
    ap.add_argument("--config", default=None, help="YAML of PipelineConfig fields shared by every dataset")
    ap.add_argument("--skip-bad-rows", action="store_true")
    ap.add_argument("--bm25-only", action="store_true", help="run the BM25 baseline only (no synthetic-data stages)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = {}
    if args.config:
        import yaml

        base = yaml.safe_load(Path(args.config).read_text()) or {}
    ensure_ray()
    rows = []
    for spec in [s.strip() for s in args.datasets.split(",") if s.strip()]:
        name = spec.rstrip("/").split("/")[-1]
        data = {**base, "dataset": spec, "out_dir": str(Path(args.out_dir) / name)}
        if args.bm25_only:
            data["inpars"] = None
        if args.skip_bad_rows:
            data.setdefault("load", {})["skip_bad_rows"] = True
        summary = run_pipeline(PipelineConfig.from_dict(data))
        published = PUBLISHED.get(name, {})
        rows.append({"dataset": spec, "bm25_ndcg@10": round(summary["bm25"]["nDCG@10"], 4),
                     "inpars_ndcg@10": round(summary["inpars"]["nDCG@10"], 4) if "inpars" in summary else None,
                     "published_bm25": published.get("bm25"), "published_inpars_v2": published.get("inpars_v2")})
        logger.info("[full_beir] %s: %s", spec, rows[-1])
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'dataset':<28} {'BM25 nDCG@10':>13} {'InPars nDCG@10':>15} {'published BM25':>15} {'published v2':>13}")
    for r in rows:
        print(f"{r['dataset']:<28} {r['bm25_ndcg@10']:>13.4f} {str(r['inpars_ndcg@10'] or '-'):>15} "
              f"{str(r['published_bm25'] or '-'):>15} {str(r['published_inpars_v2'] or '-'):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
