"""A generator of BEIR-layout collections of any size: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``.

Words follow a Zipf law over a 50,000-word vocabulary (so BM25 posting lists look like a real corpus's),
documents have 30-120 words, queries 2-5. The corpus is written in chunks, so generating 5 GB needs no more
memory than generating 5 MB. Deterministic for a seed.

    .venv/bin/python benchmarks/corpus_gen.py OUT_DIR (--docs N | --gigabytes G) [--queries 1000] [--seed 7]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

VOCAB = 50_000
CHUNK = 20_000


def _sampler(seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(VOCAB)], dtype=object)
    cdf = np.cumsum(1.0 / np.arange(1, VOCAB + 1) ** 1.1)
    return rng, words, cdf / cdf[-1]


def _texts(rng: np.random.Generator, words: np.ndarray, cdf: np.ndarray, n: int, lo: int, hi: int) -> list[str]:
    lengths = rng.integers(lo, hi, size=n)
    flat = words[np.searchsorted(cdf, rng.random(int(lengths.sum())))]
    ends = np.cumsum(lengths)
    return [" ".join(flat[e - k:e]) for e, k in zip(ends, lengths)]


def write_collection(root: str | Path, n_docs: int | None = None, n_queries: int = 1000, seed: int = 7,
                     target_bytes: int | None = None) -> dict[str, int]:
    """Write a collection to ``root``: ``n_docs`` documents, or as many as fill ``target_bytes`` of corpus.

    Each query's one relevant document is a random document id (qrels/test.tsv). Returns the counts.
    """
    if (n_docs is None) == (target_bytes is None):
        raise ValueError("give exactly one of n_docs and target_bytes")
    root = Path(root)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    rng, words, cdf = _sampler(seed)
    written = docs = 0
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        while (n_docs is not None and docs < n_docs) or (target_bytes is not None and written < target_bytes):
            n = CHUNK if n_docs is None else min(CHUNK, n_docs - docs)
            lines = "".join(json.dumps({"_id": f"d{docs + i}", "title": "", "text": t}) + "\n"
                            for i, t in enumerate(_texts(rng, words, cdf, n, 30, 120)))
            fh.write(lines)
            written += len(lines)
            docs += n
    with (root / "queries.jsonl").open("w") as fh, (root / "qrels" / "test.tsv").open("w") as qr:
        qr.write("query-id\tcorpus-id\tscore\n")
        for q, text in enumerate(_texts(rng, words, cdf, n_queries, 2, 6)):
            fh.write(json.dumps({"_id": f"q{q}", "text": text}) + "\n")
            qr.write(f"q{q}\td{int(rng.integers(docs))}\t1\n")
    return {"documents": docs, "queries": n_queries, "corpus_bytes": written}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    size = ap.add_mutually_exclusive_group(required=True)
    size.add_argument("--docs", type=int)
    size.add_argument("--gigabytes", type=float)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    target = int(args.gigabytes * 1e9) if args.gigabytes else None
    print(json.dumps(write_collection(args.out, args.docs, args.queries, args.seed, target)))


if __name__ == "__main__":
    main()
