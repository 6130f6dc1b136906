"""The body of an exported model's card (:mod:`.hub`): results, how to score with it, how it was made.

Everything comes from the run's manifests (settings as resolved, counts, versions): the card says what was
run, not what the defaults would have been.
"""
from __future__ import annotations

import json
from typing import Any

import yaml

from inpars_ray.models import monot5
from inpars_ray.models.families import BI_ENCODER, CROSS_ENCODER, DOCUMENT_ENCODER, MONOT5

#: the training settings the card lists (the rest are resources: workers, checkpoints, storage)
_TRAIN_KEYS = ("loss", "lr", "batch_size", "micro_batch_size", "epochs", "max_steps", "max_length", "warmup_steps",
               "warmup_ratio", "weight_decay", "temperature", "max_negatives", "interpolate", "query_only", "pooling",
               "mixed_precision")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "—" if value is None or value == "" else f"`{value}`" if isinstance(value, str) else str(value)


def _results(info: Any, measures: dict[str, float], queries: int) -> list[str]:
    split = info.run["config"]["split"]
    heads = list(measures)
    lines = [f"## Results ({split} split, {queries} queries)", "",
             "| system | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for system in info.run.get("extra", {}).get("systems", []):
        shown = system["measures"]
        lines.append(f"| {system['name']} | " + " | ".join(_fmt(shown.get(h)) for h in heads) + " |")
    lines += ["", "The InPars row is this model reranking the BM25 run; query ids shown to the generator as few-shot "
              "examples are left out of every row."]
    return lines


def _usage(family: str, model_files: dict[str, Any]) -> list[str]:
    lines = ["## Use", ""]
    if family == MONOT5:
        template = f"{monot5.PREFIX_QUERY} {{query}} {monot5.PREFIX_DOC} {{document}} {monot5.SUFFIX}"
        lines += [f"monoT5 (Nogueira et al., 2020): the input is `{template}`; the score is P(`{monot5.TARGET_TRUE}`), "
                  f"the softmax over the logits of the tokens `{monot5.TARGET_TRUE}` and `{monot5.TARGET_FALSE}` at the "
                  "first decoder step (one forward pass, no generation). Cut the document, never the "
                  f"`{monot5.SUFFIX}` suffix.", "", "```python",
                  "import torch",
                  "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
                  "tok = AutoTokenizer.from_pretrained(MODEL)",
                  "model = AutoModelForSeq2SeqLM.from_pretrained(MODEL).eval()",
                  f"true_id = tok.encode({monot5.TARGET_TRUE!r}, add_special_tokens=False)[0]",
                  f"false_id = tok.encode({monot5.TARGET_FALSE!r}, add_special_tokens=False)[0]",
                  f"enc = tok([{template!r}.format(query=q, document=d)], return_tensors='pt', truncation=True)",
                  "start = torch.full((1, 1), model.config.decoder_start_token_id)",
                  "logits = model(**enc, decoder_input_ids=start).logits[:, 0, [true_id, false_id]]",
                  "score = logits.softmax(-1)[:, 0]", "```"]
    elif family == CROSS_ENCODER:
        lines += ["A cross-encoder: the score of a (query, document) pair is the model's one logit.", "", "```python",
                  "from sentence_transformers import CrossEncoder",
                  "scores = CrossEncoder(MODEL).predict([(query, document)])", "```"]
    elif family == BI_ENCODER:
        lines += ["A bi-encoder: the score is the cosine of the query's and the document's embeddings.", "", "```python",
                  "from sentence_transformers import SentenceTransformer"]
        if any(name.startswith(DOCUMENT_ENCODER + "/") for name in model_files):
            lines += ["queries = SentenceTransformer(MODEL)  # the trained query tower",
                      f"documents = SentenceTransformer(MODEL + '/{DOCUMENT_ENCODER}')  # the start model, frozen",
                      "score = queries.similarity(queries.encode([query]), documents.encode([document]))", "```",
                      "", f"Only the query tower was trained: embed documents with `{DOCUMENT_ENCODER}/`."]
        else:
            lines += ["model = SentenceTransformer(MODEL)",
                      "score = model.similarity(model.encode([query]), model.encode([document]))", "```"]
    return lines + ["", "`MODEL` is this repository's id or the exported folder."]


def _recipe(info: Any) -> list[str]:
    config, manifests = info.run["config"], info.manifests
    ic = config["inpars"]
    generated = manifests["generated"]
    lines = ["## How it was made", "",
             "InPars (arXiv 2202.05144, 2301.01820) with inpars-ray: a language model writes a "
             "query for each sampled document, the best queries are kept, BM25 supplies negatives, and the ranker "
             "is fine-tuned on (query, source document, negative) triples.", "",
             f"- **Collection**: `{config['dataset']}`, evaluated on its `{config['split']}` qrels; BM25 top {config['k']}"]
    source = generated.get("extra", {}).get("source")
    counts = generated.get("counts", {})
    if source:
        lines.append(f"- **Synthetic queries**: not generated; read from `{source['data']}` "
                     f"({counts.get('imported', 0)} of {counts.get('rows', 0)} rows; "
                     f"{counts.get('unknown_document', 0)} named documents absent from the collection)")
    else:
        gen = generated["config"]["config"]
        lines.append(f"- **Generator**: `{ic['generate']['model']}` ({gen['backend']} backend), prompt "
                     f"`{gen['prompt']}`, {counts.get('sampled', '?')} documents sampled, documents cut to "
                     f"{gen['doc_max_tokens']} tokens, decoding {json.dumps(gen['generation'])}; "
                     f"{counts.get('queries', '?')} queries, {counts.get('errors', 0)} failures")
    filt = manifests["filter"]["config"]["filter"]
    scorer = (filt.get("ranker") or {}).get("model") or filt.get("model")  # a ranker block, or a flat key (older runs)
    lines.append(f"- **Filter**: strategy `{filt['strategy']}`, keep the top {filt['keep_top_k']}, "
                 f"{filt['min_tokens']}-{filt['max_tokens']} tokens" + (f", scored by `{scorer}`" if scorer else "")
                 + f"; {manifests['kept'].get('counts', {}).get('kept', '?')} queries kept"
                 + (" (then InPars-light's consistency check)" if manifests["kept"].get("stage") == "consistency" else ""))
    mine = ic["mine"]
    lines.append(f"- **Negatives**: BM25 top {mine['depth']}, {mine['negatives']} per query drawn at random, the "
                 f"source document excluded; {manifests['triples'].get('counts', {}).get('triples', '?')} triples")
    if ic.get("teacher") and manifests["triples"].get("stage") == "teacher":  # not a skipped teacher
        rankers = ", ".join(f"`{r['model']}`" for r in ic["teacher"]["rankers"])
        lines.append(f"- **Teacher**: {rankers} scored every triple (fusion `{ic['teacher']['fusion']}`)")
    train_manifest = manifests["train"]
    train = train_manifest["config"]["config"]
    settings = ", ".join(f"{k} {_fmt(train.get(k))}" for k in _TRAIN_KEYS if k in train)
    extra = train_manifest.get("extra", {})
    lines += [f"- **Base model**: `{ic['train']['base_model']}` (family {train.get('family')})",
              f"- **Training**: {settings}; {train_manifest.get('counts', {}).get('steps', '?')} steps, loss "
              f"{_fmt(extra.get('first_loss'))} -> {_fmt(extra.get('final_loss'))}",
              f"- **Seed**: {ic['seed']} (document sample, generation, negatives and training)",
              "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in sorted(train_manifest.get("versions", {}).items()))]
    return lines


def card_body(info: Any, name: str, measures: dict[str, float], queries: int, data_path: str) -> str:
    """The Markdown below the card's front matter."""
    family = info.manifests["model"].get("family") or MONOT5
    config = info.run["config"]
    lines = [f"# {name}", "",
             f"A {family} reranker fine-tuned on synthetic queries for the collection `{config['dataset']}` "
             "(InPars); the numbers below are from the run that trained it.", ""]
    lines += _results(info, measures, queries) + [""] + _usage(family, info.manifests["model"].get("files", {}))
    lines += [""] + _recipe(info)
    if data_path:
        lines += ["", "## Synthetic data", "",
                  f"`{data_path}/` holds the training data in the layout of the InPars team's `inpars/generated-data` "
                  "dataset: `queries.jsonl` (doc_id, query, log_probs, prompt_text, fewshot_examples: every generated "
                  "query), `queries_filtered_*.jsonl` (the kept queries, with their filter `score`) and "
                  "`triples_train_*.tsv` (query, positive text, negative text). `inpars.synthetic_data` takes that "
                  "folder to train again without generating."]
    lines += ["", "## Licence", "", "The licences of the base model, the generator and the collection apply.",
              "", "<details><summary>The run's settings (inpars-ray config)</summary>", "", "```yaml",
              yaml.safe_dump(config, sort_keys=False, width=100).rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines)
