"""Run the inpars-ray pipeline over BEIR collections concurrently, as one Ray job.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/full_beir.py --out-dir gs://BUCKET/runs/beir --max-concurrent 4
    python jobs/full_beir.py --datasets bundled/tiny-science --out-dir runs/ --bm25-only   # local Ray

Each collection runs through :func:`inpars_ray.pipeline.run_pipeline` into ``<out-dir>/<name>/`` (a folder
or a ``gs://`` URI). The collections run at the same time, at most ``--max-concurrent`` at once: each
collection's pipeline is driven by a thread of this driver, and its stages run on the cluster as Ray tasks
and actors, so a small collection's stages fill the cluster while a big one indexes. A collection that
fails is reported and the others go on; stages whose manifests match are skipped, so a resubmitted job
resumes each collection where it stopped. ``summary.json`` and ``summary.md`` under the run root list each
collection's status, BM25 and InPars nDCG@10 and the published figures (InPars-v2, arXiv 2301.01820); they are rewritten
whenever a collection finishes. The exit status is 1 when any collection did not complete.

BEIR's conventions: ``beir/cqadupstack`` runs as its 12 forums (``beir/cqadupstack/<forum>``, one
collection each) and is reported as their mean, as BEIR reports it, once every forum is complete. The
collections that need a licence (bioasq, signal1m, trec-news, robust04) have no public zip: the summary
lists them as needing a local copy, which runs as a folder spec (``--datasets /data/robust04``).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inpars_ray.errors import ConfigError, find_typed_error
from inpars_ray.io import storage
from inpars_ray.io.catalog import BEIR_MD5, CQADUPSTACK_FORUMS, LICENSED
from inpars_ray.runtime.raykit import ensure_ray

logger = logging.getLogger("full_beir")

#: published nDCG@10 per collection, only where a paper gives a per-collection figure:
#: BM25 and InPars-v1/v2 on SciFact from the InPars-v2 paper (arXiv 2301.01820)
PUBLISHED = {"scifact": {"bm25": 0.678, "inpars_v1": 0.774, "inpars_v2": 0.774}}
#: the BEIR average of the InPars-v2 paper (arXiv 2301.01820), shown under the table
PUBLISHED_BEIR_AVERAGE = {"bm25": 0.424, "inpars_v1": 0.539, "inpars_v2": 0.545}
#: BEIR datasets in the order of the InPars-v2 table (those downloadable without a licence)
DEFAULT_DATASETS = [f"beir/{name}" for name in BEIR_MD5 if name != "msmarco"]
#: a spec that runs as several collections, reported as their mean (BEIR's convention for CQADupStack)
GROUPS = {"beir/cqadupstack": [f"beir/cqadupstack/{forum}" for forum in CQADUPSTACK_FORUMS]}
#: status of a licensed collection asked for by its beir/ name: there is nothing to download
NEEDS_LOCAL_COPY = "needs a local copy"
LOCAL_COPY_HOWTO = ("no public download (a licence is needed): build it in BEIR layout (corpus.jsonl, queries.jsonl, "
                    "qrels/test.tsv) as the BEIR repository describes, then pass the folder: --datasets /data/{name}")


@dataclasses.dataclass
class Outcome:
    """What one collection's pipeline came to (a row of the summary)."""

    dataset: str
    name: str
    out_dir: str
    status: str = "pending"
    bm25_ndcg10: float | None = None
    inpars_ndcg10: float | None = None
    published_bm25: float | None = None
    published_inpars_v2: float | None = None
    started: float | None = None
    finished: float | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "status": self.status, "out_dir": self.out_dir,
                "bm25_ndcg@10": self.bm25_ndcg10, "inpars_ndcg@10": self.inpars_ndcg10,
                "published_bm25": self.published_bm25, "published_inpars_v2": self.published_inpars_v2,
                "started": self.started, "finished": self.finished,
                "seconds": round(self.finished - self.started, 1) if self.started and self.finished else None,
                "error": self.error}


def collection_name(spec: str) -> str:
    """The run folder's name: ``beir/scifact`` -> ``scifact``, ``beir/cqadupstack/gis`` -> ``cqadupstack-gis``,
    ``irds:beir/scifact/test`` -> ``beir-scifact-test``, a folder -> its last part."""
    for prefix in ("beir/", "irds:"):
        if spec.startswith(prefix):
            return spec[len(prefix):].strip("/").replace("/", "-")
    return spec.rstrip("/").split("/")[-1]


def expand(specs: list[str]) -> list[str]:
    """``specs`` with each group (``beir/cqadupstack``) replaced by its members, each spec once."""
    out: list[str] = []
    for spec in specs:
        out += [s for s in GROUPS.get(spec.rstrip("/"), [spec]) if s not in out]
    return out


def _mean(values: list[float | None]) -> float | None:
    return round(sum(values) / len(values), 4) if values and None not in values else None


def _row(dataset: str, status: str, **values: Any) -> dict[str, Any]:
    """A summary row that no single pipeline run made (a group's mean, a collection needing a local copy)."""
    return {**Outcome(dataset, collection_name(dataset), "", status=status).row(), "out_dir": None, **values}


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per group with members in ``rows``: the mean of its members' figures once all of them are
    complete (a mean over some forums is not BEIR's figure), else how many are."""
    out = []
    for group, members in GROUPS.items():
        mine = [r for r in rows if r["dataset"] in members]
        if not mine:
            continue
        done = [r for r in mine if r["status"] == "complete"]
        if len(done) < len(members):
            out.append(_row(group, f"{len(done)} of {len(members)} forums complete"))
            continue
        out.append(_row(group, f"mean of {len(members)} forums", **{
            "bm25_ndcg@10": _mean([r["bm25_ndcg@10"] for r in done]),
            "inpars_ndcg@10": _mean([r["inpars_ndcg@10"] for r in done]),
            "seconds": round(sum(r["seconds"] or 0 for r in done), 1)}))
    return out


def local_copy_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per licensed BEIR collection that this run over BEIR (a ``beir/`` spec) did not cover, saying
    how to run it."""
    if not any(r["dataset"].startswith("beir/") for r in rows):
        return []
    covered = {collection_name(r["dataset"]) for r in rows}
    return [_row(f"beir/{name}", NEEDS_LOCAL_COPY, error=LOCAL_COPY_HOWTO.format(name=name))
            for name in LICENSED if name not in covered]


def pipeline_data(spec: str, out_dir: str, base: dict[str, Any], bm25_only: bool, skip_bad_rows: bool,
                  prebuilt: str | None) -> dict[str, Any]:
    """The :class:`~inpars_ray.pipeline.PipelineConfig` fields of one collection's run."""
    data = {**base, "dataset": spec, "out_dir": out_dir}
    if bm25_only:
        data["inpars"] = None
    if skip_bad_rows:
        data["load"] = {**data.get("load", {}), "skip_bad_rows": True}
    if prebuilt is not None and spec.startswith("beir/") and "index" not in base:
        data["index"] = {"prebuilt": prebuilt}  # only beir/<name> has pyserini prebuilt indexes
    return data


def run_one(outcome: Outcome, data: dict[str, Any]) -> Outcome:
    """Run one collection's pipeline; a failure is recorded in ``outcome``, never raised."""
    from inpars_ray.io.lease import run_lease
    from inpars_ray.pipeline import PipelineConfig, run_pipeline

    outcome.started, outcome.status = time.time(), "running"
    logger.info("[full_beir] %s: starting in %s", outcome.dataset, outcome.out_dir)
    try:
        with run_lease(outcome.out_dir, purpose="jobs/full_beir.py"):  # one driver per run root
            summary = run_pipeline(PipelineConfig.from_dict(data))
        outcome.bm25_ndcg10 = round(summary["bm25"]["nDCG@10"], 4)
        if "inpars" in summary:
            outcome.inpars_ndcg10 = round(summary["inpars"]["nDCG@10"], 4)
        outcome.status = "complete"
    except Exception as exc:  # one collection's failure must not stop the others
        typed = find_typed_error(exc)
        outcome.status = "failed"
        outcome.error = f"{type(typed or exc).__name__}: {typed or exc}"
        logger.error("[full_beir] %s failed: %s\n%s", outcome.dataset, outcome.error,
                     "" if typed else traceback.format_exc())
    outcome.finished = time.time()
    logger.info("[full_beir] %s: %s", outcome.dataset, outcome.row())
    return outcome


def render_markdown(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["# inpars-ray over BEIR", "",
             "| dataset | status | BM25 nDCG@10 | InPars nDCG@10 | published BM25 | published InPars-v2 | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['status']} | {cell(r['bm25_ndcg@10'])} | {cell(r['inpars_ndcg@10'])} | "
                     f"{cell(r['published_bm25'])} | {cell(r['published_inpars_v2'])} | {cell(r['seconds'])} |")
    avg = PUBLISHED_BEIR_AVERAGE
    lines += ["", f"Published BEIR average (InPars-v2 paper, arXiv 2301.01820): BM25 {avg['bm25']}, "
              f"InPars-v1 {avg['inpars_v1']}, InPars-v2 {avg['inpars_v2']}. Per-collection published figures: "
              "SciFact from the same paper; the others are not carried."]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed", ""] + [f"- {r['dataset']}: {r['error']}" for r in failed]
    local = [r for r in rows if r["status"] == NEEDS_LOCAL_COPY]
    if local:
        lines += ["", "## Needs a local copy", ""] + [f"- {r['dataset']}: {r['error']}" for r in local]
    return "\n".join(lines) + "\n"


class Summary:
    """The summary files under the run root, rewritten (whole) whenever a collection finishes."""

    def __init__(self, root: str, outcomes: list[Outcome]) -> None:
        self.root, self.outcomes, self._lock = root, outcomes, threading.Lock()

    def write(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = [o.row() for o in self.outcomes]
            rows += group_rows(rows) + local_copy_rows(rows)
            storage.write_json(storage.join(self.root, "summary.json"), rows)
            storage.write_text(storage.join(self.root, "summary.md"), render_markdown(rows))
            return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated dataset specs")
    ap.add_argument("--out-dir", default="runs", help="run root: a folder or gs://bucket/prefix")
    ap.add_argument("--config", default=None, help="YAML of PipelineConfig fields shared by every dataset")
    ap.add_argument("--max-concurrent", type=int, default=4, help="collections running at once")
    ap.add_argument("--prebuilt-index", choices=["auto", "none"], default="auto",
                    help="auto: use pyserini's prebuilt BM25 index for beir/<name> (no indexing); none: always build")
    ap.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--skip-bad-rows", action="store_true")
    ap.add_argument("--bm25-only", action="store_true", help="run the BM25 baseline only (no synthetic-data stages)")
    args = ap.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    base: dict[str, Any] = {}
    if args.config:
        import yaml

        base = yaml.safe_load(Path(args.config).read_text()) or {}
    specs = expand([s.strip() for s in args.datasets.split(",") if s.strip()])
    names = [collection_name(s) for s in specs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError(f"datasets {clashes} would share a run folder: give each collection its own name")
    ensure_ray(args.ray_address)
    prebuilt = None if args.prebuilt_index == "none" else args.prebuilt_index
    outcomes, datas = [], []
    for spec, name in zip(specs, names):
        published = PUBLISHED.get(name, {})
        out = storage.join(args.out_dir, name)
        outcomes.append(Outcome(spec, name, out, published_bm25=published.get("bm25"),
                                published_inpars_v2=published.get("inpars_v2")))
        if spec.rstrip("/") in {f"beir/{n}" for n in LICENSED}:  # nothing to download: say how to run it
            outcomes[-1].status, outcomes[-1].error = NEEDS_LOCAL_COPY, LOCAL_COPY_HOWTO.format(name=name)
        datas.append(pipeline_data(spec, out, base, args.bm25_only, args.skip_bad_rows, prebuilt))
    summary = Summary(args.out_dir, outcomes)
    summary.write()

    def task(i: int) -> None:
        run_one(outcomes[i], datas[i])
        summary.write()

    runnable = [i for i, o in enumerate(outcomes) if o.status != NEEDS_LOCAL_COPY]
    with ThreadPoolExecutor(max_workers=args.max_concurrent, thread_name_prefix="collection") as pool:
        list(pool.map(task, runnable))
    rows = summary.write()
    logger.info("[full_beir] summary in %s\n%s", storage.join(args.out_dir, "summary.md"), render_markdown(rows))
    return 0 if all(o.status == "complete" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
