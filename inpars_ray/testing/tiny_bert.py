"""Tiny, randomly initialised BERT rankers with a WordPiece tokenizer, built offline for mechanical tests.

Two shapes, both saved with ``save_pretrained`` so the ordinary loaders read them:

* :func:`build_tiny_cross_encoder`: ``BertForSequenceClassification`` with one label (a cross-encoder);
* :func:`build_tiny_bi_encoder`: a bare ``BertModel`` (what all-MiniLM-L6-v2 is; a bi-encoder by default,
  and the usual starting point of a cross-encoder whose head is new).

The WordPiece vocabulary is learned with ``tokenizers`` from the bundled collection, with BERT's special
tokens and ``[CLS] A [SEP] B [SEP]`` pair template, so pairs get ``token_type_ids`` like a real BERT.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inpars_ray.runtime.deps import require
from inpars_ray.testing.tiny_t5 import BUNDLED, _bundled_texts

logger = logging.getLogger(__name__)

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_wordpiece_tokenizer(collection: Path = BUNDLED, vocab_size: int = 1500, model_max_length: int = 512):
    """A lowercasing BERT-style WordPiece tokenizer (``[CLS] a [SEP] b [SEP]``) learned from ``collection``."""
    tokenizers = require("tokenizers", "building the tiny BERT tokenizer")
    transformers = require("transformers", "building the tiny BERT tokenizer")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS))

    def corpus() -> Iterator[str]:
        yield from _bundled_texts(collection)

    tok.train_from_iterator(corpus(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length)


def _bert_config(tokenizer, hidden: int, layers: int, heads: int, **extra):
    transformers = require("transformers", "building the tiny BERT")
    return transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=512, type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id, **extra)


def _write(path: str | Path, seed: int, collection: Path, what: str, make: Callable[[Any, Any], Any]) -> Path:
    """Seed torch, build ``make(transformers, tokenizer)`` and save it with the collection's tokenizer to ``path``."""
    torch = require("torch", "building the tiny BERT")
    transformers = require("transformers", "building the tiny BERT")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_wordpiece_tokenizer(collection)
    torch.manual_seed(seed)
    model = make(transformers, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    logger.info("tiny %s (%d parameters) written to %s", what, sum(p.numel() for p in model.parameters()), path)
    return path


def build_tiny_cross_encoder(path: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0,
                             collection: Path = BUNDLED) -> Path:
    """Write a random tiny ``BertForSequenceClassification`` (one label) + tokenizer to ``path``."""
    return _write(path, seed, collection, "cross-encoder", lambda tf, tok: tf.BertForSequenceClassification(
        _bert_config(tok, hidden, layers, heads, num_labels=1)))


def build_tiny_bi_encoder(path: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0,
                          collection: Path = BUNDLED) -> Path:
    """Write a random tiny bare ``BertModel`` + tokenizer to ``path`` (a bi-encoder, or a cross-encoder's base)."""
    return _write(path, seed, collection, "bi-encoder", lambda tf, tok: tf.BertModel(
        _bert_config(tok, hidden, layers, heads), add_pooling_layer=False))
