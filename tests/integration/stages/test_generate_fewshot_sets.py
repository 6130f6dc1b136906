"""Several few-shot sets (``generate.fewshot_sets``) on local Ray: each document is prompted with its own set."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError
from inpars_ray.integrations.generated_data import prompt_builder
from inpars_ray.io.catalog import BUNDLED_ROOT, resolve
from inpars_ray.io.manifest import config_hash
from inpars_ray.models.backends import GenerationParams, make_backend
from inpars_ray.models.prompts import PromptBuilder, template_index
from inpars_ray.stages.generate import (
    GenerateConfig,
    GenerateResources,
    keyed_config,
    read_generated,
    run_generate,
    run_templates,
)
from inpars_ray.stages.generate_rows import generate_batch
from inpars_ray.testing.tiny_lm import tiny_lm_path

SETS = 3


def test_one_set_keeps_the_key_runs_had_before_the_setting():
    # the hash of this config's key before fewshot_sets existed (inpars_ray 80c8d7d)
    assert config_hash({"config": keyed_config(GenerateConfig(model="m", prompt="promptagator", num_fewshot=4))}) \
        == "4429e40b006d338e"
    assert "fewshot_sets" in keyed_config(GenerateConfig(model="m", prompt="promptagator", fewshot_sets=2))
    assert keyed_config(GenerateConfig(model="m", prompt="promptagator", titles=False))["titles"] is False
    assert "untitled_retry" not in keyed_config(GenerateConfig(model="m"))
    assert keyed_config(GenerateConfig(model="m", untitled_retry=["unfinished", "copies"]))["untitled_retry"] \
        == ["copies", "unfinished"] == keyed_config(GenerateConfig(model="m", untitled_retry=("copies", "unfinished")))["untitled_retry"]
    assert GenerateConfig(model="m", untitled_retry="copies").untitled_retry == ("copies",)
    with pytest.raises(ConfigError, match="untitled_retry"):  # nothing to retry without titles
        GenerateConfig(model="m", titles=False, untitled_retry=("copies",))
    with pytest.raises(ConfigError, match="copied"):
        GenerateConfig(model="m", untitled_retry=("copied",))
    for bad in ({"prompt": "inpars"}, {"prompt": "promptagator", "num_fewshot": 0}):  # fails before any work
        with pytest.raises(ConfigError, match="fewshot_sets"):
            GenerateConfig(model="m", fewshot_sets=2, **bad)


def test_each_document_is_prompted_with_the_set_its_id_names(ray_session, tmp_path):
    collection = resolve("bundled/tiny-science")
    model = str(tiny_lm_path())
    config = GenerateConfig(model=model, prompt="promptagator", num_docs=12, seed=3, num_fewshot=2,
                            fewshot_sets=SETS, doc_max_tokens=24,
                            generation=GenerationParams(max_new_tokens=6, seed=3))
    manifest = run_generate(collection, tmp_path / "gen", config, GenerateResources(batch_size=4))
    templates = run_templates(config, collection)
    assert len(templates) == SETS
    fewshot = json.loads((tmp_path / "gen" / "fewshot.json").read_text())
    assert fewshot["fewshot_sets"] == [list(t.fewshot_ids) for t in templates]
    assert len(set(fewshot["fewshot_query_ids"])) == 2 * SETS  # every example is left out of evaluation
    assert manifest["extra"]["fewshot_query_ids"] == fewshot["fewshot_query_ids"]
    assert manifest["config"]["config"]["fewshot_sets"] == SETS

    rows = read_generated(tmp_path / "gen").to_pylist()
    assert len(rows) == 12
    which = {r[S.DOC_ID]: template_index(r[S.DOC_ID], config.seed, SETS) for r in rows}
    assert set(which.values()) == set(range(SETS))  # 12 documents use all three sets
    for r in rows:
        assert r[S.FEWSHOT_IDS] == list(templates[which[r[S.DOC_ID]]].fewshot_ids)

    # the query is the one the document's own prompt gives, generated alone; another set's prompt differs
    corpus = {d["_id"]: d for d in map(json.loads, (BUNDLED_ROOT / "corpus.jsonl").read_text().splitlines())}
    backend = make_backend("hf", model)
    builders = [PromptBuilder(t, lambda text: backend.truncate(text, config.doc_max_tokens)) for t in templates]
    export = prompt_builder(manifest, collection, set(which))  # what an export writes as each row's prompt
    for r in rows[:4]:
        doc = corpus[r[S.DOC_ID]]
        own = which[r[S.DOC_ID]]
        batch = pa.table({S.DOC_ID: [doc["_id"]], S.TITLE: [doc.get("title", "")], S.TEXT: [doc["text"]]})
        alone = generate_batch(batch, builders[own], backend, config.generation, "promptagator", model,
                               list(templates[own].fewshot_ids)).to_pylist()[0]
        assert (alone[S.QUERY], alone[S.ERROR]) == (r[S.QUERY], r[S.ERROR])
        prompt = builders[own].build(doc.get("title", ""), doc["text"])
        assert export(r[S.DOC_ID]) == prompt
        assert all(builders[other].build(doc.get("title", ""), doc["text"]) != prompt
                   for other in range(SETS) if other != own)


def test_titles_false_prompts_and_exports_documents_without_titles(ray_session, tmp_path):
    collection = resolve("bundled/tiny-science")
    model = str(tiny_lm_path())
    config = GenerateConfig(model=model, prompt="promptagator", num_docs=4, seed=3, num_fewshot=2, titles=False,
                            doc_max_tokens=24, generation=GenerationParams(max_new_tokens=6, seed=3))
    manifest = run_generate(collection, tmp_path / "gen", config, GenerateResources(batch_size=4))
    assert manifest["config"]["config"]["titles"] is False
    (template,) = run_templates(config, collection)
    assert template.titles is False
    corpus = {d["_id"]: d for d in map(json.loads, (BUNDLED_ROOT / "corpus.jsonl").read_text().splitlines())}
    rows = read_generated(tmp_path / "gen").to_pylist()
    titled = [r for r in rows if corpus[r[S.DOC_ID]].get("title")]
    assert titled  # the check below means something
    export = prompt_builder(manifest, collection, {r[S.DOC_ID] for r in rows})
    for r in titled:
        doc = corpus[r[S.DOC_ID]]
        assert doc["title"] not in export(r[S.DOC_ID]).rsplit("\n\n", 1)[-1]  # the target block shows no title


def test_titles_auto_probes_the_generator_and_records_its_choice(ray_session, tmp_path):
    """``titles: auto``: the probe's answers (the real tiny model's, which run on at 6 new tokens) decide; the
    manifest and run.json record the counts, the prompts follow the choice, and a rerun reuses it."""
    from inpars_ray.stages.generate import TITLES_AUTO_LIMIT

    collection = resolve("bundled/tiny-science")
    config = GenerateConfig(model=str(tiny_lm_path()), prompt="promptagator", num_docs=6, seed=3, num_fewshot=2,
                            titles="auto", doc_max_tokens=24, generation=GenerationParams(max_new_tokens=6, seed=3))
    assert keyed_config(config)["titles"] == "auto"
    manifest = run_generate(collection, tmp_path / "gen", config, GenerateResources(batch_size=6))
    choice = manifest["extra"]["titles"]
    assert choice["probed"] == 6 and 0 <= choice["failed"] <= 6
    assert choice["chosen"] == (choice["failed"] / choice["probed"] <= TITLES_AUTO_LIMIT)
    # the random tiny model never ends its line within 6 tokens: every probe answer runs on, so titles go
    assert (choice["failed"], choice["chosen"]) == (6, False)
    rows = read_generated(tmp_path / "gen").to_pylist()
    corpus = {d["_id"]: d for d in map(json.loads, (BUNDLED_ROOT / "corpus.jsonl").read_text().splitlines())}
    export = prompt_builder(manifest, collection, {r[S.DOC_ID] for r in rows})
    titled = [r for r in rows if corpus[r[S.DOC_ID]].get("title")]
    assert titled
    for r in titled:
        shown = corpus[r[S.DOC_ID]]["title"] in export(r[S.DOC_ID]).rsplit("\n\n", 1)[-1]
        assert shown == choice["chosen"]
    assert json.loads((tmp_path / "gen" / "run.json").read_text())["titles"] == choice
    (tmp_path / "gen" / "manifest.json").unlink()  # the stage runs again; every part is done: nothing to probe
    again = run_generate(collection, tmp_path / "gen", config, GenerateResources(batch_size=6))
    assert again["extra"]["titles"] == choice  # read back from run.json, not probed again on no documents
    with pytest.raises(ConfigError):
        GenerateConfig(model="m", titles="sometimes")
