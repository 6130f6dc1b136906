"""A tiny causal language model built locally, for tests, benchmarks and the offline demo.

:func:`build_tiny_lm` writes a Hugging Face model folder that both transformers and vLLM can load:

* a byte-level BPE tokenizer trained here with ``tokenizers`` on the bundled collection (small vocabulary,
  no chat template, ``<s>`` / ``</s>`` / ``<pad>`` special tokens);
* a randomly initialised ``LlamaForCausalLM`` in float32 with a head size of 64 (a size vLLM's CPU
  attention kernels support). Training it, even for a few steps, costs minutes on a shared 2-core
  machine, so instead the output row of the newline token is tilted towards the average final hidden
  state: greedy answers then end with a newline after a few tokens for some prompts and run to
  ``max_new_tokens`` for others, so both ways a generation ends are exercised.

Nothing is downloaded. The weights are deterministic for a given seed on one machine; tests compare
outputs of the *same* folder, never against hard-coded numbers.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

#: bump when the recipe changes, so cached folders from an older recipe are not reused
RECIPE_VERSION = 1
_BUNDLED = Path(__file__).resolve().parents[1] / "data" / "collections" / "tiny-science"


def _training_lines(seed: int) -> list[str]:
    """InPars-shaped training text from the bundled collection: a document line then a query line."""
    docs = {}
    for raw in (_BUNDLED / "corpus.jsonl").read_text().splitlines():
        obj = json.loads(raw)
        docs[obj["_id"]] = " ".join(f"{obj.get('title', '')} {obj['text']}".split())
    queries = {}
    for raw in (_BUNDLED / "queries.jsonl").read_text().splitlines():
        obj = json.loads(raw)
        queries[obj["_id"]] = obj["text"]
    pairs = []
    for raw in (_BUNDLED / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        qid, did, _ = raw.split("\t")
        if qid in queries and did in docs:
            pairs.append((docs[did], queries[qid]))
    random.Random(seed).shuffle(pairs)
    return [f"Document: {d[:300]}\nRelevant Query: {q}\n" for d, q in pairs]


def build_tiny_lm(path: str | os.PathLike[str], seed: int = 0, vocab_size: int = 512, newline_rate: float = 0.08,
                  hidden_size: int = 128, num_layers: int = 2) -> Path:
    """Build the tiny model folder at ``path`` (created or overwritten) and return it.

    Args:
        path: target folder.
        seed: seeds the tokenizer sample, the weight init and the training batches.
        vocab_size: BPE vocabulary size, special tokens included.
        newline_rate: share of positions (of InPars-shaped text) where the newline is the most likely next
            token after the tilt (0: leave the random weights alone).
        hidden_size: model width; the head size is fixed at 64.
        num_layers: decoder layers.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lines = _training_lines(seed)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines + ["Example 1:\nGood Question: Bad Question:\n"], trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left",
        model_max_length=4096,
    )

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=hidden_size // 64, num_key_value_heads=hidden_size // 64,
        head_dim=64, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.eval()
    if newline_rate > 0:
        _tilt_newline(model, hf_tok, lines, newline_rate)
    model.save_pretrained(path, safe_serialization=True)
    hf_tok.save_pretrained(path)
    # a chat-free tokenizer config: no chat_template key, so nobody wraps prompts in a chat format
    cfg_path = path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    logger.info("tiny LM (%d parameters, vocab %d) written to %s",
                sum(p.numel() for p in model.parameters()), len(hf_tok), path)
    return path


def _tilt_newline(model, tokenizer, lines: list[str], rate: float) -> None:
    """Add ``c * u`` to the newline token's output row, ``u`` the unit mean final hidden state, with ``c``
    chosen by bisection so that newline is the arg-max at about ``rate`` of the positions of ``lines``."""
    import torch

    newline_ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline_ids) != 1:  # pragma: no cover - a byte-level BPE always has the newline byte
        return
    nl = newline_ids[0]
    with torch.no_grad():
        ids = [tokenizer(line, add_special_tokens=False)["input_ids"][:64] for line in lines[:64]]
        hidden = torch.cat([model.model(torch.tensor([row])).last_hidden_state[0] for row in ids])
        weight = model.lm_head.weight
        u = hidden.mean(0)
        u = u / u.norm()
        base = hidden @ weight.T
        others = base.clone()
        others[:, nl] = float("-inf")
        best_other = others.max(1).values
        proj = hidden @ u
        lo, hi = 0.0, 100.0
        for _ in range(40):
            c = (lo + hi) / 2
            share = ((base[:, nl] + c * proj) > best_other).float().mean().item()
            lo, hi = (c, hi) if share < rate else (lo, c)
        weight[nl] += hi * u


def tiny_lm_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A built tiny LM in a cache folder (``$INPARS_RAY_TINY_LM`` or ``~/.cache/inpars-ray``), built once.

    The folder appears under its final name only when complete (built in a temporary folder, then
    renamed), so concurrent test sessions never load half a model.
    """
    override = os.environ.get("INPARS_RAY_TINY_LM")
    if override:
        return build_tiny_lm(override) if not (Path(override) / "config.json").exists() else Path(override)
    root = Path(cache_dir) if cache_dir else Path(os.environ.get("INPARS_RAY_CACHE", Path.home() / ".cache" / "inpars-ray"))
    final = root / f"tiny-llama-v{RECIPE_VERSION}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-llama.", dir=root))
    try:
        build_tiny_lm(staging)
        try:
            os.replace(staging, final)
        except OSError:  # another process finished first; its folder is as good as ours
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
