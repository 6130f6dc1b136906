"""Stage 7 — evaluate: measure a run against qrels with ir-measures.

Defaults are the InPars/BEIR reporting set: nDCG@10 (the headline), RR@10, R@100, R@1000 and MAP; any
measure name ir-measures parses is accepted. Relevance threshold 1 (BEIR). Queries whose ids are listed
in ``exclude_query_ids`` (e.g. queries used as few-shot examples in prompts) are left out of both
qrels and run before measuring.

BEIR's convention (``EvaluateRetrieval.evaluate(..., ignore_identical_ids=True)``, its default): a hit whose
document id equals its query id is dropped from the run before measuring. It matters where queries are
documents of the corpus too (ArguAna's counter-arguments, Quora's duplicate questions): the query's own
document would otherwise take the first rank. ``ignore_identical_ids=False`` keeps them; the summary records
the setting and how many hits it dropped.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100", "R@1000", "AP")


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Aggregate and per-query values of each measure.

    Attributes:
        aggregate: measure name -> mean over the judged queries.
        per_query: (query id, measure name, value) rows.
        num_queries: judged queries that were measured.
        num_queries_without_hits: judged queries absent from the run (they count as zero).
        identical_ids_dropped: hits of judged queries whose document id equals the query id, dropped
            before measuring (BEIR's ``ignore_identical_ids``; 0 when kept).
    """

    aggregate: dict[str, float]
    per_query: list[tuple[str, str, float]]
    num_queries: int
    num_queries_without_hits: int
    identical_ids_dropped: int = 0

    def per_query_table(self) -> pa.Table:
        qids, names, values = (list(c) for c in zip(*self.per_query)) if self.per_query else ([], [], [])
        return pa.table({S.QUERY_ID: qids, "measure": names, "value": values})


def parse_measures(names: Iterable[str]) -> list[Any]:
    """Parse measure names with ir-measures; an unknown name is a :class:`ConfigError`."""
    import ir_measures

    out = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        try:
            out.append(ir_measures.parse_measure(name))
        except (ValueError, NameError, SyntaxError, TypeError) as exc:
            raise ConfigError(f"unknown measure {name!r} ({exc}); use ir-measures names such as nDCG@10, RR@10, "
                              "R@1000, AP") from exc
    if not out:
        raise ConfigError("no measures given")
    return out


def evaluate_run(run: pa.Table, qrels: pa.Table, measures: Sequence[str] = DEFAULT_MEASURES,
                 exclude_query_ids: Iterable[str] = (), ignore_identical_ids: bool = True) -> EvalResult:
    """Measure ``run`` (:data:`schema.RUN`) against ``qrels`` (:data:`schema.QRELS`).

    Every judged query counts: a judged query the run has no hits for scores 0 (ir-measures would
    otherwise leave it out of the mean and flatter the run). ``ignore_identical_ids`` drops hits whose
    document id equals the query id first, as BEIR's evaluation does (module docstring).
    """
    import ir_measures

    S.require_columns(run.column_names, [S.QUERY_ID, S.DOC_ID, S.SCORE], "evaluate (run)")
    S.require_columns(qrels.column_names, [S.QUERY_ID, S.DOC_ID, S.RELEVANCE], "evaluate (qrels)")
    parsed = parse_measures(measures)
    excluded = set(exclude_query_ids)
    qrels_rows = [ir_measures.Qrel(q, d, int(r)) for q, d, r in zip(
        *(qrels.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RELEVANCE))) if q not in excluded]
    judged = {q.query_id for q in qrels_rows}
    run_rows = [ir_measures.ScoredDoc(q, d, float(s)) for q, d, s in zip(
        *(run.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.SCORE))) if q in judged]
    dropped = 0
    if ignore_identical_ids:
        kept = [r for r in run_rows if r.doc_id != r.query_id]
        dropped, run_rows = len(run_rows) - len(kept), kept
        if dropped:
            logger.info("%d hits whose document id equals the query id were dropped (BEIR's ignore_identical_ids)",
                        dropped)
    per_query: list[tuple[str, str, float]] = []
    seen: dict[str, set[str]] = {}
    for metric in ir_measures.iter_calc(parsed, qrels_rows, run_rows):
        per_query.append((metric.query_id, str(metric.measure), float(metric.value)))
        seen.setdefault(str(metric.measure), set()).add(metric.query_id)
    for m in parsed:  # ir-measures may leave a query without hits out of a measure: it scores 0 here
        for qid in sorted(judged - seen.get(str(m), set())):
            per_query.append((qid, str(m), 0.0))
    missing_any = judged - {r.query_id for r in run_rows}
    aggregate = {}
    for m in parsed:
        values = [v for _, name, v in per_query if name == str(m)]
        aggregate[str(m)] = math.fsum(values) / len(values) if values else 0.0
    if missing_any:
        logger.info("%d judged queries have no hits in the run; they count as 0", len(missing_any))
    return EvalResult(aggregate=aggregate, per_query=sorted(per_query), num_queries=len(judged),
                      num_queries_without_hits=len(missing_any), identical_ids_dropped=dropped)


def run_key(run_path: str) -> str:
    """The content key of a run file: the hash of the manifest its stage wrote beside it
    (``<run>.manifest.json``), else the file's size and modification time (a run from elsewhere)."""
    from inpars_ray.io import storage
    from inpars_ray.io.manifest import config_hash, read_manifest

    loc = storage.location(run_path)
    manifest = read_manifest(loc.parent, f"{loc.name}.manifest.json")
    if manifest and manifest.get("status") == "complete":
        return config_hash(manifest)
    info = loc.fs.get_file_info(loc.path)
    return f"{info.size}:{info.mtime_ns}"


def evaluate_files(collection: Any, run_path: str, split: str, measures: Sequence[str],
                   exclude_file: str | None = None, per_query_path: str | None = None,
                   summary_path: str | None = None, skip_bad_rows: bool = False,
                   ignore_identical_ids: bool = True) -> tuple[EvalResult, dict]:
    """Evaluate a TREC run file against ``collection``'s qrels; optionally write per-query and summary files.

    Every path may be local or ``gs://...`` (all are read and written here, in the driver, so a local path
    is fine on any cluster). Measuring is cheap and happens in this process every time; the
    summary records the content keys of its inputs (the run's manifest, the collection's files, the measures
    and excluded queries) and is rewritten only when they changed, so an unchanged rerun writes nothing; it
    records ``ignore_identical_ids`` and the hits it dropped (``identical_ids_dropped``).
    """
    import hashlib
    import json

    from inpars_ray.io import storage
    from inpars_ray.io.load import LoadConfig, read_qrels, read_queries
    from inpars_ray.io.manifest import collection_key, config_hash, versions, write_json_atomic
    from inpars_ray.io.trec import read_trec_run

    run = storage.location(run_path)
    if not run.is_file():
        raise ConfigError(f"run file {run.uri} does not exist")
    load = LoadConfig(skip_bad_rows=skip_bad_rows)
    queries, _ = read_queries(collection, load)
    qrels, _ = read_qrels(collection, split, queries, load)
    excluded: list[str] = []
    if exclude_file:
        excluded = [line.strip() for line in storage.read_text(exclude_file).splitlines() if line.strip()]
    result = evaluate_run(read_trec_run(run_path), qrels, measures, excluded, ignore_identical_ids)
    inputs = {"run": run_key(run_path), "collection": collection_key(collection), "split": split,
              "measures": list(measures), "skip_bad_rows": skip_bad_rows,
              "excluded": hashlib.sha256("\n".join(sorted(excluded)).encode()).hexdigest()[:16],
              "ignore_identical_ids": ignore_identical_ids}
    if per_query_path:
        storage.write_text(per_query_path, "query_id\tmeasure\tvalue\n"
                           + "".join(f"{q}\t{m}\t{v:.6f}\n" for q, m, v in result.per_query))
    summary = {"run": run.uri, "dataset": collection.spec, "split": split, "measures": result.aggregate,
               "num_queries": result.num_queries, "num_queries_without_hits": result.num_queries_without_hits,
               "excluded_queries": len(excluded), "ignore_identical_ids": ignore_identical_ids,
               "identical_ids_dropped": result.identical_ids_dropped, "versions": versions(),
               "inputs_hash": config_hash(inputs)}
    if summary_path:
        old = storage.location(summary_path)
        if not (old.is_file() and old.read_json().get("inputs_hash") == summary["inputs_hash"]):
            write_json_atomic(summary_path, summary)
    logger.info("[evaluate] %s: %s", run.uri, json.dumps({k: round(v, 4) for k, v in result.aggregate.items()}))
    return result, summary
