"""Search for an InPars recipe that beats BM25 (issue 9.7), with bounded CPU, in one process.

The recipes are prototyped here with plain transformers/torch (one process, few threads) so that many
variants fit on a 2-core machine; the winner then runs through the engine (benchmarks/effectiveness.py).
Inputs, all made by the engine itself:

* a BEIR-layout collection (default ``builtin/python-docstrings``: human-written queries);
* generated queries: the Parquet parts of the engine's generate stage (``--generated``);
* BM25: the engine's Lucene index and runs (built here on first use into ``--work``).

Ranker families tried (all start from all-MiniLM-L6-v2, ``local:minilm``):

* ``bi``: the bi-encoder (mean pooling, cosine), zero-shot or fine-tuned GPL/Promptagator-style with an
  in-batch contrastive loss (each query's positive against the batch's positives and BM25 negatives);
* ``ce``: a cross-encoder (fresh one-logit head) trained with InPars-light's listwise loss;
* ``+bm25``: a variant's score interpolated with the min-max normalised BM25 score of the hit.

Run ``python benchmarks/recipe_search.py --help``; every variant's measures are appended to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("recipe_search")


# --- data ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Data:
    """Everything a variant needs, held in memory (collections here are small)."""

    doc_ids: list[str]
    doc_text: dict[str, str]
    test_queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    test_run: dict[str, list[tuple[str, float]]]  # query -> [(doc, bm25 score)] best first
    gen: list[dict[str, Any]]  # generated rows: query_id, doc_id, query, mean_logprob
    gen_run: dict[str, list[tuple[str, float]]]  # generated query -> BM25 hits


def _ray_local(tmp: str) -> None:
    import ray

    if not ray.is_initialized():  # never join another user's cluster: a private local one
        ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
                 configure_logging=False)


def load_data(dataset: str, generated: str, work: str, depth: int = 100, max_test_queries: int | None = None,
              cache_dir: str | None = None) -> Data:
    """Collection, engine BM25 runs (cached in ``work``) and the generated queries."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from inpars_ray import schema as S
    from inpars_ray.io import catalog
    from inpars_ray.io.load import read_qrels, read_queries
    from inpars_ray.stages.filter import document_text

    work_dir = Path(work)
    work_dir.mkdir(parents=True, exist_ok=True)
    collection = catalog.resolve(dataset, cache_dir)
    index = work_dir / "index"
    if not (index / "manifest.json").exists():  # in a child process too (JVM), on a private local Ray
        code = ("import sys, ray; from inpars_ray import bm25, catalog; "
                "ray.init(address='local', num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[4]); "
                "index_mod.build_index(catalog.resolve(sys.argv[1], sys.argv[2] or None), sys.argv[3]); ray.shutdown()")
        subprocess.run([sys.executable, "-c", code, dataset, cache_dir or "", str(index), str(work_dir / "ray")],
                       check=True)
    docs = [json.loads(line) for line in Path(collection.corpus_path()).read_text(encoding="utf-8").splitlines() if line.strip()]
    doc_text = {d["_id"]: document_text(d.get("title"), d.get("text")) for d in docs}
    queries, _ = read_queries(collection)
    qrels_t, _ = read_qrels(collection, "test", queries)
    qrels: dict[str, dict[str, int]] = {}
    for q, d, r in zip(*(qrels_t.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.RELEVANCE))):
        qrels.setdefault(q, {})[d] = r
    qtext = dict(zip(queries.column(S.QUERY_ID).to_pylist(), queries.column(S.QUERY).to_pylist()))
    test_ids = sorted(qrels)
    if max_test_queries:
        test_ids = test_ids[:max_test_queries]
    test_queries = {q: qtext[q] for q in test_ids}

    def run_of(name: str, table: pa.Table) -> dict[str, list[tuple[str, float]]]:
        import pyarrow.parquet as pq

        path = work_dir / f"{name}.d{depth}.parquet"
        if not path.exists():
            # Lucene runs in a child process: a JVM and torch in one process crashed here (SIGSEGV in
            # libtorch's getAccelerator under the JVM's signal handlers)
            topics = work_dir / f"{name}.topics.parquet"
            pq.write_table(table, topics)
            code = ("import sys, pyarrow.parquet as pq; from inpars_ray import bm25; "
                    "pq.write_table(retrieve.retrieve(sys.argv[1], pq.read_table(sys.argv[2]), k=int(sys.argv[3])), sys.argv[4])")
            subprocess.run([sys.executable, "-c", code, str(index), str(topics), str(depth), str(path)], check=True)

        run = pq.read_table(path).sort_by([(S.QUERY_ID, "ascending"), (S.RANK, "ascending")])
        out: dict[str, list[tuple[str, float]]] = {}
        for q, d, s in zip(*(run.column(c).to_pylist() for c in (S.QUERY_ID, S.DOC_ID, S.SCORE))):
            out.setdefault(q, []).append((d, s))
        return out

    test_table = pa.table({S.QUERY_ID: test_ids, S.QUERY: [qtext[q] for q in test_ids]})
    test_run = run_of(f"test{len(test_ids)}", test_table)
    gen_rows = []
    if generated:
        g = pads.dataset(generated, format="parquet").to_table(
            columns=[S.QUERY_ID, S.DOC_ID, S.QUERY, S.MEAN_LOGPROB, S.ERROR])
        for row in g.to_pylist():
            if row[S.ERROR] is None and row[S.QUERY]:
                gen_rows.append(row)
        gen_rows.sort(key=lambda r: r[S.QUERY_ID])
    gen_table = pa.table({S.QUERY_ID: [r[S.QUERY_ID] for r in gen_rows], S.QUERY: [r[S.QUERY] for r in gen_rows]})
    gen_run = run_of(f"gen{len(gen_rows)}", gen_table) if gen_rows else {}
    return Data([d["_id"] for d in docs], doc_text, test_queries, qrels, test_run, gen_rows, gen_run)


# --- measures -----------------------------------------------------------------------------------------------
def measure(run: dict[str, list[tuple[str, float]]], data: Data) -> dict[str, Any]:
    """nDCG@10, RR@10, R@100 (ir-measures) and per-query nDCG@10 of a run over the test queries."""
    import ir_measures
    from ir_measures import RR, R, nDCG

    qrels = [ir_measures.Qrel(q, d, r) for q, docs in data.qrels.items() if q in data.test_queries for d, r in docs.items()]
    scored = [ir_measures.ScoredDoc(q, d, float(s)) for q, hits in run.items() for d, s in hits]
    per: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc([nDCG @ 10, RR @ 10, R @ 100], qrels, scored):
        per.setdefault(str(m.measure), {})[m.query_id] = m.value
    n = len(data.test_queries)
    agg = {name: math.fsum(per.get(name, {}).values()) / n for name in ("nDCG@10", "RR@10", "R@100")}
    agg["per_query_ndcg"] = {q: per.get("nDCG@10", {}).get(q, 0.0) for q in data.test_queries}
    return agg


def vs_bm25(sys_m: dict[str, Any], bm25_m: dict[str, Any]) -> tuple[int, int]:
    a, b = sys_m["per_query_ndcg"], bm25_m["per_query_ndcg"]
    return sum(a[q] > b[q] + 1e-9 for q in a), sum(a[q] < b[q] - 1e-9 for q in a)


# --- models -------------------------------------------------------------------------------------------------
def minilm_path() -> str:
    from inpars_ray.models.local_models import MINILM, resolve_model

    return resolve_model(MINILM)


class BiEncoder:
    """all-MiniLM-L6-v2 (or a fine-tuned copy) as a bi-encoder: mean pooling, cosine."""

    def __init__(self, path: str, q_len: int = 48, d_len: int = 192, doc_encoder: BiEncoder | None = None) -> None:
        """``doc_encoder``: a frozen encoder for documents (query-side fine-tuning: the corpus embeddings
        of the zero-shot model stay valid, so nothing is re-embedded after training)."""
        import torch
        import transformers

        self.doc_encoder = doc_encoder
        self.torch = torch
        self.tok = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModel.from_pretrained(path)
        self.q_len, self.d_len = q_len, d_len
        self._doc_cache: dict[str, np.ndarray] = {}  # doc id -> embedding, valid while the weights do not change

    def _embed(self, texts: list[str], max_len: int, grad: bool = False):
        torch = self.torch
        enc = self.tok(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        with torch.set_grad_enabled(grad):
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(emb, dim=-1)

    def embed(self, texts: list[str], max_len: int, batch: int = 64) -> np.ndarray:
        self.model.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")  # less padding
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for i in range(0, len(texts), batch):
            rows = order[i:i + batch]
            out[rows] = self._embed([texts[j] for j in rows], max_len).numpy()
        return out

    def doc_embeddings(self, data: Data, ids: set[str]) -> dict[str, np.ndarray]:
        """Embeddings of documents ``ids``; each document is embedded once per model state."""
        if self.doc_encoder is not None:
            return self.doc_encoder.doc_embeddings(data, ids)
        todo = sorted(set(ids) - set(self._doc_cache))
        if todo:
            self._doc_cache.update(zip(todo, self.embed([data.doc_text[d] for d in todo], self.d_len)))
        return self._doc_cache

    def rerank(self, data: Data, depth: int) -> dict[str, list[tuple[str, float]]]:
        """Cosine scores of each test query's BM25 top-``depth``; documents are embedded once each."""
        qids = list(data.test_queries)
        demb = self.doc_embeddings(data, {d for q in qids for d, _ in data.test_run.get(q, [])[:depth]})
        qemb = dict(zip(qids, self.embed([data.test_queries[q] for q in qids], self.q_len)))
        return {q: [(d, float(qemb[q] @ demb[d])) for d, _ in data.test_run.get(q, [])[:depth]] for q in qids}

    def train(self, examples: list[tuple[str, str, list[str]]], epochs: float, lr: float, batch: int, warmup: float,
              scale: float = 20.0, seed: int = 0, doc_vectors: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """In-batch contrastive fine-tuning (MultipleNegativesRanking with hard negatives):
        each query against every positive and negative of its batch, softmax cross-entropy."""
        torch = self.torch
        torch.manual_seed(seed)
        rng = random.Random(seed)
        steps_per_epoch = max(1, len(examples) // batch)
        total = max(1, int(round(steps_per_epoch * epochs)))
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        warm = int(total * warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / max(1, warm)) * max(0.0, (total - s) / max(1, total - warm)) if s >= warm
            else (s + 1) / max(1, warm))
        self.model.train()
        self._doc_cache.clear()  # (a frozen doc_encoder keeps its own cache)
        losses = []
        order: list[int] = []
        t0 = time.time()
        for step in range(total):
            if len(order) < batch:
                more = list(range(len(examples)))
                rng.shuffle(more)
                order += more
            rows = [examples[i] for i in order[:batch]]
            order = order[batch:]
            q = self._embed([r[0] for r in rows], self.q_len, grad=True)
            docs = [r[1] for r in rows] + [n for r in rows for n in r[2]]
            if doc_vectors is not None:  # frozen document side: constant vectors
                d = torch.from_numpy(np.stack([doc_vectors[x] for x in docs]))
            else:
                d = self._embed(docs, self.d_len, grad=True)
            logits = scale * q @ d.T
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(rows)))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss))
            if step % 10 == 0 or step == total - 1:
                logger.info("bi train step %d/%d loss %.4f (%.0f s)", step + 1, total, float(loss), time.time() - t0)
        self.model.eval()
        return {"steps": total, "first_loss": losses[0], "last_loss": float(np.mean(losses[-5:])), "seconds": time.time() - t0}


class CrossEncoder:
    """all-MiniLM-L6-v2 with a fresh one-logit head, trained with InPars-light's listwise loss."""

    def __init__(self, path: str, max_len: int = 192) -> None:
        import torch
        import transformers

        self.torch = torch
        self.tok = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        self.max_len = max_len

    def _logits(self, qs: list[str], ds: list[str]):
        enc = self.tok(qs, ds, truncation=True, max_length=self.max_len, padding=True, return_tensors="pt")
        return self.model(**enc).logits[:, 0]

    def score(self, pairs: list[tuple[str, str]], batch: int = 32) -> np.ndarray:
        torch = self.torch
        self.model.eval()
        order = np.argsort([len(q) + len(d) for q, d in pairs], kind="stable")
        out = np.zeros(len(pairs), dtype=np.float32)
        with torch.no_grad():
            for i in range(0, len(pairs), batch):
                rows = order[i:i + batch]
                out[rows] = self._logits([pairs[j][0] for j in rows], [pairs[j][1] for j in rows]).numpy()
        return out

    def rerank(self, data: Data, depth: int) -> dict[str, list[tuple[str, float]]]:
        pairs, keys = [], []
        for q, text in data.test_queries.items():
            for d, _ in data.test_run.get(q, [])[:depth]:
                pairs.append((text, data.doc_text[d]))
                keys.append((q, d))
        scores = self.score(pairs)
        out: dict[str, list[tuple[str, float]]] = {q: [] for q in data.test_queries}
        for (q, d), s in zip(keys, scores):
            out[q].append((d, float(s)))
        return out

    def train(self, examples: list[tuple[str, str, list[str]]], epochs: float, lr: float, batch: int, warmup: float,
              seed: int = 0) -> dict[str, Any]:
        torch = self.torch
        torch.manual_seed(seed)
        rng = random.Random(seed)
        total = max(1, int(round(max(1, len(examples) // batch) * epochs)))
        warm = int(total * warmup)
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
        self.model.train()
        order: list[int] = []
        losses = []
        t0 = time.time()
        for step in range(total):
            if len(order) < batch:
                more = list(range(len(examples)))
                rng.shuffle(more)
                order += more
            rows = [examples[i] for i in order[:batch]]
            order = order[batch:]
            n = 1 + len(rows[0][2])
            qs = [r[0] for r in rows for _ in range(n)]
            ds = [x for r in rows for x in [r[1], *r[2]]]
            logits = self._logits(qs, ds).view(len(rows), n)
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss))
            if step % 10 == 0 or step == total - 1:
                logger.info("ce train step %d/%d loss %.4f (%.0f s)", step + 1, total, float(loss), time.time() - t0)
        self.model.eval()
        return {"steps": total, "first_loss": losses[0], "last_loss": float(np.mean(losses[-5:])), "seconds": time.time() - t0}


# --- recipe pieces ------------------------------------------------------------------------------------------
def interpolate(run: dict[str, list[tuple[str, float]]], bm25_run: dict[str, list[tuple[str, float]]],
                alpha: float) -> dict[str, list[tuple[str, float]]]:
    """``alpha * minmax(bm25) + (1 - alpha) * minmax(model)`` per query (both min-max normalised)."""
    out = {}
    for q, hits in run.items():
        bm = dict(bm25_run.get(q, []))

        def norm(values: list[float]) -> list[float]:
            lo, hi = min(values), max(values)
            return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in values]

        if not hits:
            out[q] = []
            continue
        m = norm([s for _, s in hits])
        b = norm([bm.get(d, 0.0) for d, _ in hits])
        out[q] = [(d, alpha * bs + (1 - alpha) * ms) for (d, _), ms, bs in zip(hits, m, b)]
    return out


def examples_for(data: Data, rows: list[dict[str, Any]], negatives: int, neg_depth: int, seed: int,
                 skip_top: int = 0) -> list[tuple[str, str, list[str]]]:
    """(query, positive text, [negative texts]): negatives drawn uniformly from the query's BM25 top
    ``neg_depth`` (ranks after ``skip_top``), never the positive (InPars' miner, at a smaller depth)."""
    out = []
    for r in rows:
        hits = [d for d, _ in data.gen_run.get(r["query_id"], [])[skip_top:neg_depth] if d != r["doc_id"]]
        if len(hits) < negatives:
            continue
        rng = random.Random(f"{seed}:{r['query_id']}")
        out.append((r["query"], data.doc_text[r["doc_id"]], [data.doc_text[d] for d in rng.sample(hits, negatives)]))
    return out


def filter_rows(data: Data, how: str, keep: float, seed: int, consistency_k: int = 3,
                ranker: Any = None) -> list[dict[str, Any]]:
    """The generated rows a recipe trains on: ``all``, ``scores`` (top ``keep`` fraction by mean log-prob)
    or ``consistency`` (source document within the ranker's top ``consistency_k`` of the query's BM25 hits)."""
    rows = [r for r in data.gen if len(r["query"].split()) >= 3]
    seen: set[str] = set()
    uniq = []
    for r in rows:  # the same question twice (copied few-shot example) teaches nothing
        key = " ".join(r["query"].casefold().split())
        if key not in seen:
            seen.add(key)
            uniq.append(r)
    rows = uniq
    if how == "all":
        return rows
    if how == "scores":
        rows = sorted(rows, key=lambda r: -(r["mean_logprob"] or -1e9))
        return rows[: max(1, int(len(rows) * keep))]
    if how == "consistency":
        kept = []
        for r, top in zip(rows, consistency_topk(data, rows, ranker, consistency_k)):
            if r["doc_id"] in top:
                kept.append(r)
        return kept
    raise ValueError(how)


def consistency_topk(data: Data, rows: list[dict[str, Any]], ranker: Any, k: int, depth: int = 20) -> list[set[str]]:
    """For each row, the ``k`` best of its BM25 top ``depth`` under ``ranker`` (a :class:`BiEncoder`); as in
    InPars-light, a source document BM25 did not retrieve cannot be in it."""
    demb = ranker.doc_embeddings(data, {d for r in rows for d, _ in data.gen_run.get(r["query_id"], [])[:depth]})
    qemb = ranker.embed([r["query"] for r in rows], ranker.q_len)
    out = []
    for r, qe in zip(rows, qemb):
        cands = {d for d, _ in data.gen_run.get(r["query_id"], [])[:depth]}
        best = sorted(cands, key=lambda d: (-float(qe @ demb[d]), d))[:k]
        out.append(set(best))
    return out


# --- variants -----------------------------------------------------------------------------------------------
def model_key(spec: dict[str, Any], seed: int) -> str:
    """Cache key of the model a spec trains on *all* candidates (filter settings left out)."""
    drop = ("filter", "alpha", "keep", "consistency_k", "consistency_trained", "rerank_depth")
    return f"model:{json.dumps({k: v for k, v in spec.items() if k not in drop}, sort_keys=True)}:{seed}"


def run_variant(name: str, spec: dict[str, Any], data: Data, depth: int, seed: int,
                cache: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """One recipe -> a reranked run of the test queries."""
    bm25_run = {q: data.test_run.get(q, [])[:depth] for q in data.test_queries}
    family = spec.get("family", "bi")
    if family == "bm25":
        return bm25_run
    if family == "bi" and not spec.get("train"):
        key = f"zs-bi:{spec.get('rerank_depth', depth)}"
        if key not in cache:
            cache[key] = cache.setdefault("zs-model", BiEncoder(minilm_path())).rerank(data, spec.get("rerank_depth", depth))
        run = cache[key]
    else:
        filt = spec.get("filter", "all")
        ranker_for_filter = None
        if filt == "consistency":
            if spec.get("consistency_trained", True):
                # InPars-light: the ranker trained on all candidates with the same recipe (the "all" model)
                key = model_key(spec, seed)
                if key not in cache:
                    run_variant(f"{name}/all", {**spec, "filter": "all", "alpha": None}, data, depth, seed, cache)
                ranker_for_filter = cache[key]
            else:
                ranker_for_filter = cache.setdefault("zs-model", BiEncoder(minilm_path()))
        rows = filter_rows(data, filt, spec.get("keep", 0.5), seed, spec.get("consistency_k", 3), ranker_for_filter)
        ex = examples_for(data, rows, spec.get("negatives", 1), spec.get("neg_depth", 30), seed, spec.get("skip_top", 0))
        logger.info("%s: %d generated rows -> %d kept -> %d training examples", name, len(data.gen), len(rows), len(ex))
        reuse = cache.get(model_key(spec, seed)) if filt == "all" and family == "bi" else None
        if reuse is not None:  # the same recipe's "all" model, trained for another system this seed
            model, info = reuse, dict(cache.get(f"info-model:{model_key(spec, seed)}", {}))
        elif family == "bi":
            vectors = None
            if spec.get("query_only"):
                zs = cache.setdefault("zs-model", BiEncoder(minilm_path()))
                model = BiEncoder(minilm_path(), doc_encoder=zs)
                by_id = {data.doc_text[d]: d for d in data.doc_text}
                texts = {x for e in ex for x in [e[1], *e[2]]}
                emb = zs.doc_embeddings(data, {by_id[t] for t in texts})
                vectors = {t: emb[by_id[t]] for t in texts}
            else:
                model = BiEncoder(minilm_path())
            info = model.train(ex, spec.get("epochs", 1.0), spec.get("lr", 2e-5), spec.get("batch", 16),
                               spec.get("warmup", 0.1), seed=seed, doc_vectors=vectors)
        else:
            model = CrossEncoder(minilm_path())
            info = model.train(ex, spec.get("epochs", 1.0), spec.get("lr", 1e-4), spec.get("batch", 8),
                               spec.get("warmup", 0.1), seed=seed)
        info.update(kept=len(rows), examples=len(ex))
        cache[f"info:{name}"] = info
        if filt == "all" and family == "bi":  # kept for the consistency filter of the same recipe and seed
            cache[model_key(spec, seed)] = model
            cache[f"info-model:{model_key(spec, seed)}"] = info
        run = model.rerank(data, spec.get("rerank_depth", depth))
    if spec.get("alpha"):  # the reranked hits only (the engine's rerank.first_stage_weight does the same):
        # scaled together with the tail's stand-in scores below, they would all squeeze to about 1
        run = interpolate(run, bm25_run, spec["alpha"])
    # hits below the model's rerank depth keep their BM25 order below the reranked ones
    run = dict(run)
    for q in run:
        rest = data.test_run.get(q, [])[len(run[q]):depth]
        low = min((s for _, s in run[q]), default=0.0)
        run[q] = run[q] + [(d, low - 1 - i) for i, (d, _) in enumerate(rest)]
    return run


#: named recipes (the search space tried); each adds what it changes to the defaults in run_variant
VARIANTS: dict[str, dict[str, Any]] = {
    "bm25": {"family": "bm25"},
    "zs-bi": {"family": "bi"},
    "zs-bi+bm25a.3": {"family": "bi", "alpha": 0.3},
    "bi-all-lr2e-5-e1": {"family": "bi", "train": True, "filter": "all", "lr": 2e-5, "epochs": 1},
    "bi-all-lr2e-5-e1+bm25a.3": {"family": "bi", "train": True, "filter": "all", "lr": 2e-5, "epochs": 1, "alpha": 0.3},
    "bi-all-lr5e-5-e2": {"family": "bi", "train": True, "filter": "all", "lr": 5e-5, "epochs": 2},
    "bi-scores50-lr2e-5-e1": {"family": "bi", "train": True, "filter": "scores", "keep": 0.5, "lr": 2e-5, "epochs": 1},
    "bi-consistency-lr2e-5-e1": {"family": "bi", "train": True, "filter": "consistency", "lr": 2e-5, "epochs": 1},
    "bi-consistency0-lr2e-5-e1": {"family": "bi", "train": True, "filter": "consistency", "consistency_trained": False,
                                  "lr": 2e-5, "epochs": 1},
    "ce-listwise-lr1e-4-e3": {"family": "ce", "train": True, "filter": "all", "lr": 1e-4, "epochs": 3, "negatives": 3,
                              "batch": 8, "warmup": 0.1, "rerank_depth": 20},
    "ce-listwise-lr1e-4-e3+bm25a.5": {"family": "ce", "train": True, "filter": "all", "lr": 1e-4, "epochs": 3,
                                      "negatives": 3, "batch": 8, "warmup": 0.1, "rerank_depth": 20, "alpha": 0.5},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="builtin/python-docstrings")
    ap.add_argument("--generated", required=True, help="the generate stage's parts folder")
    ap.add_argument("--work", required=True, help="cache folder for the index and BM25 runs")
    ap.add_argument("--variants", default="bm25,zs-bi", help="comma-separated names of VARIANTS; or 'list'")
    ap.add_argument("--depth", type=int, default=100, help="BM25 run depth per test query (R@100 needs 100)")
    ap.add_argument("--rerank-depth", type=int, default=None, help="hits each reranker reorders (default: --depth, "
                    "unless the variant sets its own)")
    ap.add_argument("--max-test-queries", type=int, default=None)
    ap.add_argument("--max-generated", type=int, default=None, help="use only the first N generated queries")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/recipe_search.jsonl")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.variants == "list":
        print("\n".join(f"{k}: {v}" for k, v in VARIANTS.items()))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    data = load_data(args.dataset, args.generated, args.work, args.depth, args.max_test_queries, args.cache_dir)
    if args.max_generated:
        data.gen = data.gen[: args.max_generated]
    cache: dict[str, Any] = {}
    bm25_m = measure(run_variant("bm25", VARIANTS["bm25"], data, args.depth, args.seed, cache), data)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.variants.split(","):
        t0 = time.time()
        spec = dict(VARIANTS[name])
        if args.rerank_depth and "rerank_depth" not in spec:
            spec["rerank_depth"] = args.rerank_depth
        m = bm25_m if name == "bm25" else measure(run_variant(name, spec, data, args.depth, args.seed, cache), data)
        better, worse = vs_bm25(m, bm25_m)
        row = {"variant": name, "spec": spec, "seed": args.seed, "dataset": args.dataset,
               "test_queries": len(data.test_queries), "generated": len(data.gen), "depth": args.depth,
               **{k: round(v, 4) for k, v in m.items() if k != "per_query_ndcg"},
               "improved_vs_bm25": better, "hurt_vs_bm25": worse, "seconds": round(time.time() - t0, 1),
               "train": cache.get(f"info:{name}")}
        logger.info("RESULT %s", json.dumps(row))
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
