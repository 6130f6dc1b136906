"""The three ranker families (monoT5, cross-encoder, bi-encoder): telling them apart, loading and saving.

* ``monot5``: a seq2seq model; the score is P(true) at the first decoder step, with the prompt and
  truncation of :mod:`inpars_ray.models.monot5` (the document is cut, never the ``Relevant:`` suffix).
* ``cross-encoder``: ``AutoModelForSequenceClassification`` with one label (BERT, MiniLM, ELECTRA,
  DeBERTa...); the query and the document are one input pair, the score is the raw logit. A checkpoint
  saved by :func:`save_cross_encoder` loads in ``sentence_transformers.CrossEncoder`` with the same scores.
* ``bi-encoder``: ``AutoModel`` + pooling (mean over tokens by default, as all-MiniLM-L6-v2 uses); the score
  is the cosine of the query and document embeddings. :func:`save_bi_encoder` writes the
  sentence-transformers files, so ``SentenceTransformer(path)`` loads it too.

Which family a checkpoint belongs to is read from the checkpoint itself (:func:`detect_family`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

from inpars_ray.errors import ConfigError
from inpars_ray.runtime.deps import require

MONOT5, CROSS_ENCODER, BI_ENCODER = "monot5", "cross-encoder", "bi-encoder"
#: a ranker family, as a config field declares it (pydantic refuses any other value, naming the field)
Family = Literal["monot5", "cross-encoder", "bi-encoder"]
FAMILIES: tuple[str, ...] = get_args(Family)
#: a bi-encoder's pooling
Pooling = Literal["mean", "cls"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
#: files sentence-transformers writes for a bi-encoder (SentenceTransformer.save)
ST_MODULES = "modules.json"


def local_model(model: str | Path) -> str:
    """A model this process can load: a published run artifact on an object store (``gs://...``) is copied
    once to this node (:func:`inpars_ray.io.artifacts.materialize`); local folders and hub ids are unchanged."""
    text = str(model)
    if "://" in text:
        from inpars_ray.io import artifacts

        return str(artifacts.materialize(text))
    if not os.path.exists(text):  # a model assembled from wheels on the driver's node, absent on this one
        from inpars_ray.models import local_models

        for name, spec in local_models.SPLIT.items():
            if Path(text) == local_models.CACHE_DIR / spec.folder:
                return str(local_models.assemble(name))
    return text


# --- family detection -------------------------------------------------------------------------------------
def family_of_config(config: dict[str, Any]) -> str:
    """The family a Hugging Face ``config.json`` describes (its ``architectures``, else its shape)."""
    archs = config.get("architectures") or []
    if config.get("is_encoder_decoder") or any("ConditionalGeneration" in a or "Seq2Seq" in a for a in archs):
        return MONOT5
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return CROSS_ENCODER
    if archs and all(a.endswith("Model") for a in archs):
        return BI_ENCODER
    raise ConfigError(f"cannot tell the ranker family from architectures={archs}; give family explicitly "
                      f"(one of {FAMILIES})")


def detect_family(model: str | Path) -> str:
    """``monot5``, ``cross-encoder`` or ``bi-encoder`` for a local folder or a (cached) Hugging Face id.

    A sentence-transformers bi-encoder folder (``modules.json``) is a bi-encoder; otherwise config.json's
    ``architectures`` decide: ``*ForConditionalGeneration`` (T5) is monoT5, ``*ForSequenceClassification``
    a cross-encoder, a bare encoder (``BertModel``) a bi-encoder.
    """
    if "://" in str(model):  # a published run artifact: read its config where it is
        from inpars_ray.io import storage

        loc = storage.location(str(model))
        if loc.join(ST_MODULES).is_file():
            return BI_ENCODER
        if not loc.join("config.json").is_file():
            raise ConfigError(f"{loc.uri} holds no config.json: not a Hugging Face checkpoint")
        return family_of_config(loc.join("config.json").read_json())
    folder = Path(model)
    if folder.is_dir():
        if (folder / ST_MODULES).exists():
            return BI_ENCODER
        if not (folder / "config.json").exists():
            raise ConfigError(f"{folder} holds no config.json: not a Hugging Face checkpoint")
        return family_of_config(json.loads((folder / "config.json").read_text()))
    transformers = require("transformers", "reading a checkpoint's config")
    try:
        config = transformers.AutoConfig.from_pretrained(str(model)).to_dict()
    except OSError as exc:
        raise ConfigError(f"cannot read the config of ranker {model!r}: {exc}") from exc
    return family_of_config(config)


# --- loading ----------------------------------------------------------------------------------------------
def load_model(family: str, source: str | Path, training: bool = False):
    """(model, tokenizer) of ``family`` from a folder or Hugging Face id.

    A cross-encoder can start from a bare encoder (all-MiniLM-L6-v2): its one-label head is then new.
    """
    transformers = require("transformers", "loading a ranker")
    source = local_model(source)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    if family == MONOT5:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(source)
    elif family == CROSS_ENCODER:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    elif family == BI_ENCODER:
        model = transformers.AutoModel.from_pretrained(source)
    else:
        raise ConfigError(f"unknown ranker family {family!r}; one of {FAMILIES}")
    if not training:
        model.eval()
    return model, tokenizer


def bi_encoder_pooling(model: str | Path, default: str = "mean") -> str:
    """The pooling a sentence-transformers folder declares (``1_Pooling/config.json``), else ``default``."""
    folder = Path(model)
    modules = folder / ST_MODULES
    if not modules.exists():
        return default
    for module in json.loads(modules.read_text()):
        if module.get("type", "").endswith("Pooling"):
            cfg = json.loads((folder / module["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            raise ConfigError(f"{folder}: pooling {cfg} is not supported (mean or cls)")
    return default


def input_length(max_length: int, folder: str | Path) -> int:
    """Tokens per input: ``max_length``, capped by a sentence-transformers folder's own."""
    return min(max_length, st_max_length(folder) or max_length)


def st_max_length(model: str | Path) -> int | None:
    """The ``max_seq_length`` a sentence-transformers folder was trained with (all-MiniLM-L6-v2: 256)."""
    path = Path(model) / "sentence_bert_config.json"
    return json.loads(path.read_text()).get("max_seq_length") if path.exists() else None


# --- saving -----------------------------------------------------------------------------------------------
def save_cross_encoder(model, tokenizer, path: str | Path, state_dict=None) -> None:
    """Save a cross-encoder so ``CrossEncoder(path)`` loads it and predicts our raw logits.

    sentence-transformers applies a sigmoid to one-label models unless config.json names another
    activation; the identity makes its ``predict`` return exactly :meth:`Ranker.score`'s numbers.
    """
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.linear.Identity"}
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)


def save_bi_encoder(model, tokenizer, path: str | Path, pooling: str = "mean", max_length: int = 512,
                    state_dict=None) -> None:
    """Save a bi-encoder as Hugging Face files plus the sentence-transformers module files."""
    path = Path(path)
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (path / ST_MODULES).write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                "do_lower_case": False}))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": model.config.hidden_size, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (path / "2_Normalize").mkdir(exist_ok=True)


def save_ranker(family: str, model, tokenizer, path: str | Path, pooling: str = "mean", max_length: int = 512,
                state_dict=None) -> None:
    """Save a trained ranker of any family in the format its loaders expect."""
    if family == CROSS_ENCODER:
        save_cross_encoder(model, tokenizer, path, state_dict)
    elif family == BI_ENCODER:
        save_bi_encoder(model, tokenizer, path, pooling, max_length, state_dict)
    else:
        model.save_pretrained(path, state_dict=state_dict)
        tokenizer.save_pretrained(path)


# --- two towers and weight interpolation --------------------------------------------------------------------
#: subfolder of a query-tower-only bi-encoder holding its document tower (the frozen start model)
DOCUMENT_ENCODER = "document_encoder"


def load_document_encoder(folder: str | Path, device=None):
    """The document tower of a bi-encoder trained query-tower-only (``folder/document_encoder``), or None
    when the folder holds one tower for both sides (a Hugging Face id, or an ordinary checkpoint)."""
    path = Path(str(folder)) / DOCUMENT_ENCODER
    if not (path / "config.json").is_file():
        return None
    model, _ = load_model(BI_ENCODER, path)
    return model.to(device) if device is not None else model


def save_document_encoder(base_model: str | Path, dest: str | Path, pooling: str = "mean",
                          max_length: int = 512) -> None:
    """Write the start model as ``dest/document_encoder`` (sentence-transformers files), so that the
    query-tower-only model in ``dest`` loads as one ranker with both towers."""
    model, tokenizer = load_model(BI_ENCODER, base_model)
    save_bi_encoder(model, tokenizer, Path(dest) / DOCUMENT_ENCODER, pooling, max_length)


def interpolate_weights(family: str, trained: str | Path, base_model: str | Path, alpha: float,
                        pooling: str = "mean", max_length: int = 512) -> dict[str, int]:
    """WiSE-FT (Wortsman et al., arXiv 2109.01903): rewrite the model in ``trained`` as
    ``(1 - alpha) * start + alpha * trained``, weight by weight, in its family's format.

    Weights the start checkpoint does not have (a cross-encoder's new head on a bare encoder) or whose
    shapes differ keep their trained values. Returns how many tensors were interpolated and kept.
    """
    torch = require("torch", "weight interpolation")
    model, tokenizer = load_model(family, trained, training=True)
    start_family = detect_family(local_model(base_model))
    start, _ = load_model(family if start_family == family else start_family, base_model)
    start_state = start.state_dict()
    prefix = "" if start_family == family else _base_prefix(model)
    mixed, kept = 0, 0
    state = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            source = start_state.get(name[len(prefix):] if prefix and name.startswith(prefix) else name)
            if source is None or source.shape != value.shape or not value.is_floating_point():
                kept += 1
                continue
            value.copy_((1.0 - alpha) * source.to(value.dtype) + alpha * value)
            mixed += 1
    save_ranker(family, model, tokenizer, trained, pooling, max_length)
    return {"interpolated": mixed, "kept": kept}


def _base_prefix(model) -> str:
    """``bert.`` for a BertForSequenceClassification: where the bare encoder's weights sit in the model."""
    base = getattr(model, "base_model_prefix", "")
    return f"{base}." if base else ""
