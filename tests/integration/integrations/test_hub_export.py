"""Issue 25, items 3 and 4: ``inpars-ray export`` (model, model card, synthetic data in the layout of
``inpars/generated-data``, ``--push`` through huggingface_hub's real client against a loopback Hub), and
published data in place of the generate stage. One tiny run per module (tiny random models)."""
from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inpars_ray.config import merge
from inpars_ray.errors import ConfigError, DownloadError, FormatError, HubError
from inpars_ray.integrations import generated_data as gd
from inpars_ray.integrations.hub import card_data, export_run, metric_type, push, read_run
from inpars_ray.io import artifacts, catalog
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.manifest import read_manifest
from inpars_ray.io.text import document_text
from inpars_ray.pipeline import PipelineConfig, run_pipeline
from tests.conftest import BUNDLED
from tests.support.fake_hub import COMMIT, fake_hub


def _config(out: Path, **inpars) -> PipelineConfig:
    return merge(PipelineConfig(dataset=str(BUNDLED), out_dir=str(out)), {"inpars": {"zero_shot": None, **inpars}},
                 "test")


@pytest.fixture(scope="module")
def tiny_run(ray_session, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub") / "run"
    run_pipeline(_config(root))
    return root


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    return export_run(tiny_run, tmp_path_factory.mktemp("export") / "model")


@pytest.fixture()
def online(monkeypatch, tmp_path):
    """huggingface_hub's offline switch off (tests/conftest.py sets it), its cache under tmp_path."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _parquet(folder: Path, sub: str):
    return artifacts.read_parquet_table(artifacts.listed_files(str(folder), read_manifest(folder), sub))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_holds_the_trained_model_as_saved(tiny_run, exported):
    model = tiny_run / "train" / "model"
    listed = read_manifest(model)["files"]
    for name, size in listed.items():
        assert (exported.path / name).read_bytes() == (model / name).read_bytes(), name
        assert (exported.path / name).stat().st_size == size
    record = json.loads((exported.path / "inpars-ray-export.json").read_text())
    assert sorted(record["model_files"]) == sorted(listed)
    assert record["trained_from"] == read_manifest(tiny_run / "train")["config_hash"]


def test_model_card_parses_with_huggingface_hub_and_carries_the_test_measures(tiny_run, exported):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(exported.card)
    data = card.data.to_dict()
    assert ModelCardData(**data).to_dict() == data  # the front matter round-trips
    assert ModelCard(str(card)).data.to_dict() == data
    assert {"inpars", "text-ranking", "monot5"} <= set(data["tags"])
    assert data["pipeline_tag"] == "text2text-generation" and data["library_name"] == "transformers"
    assert data["license"] == "other" and data["datasets"] == ["tiny-science"]
    assert "base_model" not in data  # local:tiny-monot5 is no Hub id
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "inpars-monot5-tiny-science"
    evaluated = json.loads((tiny_run / "rerank" / "eval.test.json").read_text())["measures"]
    assert {r.metric_name: r.metric_value for r in results} == pytest.approx(evaluated, abs=1e-6)
    assert {r.metric_type for r in results} >= {"ndcg_at_10", "mrr_at_10", "recall_at_100", "map"}
    assert {(r.task_type, r.dataset_split) for r in results} == {("text-ranking", "test")}
    body = card.text
    assert "`Query: {query} Document: {document} Relevant:`" in body and "`true`" in body and "`false`" in body
    assert "**Generator**: `local:tiny-lm` (hf backend), prompt `inpars`" in body
    assert "**Filter**: strategy `scores`, keep the top 48" in body and "**Seed**: 1" in body
    assert "loss `monot5`, lr 0.0003" in body and "transformers " in body.split("**Versions**")[1]
    bm25 = json.loads((tiny_run / "bm25" / "eval.test.json").read_text())["measures"]["nDCG@10"]
    assert "| BM25 | " in body and f"{bm25:.4f}" in body


def test_synthetic_data_is_in_the_published_layout_with_the_prompts_rebuilt(tiny_run, exported):
    generated = _parquet(tiny_run / "generate", "parts").to_pylist()
    rows = _jsonl(exported.data / "queries.jsonl")
    assert len(rows) == len(generated) == read_manifest(tiny_run)["counts"]["generate_rows"]
    by_doc = {r["doc_id"]: r for r in generated}
    collection = catalog.resolve(str(BUNDLED))
    texts = gd.document_texts(collection, set(by_doc))
    for row in rows:
        assert set(row) == {"doc_id", "query", "log_probs", "prompt_text", "fewshot_examples"}
        source = by_doc[row["doc_id"]]
        assert row["query"] == source["query"] and row["log_probs"] == source["token_logprobs"]
        assert row["fewshot_examples"] == source["fewshot_ids"] == []
        prompt = row["prompt_text"]
        # the inpars prompt: three MS MARCO examples, then this document (cut to 256 tokens), then the label
        assert prompt.startswith("Example 1:\nDocument: ") and prompt.endswith("\nRelevant Query:")
        assert prompt.count("\nRelevant Query:") == 4 and "\n\nExample 4:\nDocument: " in prompt
        target = prompt.split("\n\nExample 4:\nDocument: ")[1][: -len("\nRelevant Query:")]
        assert document_text(*texts[row["doc_id"]]).startswith(target[:-5]) and len(target) > 20
    kept = _parquet(tiny_run / "filter", "kept")
    filtered = _jsonl(exported.data / "queries_filtered_v1.jsonl")
    assert len(filtered) == kept.num_rows == read_manifest(tiny_run / "filter")["counts"]["kept"]
    assert [r["score"] for r in filtered] == sorted((r["score"] for r in filtered), reverse=True)
    assert {(r["doc_id"], r["query"]) for r in filtered} == set(zip(kept.column("doc_id").to_pylist(),
                                                                    kept.column("query").to_pylist()))
    with (exported.data / "triples_train_v1.tsv").open(newline="", encoding="utf-8") as fh:
        triples = list(csv.reader(fh, delimiter="\t"))
    mined = _parquet(tiny_run / "mine", "triples")
    assert len(triples) == mined.num_rows == exported.counts["triples"]
    assert all(len(t) == 3 for t in triples)
    assert sorted(t[0] for t in triples) == sorted(" ".join(q.split()) for q in mined.column("query").to_pylist())


def test_the_card_names_hub_models_and_datasets_where_the_run_used_them(tiny_run):
    info = read_run(tiny_run)
    assert card_data(info, "m").base_model is None
    info.run = copy.deepcopy(info.run)
    info.run["config"]["dataset"] = "beir/scifact"
    info.run["config"]["inpars"]["train"]["base_model"] = "castorini/monot5-base-msmarco-10k"
    info.manifests["generated"] = {**info.manifests["generated"],
                                   "extra": {"source": {"data": "hf://datasets/inpars/generated-data@main/scifact"}}}
    data = card_data(info, "m", license="apache-2.0")
    assert data.base_model == "castorini/monot5-base-msmarco-10k" and data.license == "apache-2.0"
    assert data.datasets == ["BeIR/scifact", "inpars/generated-data"]
    assert metric_type("nDCG@10") == "ndcg_at_10" and metric_type("AP") == "map" and metric_type("R@1000") == \
        "recall_at_1000"


def test_export_replaces_an_earlier_export_but_never_another_folder(tiny_run, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an earlier export"):
        export_run(tiny_run, other, prompt_text=False)
    assert (other / "keep.txt").read_text() == "mine"
    first = export_run(tiny_run, tmp_path / "out", prompt_text=False)
    (first.path / "stale.txt").write_text("from before")
    again = export_run(tiny_run, tmp_path / "out", prompt_text=False)
    assert not (again.path / "stale.txt").exists() and again.card.is_file()
    assert all(r["prompt_text"] is None for r in _jsonl(again.data / "queries.jsonl"))


def test_cli_export_pushes_through_the_hub_client(tiny_run, tmp_path, monkeypatch, online):
    from inpars_ray.cli import main

    with fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        out = tmp_path / "export"
        assert main(["export", str(tiny_run), "--to", str(out), "--push", "someone/tiny-inpars",
                     "--no-prompt-text"]) == 0
    created = hub.find("POST", "/api/repos/create")
    assert len(created) == 1 and json.loads(created[0].body)["name"] == "tiny-inpars"
    assert all(r.headers.get("authorization") == "Bearer hf_test_token"
               for r in hub.requests if r.path.startswith("/api/repos") or "/commit/" in r.path)
    sent = hub.committed()
    local = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sent == local  # every exported file, byte for byte, in one commit
    assert "README.md" in sent and "generated-data/tiny-science/queries.jsonl" in sent
    assert b"name: tiny-inpars" in sent["README.md"]  # the card names the model after the repository


def test_push_fails_typed_without_a_token_or_offline_and_takes_the_stored_token(exported, tmp_path, monkeypatch, online, capsys):
    from huggingface_hub import constants

    from inpars_ray.cli import main

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    with fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(HubError, match="no Hugging Face token; set HF_TOKEN"):
            push(exported.path, "someone/model")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
            push(exported.path, "someone/model", token="hf_x")
        assert not [r for r in hub.requests if r.path.startswith("/api/repos") or "/commit/" in r.path]
        # the token `hf auth login` stores is taken when HF_TOKEN is unset
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        (tmp_path / "token").write_text("hf_stored_token\n")
        assert push(exported.path, "someone/model").endswith(f"/someone/model/commit/{COMMIT}")
        assert {r.headers.get("authorization") for r in hub.find("POST", r"/api/models/someone/model/commit/main")} \
            == {"Bearer hf_stored_token"}
    monkeypatch.delenv("HF_ENDPOINT")
    assert main(["export", str(exported.path.parent / "x"), "--to", str(tmp_path / "y")]) == 2
    assert "no complete run" in capsys.readouterr().err


def test_published_data_replaces_the_generate_stage(tiny_run, exported, tmp_path):
    data = tmp_path / "scifact-like"
    shutil.copytree(exported.data, data)
    with (data / "queries.jsonl").open("a", encoding="utf-8") as fh:  # a row of another collection
        fh.write(json.dumps({"doc_id": "not-in-this-corpus", "query": "what is x", "log_probs": [-1.0, -2.0],
                             "prompt_text": "...", "fewshot_examples": []}) + "\n")
    rows = len(_jsonl(data / "queries.jsonl"))
    root = tmp_path / "run"
    summary = run_pipeline(_config(root, synthetic_data=str(data)))
    assert not (root / "generate").exists()  # nothing was generated
    manifest = read_manifest(root)
    assert manifest["extra"]["synthetic_data"]["data"] == str(data)
    assert manifest["extra"]["synthetic_data"]["counts"] == {"rows": rows, "imported": rows - 1,
                                                             "unknown_document": 1, "bad_rows": 0}
    assert manifest["counts"]["generate_imported"] == rows - 1 == manifest["counts"]["filter_input_rows"]
    rejected = pq.read_table(root / gd.IMPORT_FOLDER / gd.REJECTED).to_pylist()
    assert rejected == [{"line": rows, "doc_id": "not-in-this-corpus", "query": "what is x",
                         "reason": "unknown_document"}]
    # the same queries and log-probs under the same filter keep the same queries as the run that generated them
    kept = {(r["doc_id"], r["query"]) for r in _parquet(root / "filter", "kept").to_pylist()}
    assert kept == {(r["doc_id"], r["query"]) for r in _parquet(tiny_run / "filter", "kept").to_pylist()}
    assert read_manifest(root / "train")["status"] == "complete" and 0.0 <= summary["inpars"]["nDCG@10"] <= 1.0
    # and the exported run of published data exports again, saying where its queries came from
    again = export_run(root, tmp_path / "re-export")
    assert f"read from `{data}`" in again.card.read_text() and again.counts["queries"] == rows - 1


def test_import_accounts_for_bad_lines(tmp_path):
    collection = catalog.resolve(str(BUNDLED))
    doc = next(gd.corpus_chunks(collection)).column("doc_id")[0].as_py()
    data = tmp_path / "queries.jsonl"
    data.write_text(json.dumps({"doc_id": doc, "question": "a v1 question", "log_probs": [-0.5]}) + "\n"
                    + "{broken\n\n" + json.dumps({"query": "no doc id"}) + "\n")
    with pytest.raises(FormatError, match=r"queries.jsonl:2: not a JSON object"):
        gd.import_generated(str(data), collection, tmp_path / "out")
    manifest = gd.import_generated(str(data), collection, tmp_path / "out", LoadConfig(skip_bad_rows=True))
    assert manifest["counts"] == {"rows": 3, "imported": 1, "unknown_document": 0, "bad_rows": 2}
    part = pq.read_table(next((tmp_path / "out" / "parts").glob("*.parquet"))).to_pylist()
    assert part[0]["query"] == "a v1 question" and part[0]["mean_logprob"] == -0.5 and part[0]["num_tokens"] == 1
    rejected = pq.read_table(tmp_path / "out" / gd.REJECTED).to_pylist()
    assert [r["line"] for r in rejected] == [2, 4] and rejected[0]["reason"].startswith("not a JSON object")
    assert rejected[1]["reason"] == "no 'doc_id'"
    before = (tmp_path / "out" / "manifest.json").stat().st_mtime_ns
    again = gd.import_generated(str(data), collection, tmp_path / "out", LoadConfig(skip_bad_rows=True))
    assert again["counts"] == manifest["counts"] and (tmp_path / "out" / "manifest.json").stat().st_mtime_ns == before


def test_hf_data_downloads_through_the_hub_client_and_fails_clearly_offline(tmp_path, monkeypatch, online):
    from huggingface_hub import constants

    with fake_hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.files[("datasets/inpars/generated-data", "scifact/queries.jsonl")] = b'{"doc_id": "d1", "query": "q"}\n'
        path = gd.resolve_source("hf://datasets/inpars/generated-data/scifact")
        assert path.read_bytes() == b'{"doc_id": "d1", "query": "q"}\n'
        with pytest.raises(DownloadError, match="could not fetch nfcorpus/queries.jsonl of the dataset inpars/"):
            gd.resolve_source("hf://datasets/inpars/generated-data/nfcorpus")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(DownloadError, match="HF_HUB_OFFLINE set.*give its local path"):
            gd.resolve_source("hf://datasets/inpars/generated-data/trec-covid")
    with pytest.raises(ConfigError, match="expected hf://datasets/"):
        gd.resolve_source("hf://inpars/generated-data")
    with pytest.raises(ConfigError, match="no queries.jsonl there"):
        gd.resolve_source(str(tmp_path))
