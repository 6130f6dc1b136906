"""A tiny, randomly initialised monoT5-shaped model with a word-level tokenizer, built offline.

Real monoT5 checkpoints (castorini/monot5-*) use T5's SentencePiece vocabulary, in which ``true`` and
``false`` are single tokens (``▁true`` / ``▁false``). A byte-level tokenizer (ByT5) would split them into
several tokens and change what "P(true) at the first decoder step" means, so the tiny model gets a
small word-level vocabulary trained with ``tokenizers`` on the bundled collection instead, in which both
words are single tokens. Everything is saved with ``save_pretrained`` so that
``AutoModelForSeq2SeqLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` load it like
any Hugging Face checkpoint.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from inpars_ray.runtime.deps import require

logger = logging.getLogger(__name__)

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "collections" / "tiny-science"
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
#: words every monoT5 input or target contains; guaranteed to be in the vocabulary
PROMPT_WORDS = ("query", "document", "relevant", "true", "false", ":")


def _bundled_texts(collection: Path) -> Iterator[str]:
    """Titles, texts and queries of a BEIR-layout folder, one string at a time."""
    for name, fields in (("corpus.jsonl", ("title", "text")), ("queries.jsonl", ("text",))):
        with open(collection / name, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                for field in fields:
                    if row.get(field):
                        yield row[field]


def build_tokenizer(collection: Path = BUNDLED, vocab_size: int = 2000):
    """A lowercasing word-level tokenizer (T5 special-token layout: pad=0, eos=1, unk=2) that appends ``</s>``."""
    tokenizers = require("tokenizers", "building the tiny monoT5 tokenizer")
    transformers = require("transformers", "building the tiny monoT5 tokenizer")
    from tokenizers import models, normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=[PAD, EOS, UNK])

    def corpus() -> Iterator[str]:
        yield " ".join(PROMPT_WORDS)  # the prompt and target words, whatever the collection holds
        yield from _bundled_texts(collection)

    tok.train_from_iterator(corpus(), trainer=trainer)
    # T5 appends </s> to every encoder input and target
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=512
    )


def build_tiny_monot5(
    path: str | Path,
    *,
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    collection: Path = BUNDLED,
) -> Path:
    """Write a random tiny T5 + word-level tokenizer to ``path`` (``save_pretrained``) and return ``path``.

    Args:
        path: output folder; created if missing.
        d_model: hidden size (``d_ff`` is twice this, ``d_kv`` is ``d_model // num_heads``).
        num_layers: encoder and decoder layers each.
        num_heads: attention heads.
        seed: torch seed of the random initialisation, so two builds are identical.
        collection: BEIR-layout folder the vocabulary is learned from.
    """
    torch = require("torch", "building the tiny monoT5")
    transformers = require("transformers", "building the tiny monoT5")

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(collection)
    for word in ("true", "false"):
        ids = tokenizer.encode(word, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, (word, ids)
    config = transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=2 * d_model,
        d_kv=d_model // num_heads,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    logger.info("tiny monoT5 (%d parameters, vocab %d) written to %s",
                sum(p.numel() for p in model.parameters()), len(tokenizer), path)
    return path


def build_tiny_triples(out_dir: str | Path, collection: Path = BUNDLED, split: str = "train", seed: int = 0,
                       repeat: int = 1, files: int = 2, limit: int | None = None) -> Path:
    """Write training triples (schema.TRIPLES, Parquet) made from a collection's qrels, for tests and demos.

    Positive: a document judged relevant (grade >= 1) to the query; negative: a random document not judged
    relevant to it (with a fake 1-based rank). One triple per relevant (query, document) pair, ``repeat``
    times over with fresh negatives, shuffled, cut to the first ``limit`` (all when None), spread over
    ``files`` Parquet files. Stands in for the mining stage.
    """
    import csv
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from inpars_ray import schema as S

    rng = random.Random(seed)
    docs = {}
    with open(collection / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            docs[row["_id"]] = f"{row.get('title', '')} {row['text']}".strip()
    with open(collection / "queries.jsonl", encoding="utf-8") as fh:
        queries = {r["_id"]: r["text"] for r in map(json.loads, fh)}
    relevant: dict[str, set[str]] = {}
    with open(collection / "qrels" / f"{split}.tsv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            if int(r["score"]) >= 1:
                relevant.setdefault(r["query-id"], set()).add(r["corpus-id"])
    doc_ids = sorted(docs)
    rows = []
    for _ in range(repeat):
        for qid in sorted(relevant):
            for pos in sorted(relevant[qid]):
                neg = rng.choice([d for d in doc_ids if d not in relevant[qid]])
                rows.append({S.QUERY_ID: qid, S.QUERY: queries[qid], S.POS_DOC_ID: pos, S.POS_TEXT: docs[pos],
                             S.NEG_DOC_ID: neg, S.NEG_TEXT: docs[neg], S.NEG_RANK: rng.randint(1, 1000),
                             S.FILTER_SCORE: None})
    rng.shuffle(rows)
    rows = rows[:limit] if limit is not None else rows
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_file = -(-len(rows) // files)
    for i in range(files):
        chunk = rows[i * per_file:(i + 1) * per_file]
        pq.write_table(pa.Table.from_pylist(chunk, schema=S.TRIPLES), out_dir / f"part-{i:03d}.parquet",
                       write_page_checksum=True)
    return out_dir
