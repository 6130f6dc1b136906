"""evaluate: ir-measures over Arrow tables; judged queries without hits count as zero."""
from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.stages.evaluate import evaluate_run


def run_table(rows):
    q, d, s = zip(*rows)
    return pa.table({S.QUERY_ID: list(q), S.DOC_ID: list(d), S.RANK: list(range(1, len(q) + 1)), S.SCORE: list(s)})


QRELS = pa.table({S.QUERY_ID: ["q1", "q1", "q2"], S.DOC_ID: ["a", "b", "c"], S.RELEVANCE: [2, 1, 1]})


def test_reciprocal_rank_and_missing_queries_count_as_zero():
    run = run_table([("q1", "x", 3.0), ("q1", "b", 2.0), ("q1", "a", 1.0)])  # q2 has no hits at all
    result = evaluate_run(run, QRELS, ["RR@10", "R@1000"])
    assert result.aggregate["RR@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert result.aggregate["R@1000"] == pytest.approx((1.0 + 0) / 2)
    assert result.num_queries == 2 and result.num_queries_without_hits == 1
    assert ("q2", "RR@10", 0.0) in result.per_query


def test_excluded_queries_leave_both_qrels_and_run():
    run = run_table([("q1", "a", 1.0), ("q2", "z", 1.0)])
    result = evaluate_run(run, QRELS, ["RR@10"], exclude_query_ids=["q2"])
    assert result.aggregate["RR@10"] == pytest.approx(1.0) and result.num_queries == 1


def test_ndcg_uses_graded_relevance():
    perfect = evaluate_run(run_table([("q1", "a", 2.0), ("q1", "b", 1.0)]), QRELS, ["nDCG@10"], ["q2"])
    swapped = evaluate_run(run_table([("q1", "b", 2.0), ("q1", "a", 1.0)]), QRELS, ["nDCG@10"], ["q2"])
    assert perfect.aggregate["nDCG@10"] == pytest.approx(1.0)
    assert swapped.aggregate["nDCG@10"] < 1.0


def test_unknown_measure_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown measure 'nope@3'"):
        evaluate_run(run_table([("q1", "a", 1.0)]), QRELS, ["nope@3"])


def test_python_dash_m_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "inpars_ray", "--help"], capture_output=True, text=True, check=True)
    for verb in ("index", "retrieve", "evaluate", "run", "generate", "filter", "mine", "train"):
        assert verb in out.stdout


# --- BEIR's ignore_identical_ids: a hit that is the query itself is dropped before measuring ------------------
def test_a_hit_whose_doc_id_is_the_query_id_is_dropped_as_beir_does():
    # ArguAna-like: the query is itself a corpus document, and BM25 ranks it first
    qrels = pa.table({S.QUERY_ID: ["q1", "q2"], S.DOC_ID: ["a", "c"], S.RELEVANCE: [1, 1]})
    run = run_table([("q1", "q1", 9.0), ("q1", "a", 5.0), ("q2", "q2", 9.0), ("q2", "x", 5.0), ("q2", "c", 4.0),
                     ("q3", "q3", 1.0)])  # q3 is not judged: its hit is not counted
    dropped = evaluate_run(run, qrels, ["RR@10"])
    assert dropped.aggregate["RR@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert dropped.identical_ids_dropped == 2
    kept = evaluate_run(run, qrels, ["RR@10"], ignore_identical_ids=False)
    assert kept.aggregate["RR@10"] == pytest.approx((1 / 2 + 1 / 3) / 2) and kept.identical_ids_dropped == 0
    # a judged query whose only hit was itself has no hits left: it counts as zero
    alone = evaluate_run(run_table([("q1", "q1", 1.0), ("q2", "c", 1.0)]), qrels, ["RR@10"])
    assert alone.aggregate["RR@10"] == pytest.approx(0.5) and alone.num_queries_without_hits == 1


def _tiny_beir(root):
    import json

    root.mkdir()
    docs = [("q1", "a question that is also a document"), ("a", "the answer"), ("b", "something else")]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a question that is also a document"}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\n")
    return root


def test_evaluate_files_records_the_setting_and_the_dropped_hits(tmp_path):
    import json

    from inpars_ray.io import catalog
    from inpars_ray.io.trec import write_trec_run
    from inpars_ray.stages.evaluate import evaluate_files

    collection = catalog.resolve(str(_tiny_beir(tmp_path / "beir")))
    run = tmp_path / "run.trec"
    write_trec_run(run_table([("q1", "q1", 3.0), ("q1", "a", 2.0), ("q1", "b", 1.0)]), run)
    summary_path = tmp_path / "eval.json"
    result, summary = evaluate_files(collection, str(run), "test", ["RR@10"], summary_path=str(summary_path))
    assert result.aggregate["RR@10"] == pytest.approx(1.0)
    written = json.loads(summary_path.read_text())
    assert (written["ignore_identical_ids"], written["identical_ids_dropped"]) == (True, 1)
    # switching it off is another evaluation: the summary is rewritten, the self-hit costs a rank
    result, _ = evaluate_files(collection, str(run), "test", ["RR@10"], summary_path=str(summary_path),
                               ignore_identical_ids=False)
    assert result.aggregate["RR@10"] == pytest.approx(0.5)
    written = json.loads(summary_path.read_text())
    assert (written["ignore_identical_ids"], written["identical_ids_dropped"]) == (False, 0)
