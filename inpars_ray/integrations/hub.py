"""A run's trained model as a Hugging Face Hub repository: the model files, a model card, the synthetic data.

:func:`export_run` writes, into one local folder,

* the train stage's model folder as it was saved (Hugging Face files; a query-tower-only bi-encoder's
  ``document_encoder/`` too), so ``transformers`` / ``sentence-transformers`` load the folder directly;
* ``README.md``, a model card: YAML front matter that ``huggingface_hub``'s ``ModelCard`` reads (base model,
  datasets, license, tags, ``pipeline_tag``, and a ``model-index`` with the run's test measures taken from
  its evaluation files), and a body that says how the model was made (generator, prompt, filter, negatives,
  teacher, training settings, seed, versions) and how to score with it;
* ``generated-data/<collection>/``: the synthetic queries, the kept queries and the training triples in the
  layout of the InPars team's published ``inpars/generated-data`` (:mod:`.generated_data`).

:func:`push` uploads that folder with ``huggingface_hub`` (``create_repo``, then ``upload_folder``).

The run is read through its manifests only: each stage's folder is found among the names the caller passes
(:class:`RunFolders`, the folders ``inpars-ray run`` writes) by the content key the next stage recorded, so
the export takes exactly the queries, triples and model that the trained model came from.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from inpars_ray import schema as S
from inpars_ray.errors import ConfigError, HubError, StorageError
from inpars_ray.integrations import generated_data as gd
from inpars_ray.io import artifacts, catalog, storage
from inpars_ray.io.load import LoadConfig
from inpars_ray.io.manifest import config_hash, read_manifest
from inpars_ray.models.families import BI_ENCODER, CROSS_ENCODER, MONOT5

logger = logging.getLogger(__name__)

#: the export's own record (what was exported from which run); its presence marks a folder export may replace
EXPORT_RECORD = "inpars-ray-export.json"
DATA_FOLDER = "generated-data"
#: the system whose model the train stage wrote, as the run manifest names it
TRAINED_SYSTEM = "InPars"
#: family -> (pipeline_tag, library_name): monoT5 is a seq2seq model read by transformers; cross- and
#: bi-encoders are saved in sentence-transformers' format (models/families.py)
_HUB_KIND = {MONOT5: ("text2text-generation", "transformers"), CROSS_ENCODER: ("text-ranking", "sentence-transformers"),
             BI_ENCODER: ("sentence-similarity", "sentence-transformers")}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class RunFolders:
    """Where a run root keeps each stage (the folders ``inpars-ray run`` writes); when a step has several
    candidates, the one whose manifest the next stage recorded as its input is taken."""

    train: str = "train"
    model: str = "model"
    triples: tuple[str, ...] = ("teacher", "mine")
    mine: tuple[str, ...] = ("mine",)
    kept: tuple[str, ...] = ("consistency", "filter")
    filter: tuple[str, ...] = ("filter",)
    generated: tuple[str, ...] = ("generate", gd.IMPORT_FOLDER)


@dataclasses.dataclass
class RunInfo:
    """The manifests of a run that an export reads, by role, with the folders they were found in."""

    root: storage.Location
    run: dict[str, Any]
    manifests: dict[str, dict[str, Any]]
    folders: dict[str, storage.Location]


@dataclasses.dataclass(frozen=True)
class Export:
    """What :func:`export_run` wrote: the folder, its model card, the data folder and the counts."""

    path: Path
    card: Path
    data: Path
    counts: dict[str, int]


def _complete(folder: storage.Location) -> dict[str, Any] | None:
    manifest = read_manifest(folder)
    return manifest if manifest and manifest.get("status") == "complete" else None


def _upstream(root: storage.Location, manifest: dict[str, Any], names: tuple[str, ...], role: str,
              ) -> tuple[storage.Location, dict[str, Any]]:
    """The folder among ``names`` whose complete manifest ``manifest`` recorded as an input (by content key)."""
    keys = {v for v in (manifest.get("config") or {}).values() if isinstance(v, str)}
    for name in names:
        found = _complete(root / name)
        if found is not None and config_hash(found) in keys:
            return root / name, found
    raise StorageError(f"{root.uri}: none of {list(names)} holds the complete {role} output that the "
                       f"{manifest.get('stage')} stage read (rerun the pipeline to complete it)")


def read_run(run_dir: storage.PathLike, folders: RunFolders = RunFolders()) -> RunInfo:
    """The manifests of a complete run with a trained model: the run's own, then train, the triples, mine,
    the kept queries, the filter and the generated (or imported) queries, each the input of the one before."""
    root = storage.location(run_dir)
    run = _complete(root)
    if run is None or run.get("stage") != "pipeline":
        raise StorageError(f"{root.uri} holds no complete run (manifest.json of `inpars-ray run`)")
    train = _complete(root / folders.train)
    model = _complete(root / folders.train / folders.model)
    if train is None or model is None or not (run.get("config") or {}).get("inpars"):
        raise StorageError(f"{root.uri}: no trained model in {folders.train}/{folders.model} (a run with inpars set)")
    found = {"train": (root / folders.train, train), "model": (root / folders.train / folders.model, model)}
    found["triples"] = _upstream(root, train, folders.triples, "triples")
    mine = found["triples"] if found["triples"][1].get("stage") == "mine" else \
        _upstream(root, found["triples"][1], folders.mine, "mine")
    found["kept"] = _upstream(root, mine[1], folders.kept, "kept queries")
    filt = found["kept"] if found["kept"][1].get("stage") == "filter" else \
        _upstream(root, found["kept"][1], folders.filter, "filter")
    found["generated"] = _upstream(root, filt[1], folders.generated, "generated queries")
    found["filter"] = filt
    return RunInfo(root, run, {k: m for k, (_, m) in found.items()}, {k: f for k, (f, _) in found.items()})


# --- the model card ---------------------------------------------------------------------------------------
def metric_type(measure: str) -> str:
    """An ir-measures name as a model-index metric type: ``nDCG@10`` -> ``ndcg_at_10``, ``RR@10`` ->
    ``mrr_at_10``, ``R@100`` -> ``recall_at_100``, ``AP`` -> ``map``."""
    name, _, cutoff = measure.partition("@")
    base = {"ndcg": "ndcg", "rr": "mrr", "r": "recall", "p": "precision", "ap": "map"}.get(name.lower())
    base = base or re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return f"{base}_at_{cutoff}" if cutoff else base


def hub_dataset(spec: str) -> str:
    """The Hub dataset of a collection spec where there is one (``beir/scifact`` -> ``BeIR/scifact``),
    else the collection's short name."""
    if spec.startswith("beir/"):
        return "BeIR/" + spec[len("beir/"):]
    return spec.rstrip("/").rsplit("/", 1)[-1]


def _hub_id(name: str | None) -> str | None:
    """``name`` when it reads as a Hub model id (``owner/name``, not a local path or a ``local:`` model)."""
    return name if name and _HUB_ID.match(name) and not os.path.exists(name) else None


def _system(info: RunInfo, name: str) -> dict[str, Any] | None:
    return next((s for s in info.run.get("extra", {}).get("systems", []) if s.get("name") == name), None)


def trained_measures(info: RunInfo) -> tuple[dict[str, float], int]:
    """The trained model's measures on the run's split and the number of queries, from its evaluation file
    (``<folder>/eval.<split>.json``, which the run manifest lists)."""
    system = _system(info, TRAINED_SYSTEM)
    if system is None:
        raise StorageError(f"{info.root.uri}: the run manifest lists no evaluation of {TRAINED_SYSTEM!r}")
    summary = (info.root / system["summary"]).read_json()
    return {k: float(v) for k, v in summary["measures"].items()}, int(summary.get("num_queries", system["queries"]))


def card_data(info: RunInfo, name: str, license: str = "other") -> Any:
    """The card's front matter as ``huggingface_hub.ModelCardData`` (with the ``model-index``)."""
    from huggingface_hub import EvalResult, ModelCardData

    config = info.run["config"]
    family = info.manifests["model"].get("family") or MONOT5
    pipeline_tag, library = _HUB_KIND.get(family, ("text-ranking", "transformers"))
    measures, _ = trained_measures(info)
    dataset = hub_dataset(config["dataset"])
    collection = dataset.rsplit("/", 1)[-1]
    results = [EvalResult(task_type="text-ranking", task_name="Reranking", dataset_type=dataset,
                          dataset_name=f"{collection} ({config['split']})", dataset_split=config["split"],
                          metric_type=metric_type(m), metric_name=m, metric_value=round(v, 6))
               for m, v in measures.items()]
    source = (info.manifests["generated"].get("extra", {}).get("source") or {}).get("data", "")
    datasets = [dataset]
    if source.startswith("hf://datasets/"):  # the published data it was trained on instead of generating
        datasets.append("/".join(source[len("hf://datasets/"):].split("/")[:2]).split("@")[0])
    return ModelCardData(base_model=_hub_id(config["inpars"]["train"]["base_model"]), datasets=datasets,
                         license=license, library_name=library, pipeline_tag=pipeline_tag, model_name=name,
                         tags=["inpars", "inpars-ray", "text-ranking", "reranker", family, "synthetic-data"],
                         eval_results=results)


def model_card(info: RunInfo, name: str, license: str = "other", data_path: str = "") -> Any:
    """The model card (``huggingface_hub.ModelCard``): :func:`card_data` and the body from :mod:`.card_text`."""
    from huggingface_hub import ModelCard

    from inpars_ray.integrations.card_text import card_body

    data = card_data(info, name, license)
    measures, queries = trained_measures(info)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + card_body(info, name, measures, queries, data_path))


# --- the export -------------------------------------------------------------------------------------------
def export_run(run_dir: storage.PathLike, to: str | os.PathLike[str], name: str | None = None,
               license: str = "other", prompt_text: bool = True, folders: RunFolders = RunFolders(),
               load_config: LoadConfig = LoadConfig(), cache_dir: str | os.PathLike[str] | None = None) -> Export:
    """Write the run's trained model, its model card and its synthetic data into the local folder ``to``.

    The folder is built beside ``to`` and renamed into place, so ``to`` is whole or untouched. An existing
    ``to`` is replaced only when it is empty or an earlier export (it holds ``inpars-ray-export.json``).
    ``prompt_text=False`` writes the prompts as null instead of loading the generator's tokenizer to build
    them again (``cache_dir``: where the run found its collection, as ``run --cache-dir``). ``name`` (default
    ``inpars-<family>-<collection>``) names the model in the card.
    """
    info = read_run(run_dir, folders)
    target = Path(to).expanduser().resolve()
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / EXPORT_RECORD).exists())):
        raise ConfigError(f"{target} exists and is not an earlier export: give a new or empty folder")
    family = info.manifests["model"].get("family") or MONOT5
    spec = info.run["config"]["dataset"]
    collection_name = hub_dataset(spec).rsplit("/", 1)[-1]
    name = name or f"inpars-{family}-{collection_name}"
    model_dir = info.folders["model"]
    names = [f.path[len(model_dir.path.rstrip("/")) + 1:] for f in artifacts.listed_files(model_dir, info.manifests["model"])]
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build = artifacts.download_dir(model_dir, scratch / "export", names)
        data_rel = f"{DATA_FOLDER}/{collection_name}"
        counts = _write_data(info, build / data_rel, prompt_text, load_config, cache_dir)
        card = model_card(info, name, license, data_rel)
        card.save(build / "README.md")
        storage.location(str(build / EXPORT_RECORD)).write_json({
            "run": info.root.uri, "run_config_hash": info.run.get("config_hash"), "name": name,
            "model_files": names, "data": data_rel, "counts": counts,
            "trained_from": info.manifests["model"].get("trained_from")})
        if target.exists():
            shutil.rmtree(target)
        os.replace(build, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("exported %s to %s (%s)", info.root.uri, target, counts)
    return Export(target, target / "README.md", target / data_rel, counts)


def _table(folder: storage.Location, manifest: dict[str, Any], subdir: str, columns: list[str] | None = None) -> Any:
    files = artifacts.listed_files(folder, manifest, subdir)
    return artifacts.read_parquet_table(files, columns=columns) if files else None


def _write_data(info: RunInfo, dest: Path, prompt_text: bool, load_config: LoadConfig,
                cache_dir: str | os.PathLike[str] | None) -> dict[str, int]:
    generated_manifest = info.manifests["generated"]
    generated = _table(info.folders["generated"], generated_manifest, "parts")
    kept = _table(info.folders["kept"], info.manifests["kept"], "kept")
    triples = _table(info.folders["triples"], info.manifests["triples"], "triples", [S.QUERY, S.POS_TEXT, S.NEG_TEXT])
    if generated is None or kept is None or triples is None:
        raise StorageError(f"{info.root.uri}: the run's generated queries, kept queries or triples are empty")
    prompt_of = None
    imported = "source" in generated_manifest.get("extra", {})
    if prompt_text and not imported:  # imported rows came without the prompts the engine could rebuild
        collection = catalog.resolve(info.run["config"]["dataset"], cache_dir)
        prompt_of = gd.prompt_builder(generated_manifest, collection, set(generated.column(S.DOC_ID).to_pylist()),
                                      load_config)
    strategy = info.manifests["filter"]["config"]["filter"]["strategy"]
    tag = "consistency" if info.manifests["kept"].get("stage") == "consistency" else gd.FILTER_TAGS.get(strategy, strategy)
    return gd.write_generated_data(generated, kept, triples, dest, tag, prompt_of)


# --- the upload -------------------------------------------------------------------------------------------
def push(folder: str | os.PathLike[str], repo_id: str, private: bool = False, token: str | None = None,
         message: str = "Upload an inpars-ray model") -> str:
    """Upload an exported folder to the Hub model repository ``repo_id`` (created when missing); returns the
    commit's URL. The token is ``token``, else ``HF_TOKEN``, else the one ``hf auth login`` stored; the
    endpoint ``HF_ENDPOINT`` (read now: huggingface_hub reads it once, at import)."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if constants.is_offline_mode():
        raise HubError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set (the Hub is not reachable offline)")
    token = token or get_token()
    if not token:
        raise HubError(f"cannot push to {repo_id}: no Hugging Face token; set HF_TOKEN or run `hf auth login` "
                       "(a token with write access)")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=message)
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"the Hub refused the upload to {repo_id}: {exc}") from exc
    logger.info("pushed %s to %s (%s)", folder, repo_id, info.commit_url)
    return str(info.commit_url)


__all__ = ["DATA_FOLDER", "EXPORT_RECORD", "Export", "RunFolders", "RunInfo", "card_data", "export_run",
           "hub_dataset", "metric_type", "model_card", "push", "read_run", "trained_measures"]
