"""The pipeline's one typed config: it nests the stage configs themselves.

Every setting has its default, range and description in exactly one place, the stage's config class
(``LoadConfig``, ``BM25Config``, ``GenerateConfig``, ``FilterConfig``, ``MineConfig``, ``TrainConfig``,
``RerankConfig``...). :class:`PipelineConfig` adds only what the stages share (dataset, out_dir, split,
measures, seed). A YAML file and ``--set key.path=value`` overrides are merged onto the defaults and
validated by the same model, so a misspelt key fails before any work, naming the key and where it came
from.

The defaults are the embedded demo (tiny random models, 64 documents); ``configs/inpars-v2.yaml`` holds
the papers' settings.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from inpars_ray.errors import ConfigError
from inpars_ray.io import catalog
from inpars_ray.io.load import LoadConfig
from inpars_ray.models.rankers import RankerConfig
from inpars_ray.stageconfig import Field, describe_errors, stage_config
from inpars_ray.stages.evaluate import DEFAULT_MEASURES
from inpars_ray.stages.filter import FilterConfig
from inpars_ray.stages.generate import GenerateConfig, GenerateResources
from inpars_ray.stages.index import IndexConfig
from inpars_ray.stages.mine import MineConfig
from inpars_ray.stages.rerank import RerankConfig
from inpars_ray.stages.retrieve import BM25Config
from inpars_ray.stages.teacher import TeacherConfig
from inpars_ray.stages.train_config import TrainConfig
from inpars_ray.stages.tune import SweepConfig

#: model names that build tiny random models locally (no download): the embedded demo's defaults
TINY_LM = "local:tiny-lm"
TINY_MONOT5 = "local:tiny-monot5"
#: the rerank stage's model name meaning "the model the train stage wrote"
TRAINED = "trained"
#: the zero-shot setting meaning "the model training starts from" (train.base_model, train.family)
START_MODEL = "start"

#: stage sections whose ``seed`` comes from ``inpars.seed`` (a YAML may not set them apart)
_SEEDED = ("generate", "mine", "train")


@stage_config
class InparsConfig:
    """The synthetic-data stages (defaults: a quick offline demo; configs/inpars-v2.yaml: the papers)."""

    seed: int = Field(1, ge=0, description="seed of the document sample, the generation, the negatives and "
                      "training; every stage's own seed is set from it (paper: 1)")
    generate: GenerateConfig = Field(GenerateConfig(model=TINY_LM, num_docs=64),
                                     description="what is generated (model, prompt, documents sampled)")
    synthetic_data: str | None = Field(None, description="published synthetic queries in place of the generate "
                                       "stage: a folder in the layout of the InPars team's inpars/generated-data (its "
                                       "queries.jsonl), that file, or hf://datasets/<owner>/<name>/<folder>; rows naming "
                                       "documents absent from the collection are listed and counted. None: generate")
    generate_resources: GenerateResources = Field(GenerateResources(),
                                                  description="generation actors, batch and GPUs per actor")
    filter: FilterConfig = Field(FilterConfig(keep_top_k=48), description="which generated queries are kept")
    mine: MineConfig = Field(MineConfig(), description="BM25 negatives of the kept queries")
    train: TrainConfig = Field(TrainConfig(base_model=TINY_MONOT5, batch_size=16, micro_batch_size=8),
                               description="fine-tuning the reranker on the triples")
    rerank: RerankConfig = Field(RerankConfig(ranker=RankerConfig(model=TRAINED), depth=100),
                                 description=f"reranking the BM25 run; ranker.model '{TRAINED}' is the trained model")
    teacher: TeacherConfig | None = Field(None, description="a stronger ranker (or a fusion of several) that "
                                          "scores every training triple (GPL's pseudo-labels); the train stage's "
                                          "margin-mse and kl losses learn those scores (the stage is skipped when "
                                          "nothing reads them: teacher_unread). None: hard labels only")
    zero_shot: str | None = Field(START_MODEL, description=f"the untrained model that reranks the same BM25 hits "
                                  f"with the same settings, reported as 'zero-shot' and compared with every "
                                  f"trained system: '{START_MODEL}' is train.base_model with its family (the "
                                  f"model training starts from); another name is that model; None skips it")
    tune: SweepConfig | None = Field(None, description="a Ray Tune sweep of the training recipe on a synthetic "
                                     "dev set (never the test qrels); its best model reranks the test run too, "
                                     "reported as 'InPars (tuned)'. None skips it")

    def __post_init__(self) -> None:
        from inpars_ray.stages.train_config import DISTILL_LOSSES

        if self.train.loss in DISTILL_LOSSES and self.teacher is None:
            raise ConfigError(f"train.loss {self.train.loss} distils a teacher's scores: set inpars.teacher")
        if self.tune is not None and self.tune.dev.judge == "fused" and self.teacher is None:
            raise ConfigError("tune.dev.judge: fused judges the dev set with the teacher: set inpars.teacher")
        # one seed for the whole synthetic-data chain: derive the stage seeds instead of mapping them by hand
        gen = self.generate
        seeded = {
            "generate": dataclasses.replace(gen, seed=self.seed,
                                            generation=dataclasses.replace(gen.generation, seed=self.seed)),
            "mine": dataclasses.replace(self.mine, seed=self.seed),
            "train": dataclasses.replace(self.train, seed=self.seed),
        }
        for name, value in seeded.items():
            object.__setattr__(self, name, value)  # frozen: set once, during construction

    def teacher_unread(self) -> str | None:
        """Why nothing reads the teacher stage's scored triples (the stage is then skipped), or None when
        something does: a distilling loss, the teacher's own cuts (``consistency_k``, ``max_negatives``: the
        triples training reads) or a tune sweep (its dev set). ``teacher.rerank_test`` needs no scored triples."""
        from inpars_ray.stages.train_config import DISTILL_LOSSES

        t = self.teacher
        if t is None or self.train.loss in DISTILL_LOSSES or self.tune is not None \
                or t.consistency_k is not None or t.max_negatives is not None:
            return None
        return f"train.loss {self.train.loss or 'default'} trains on hard labels"


@stage_config
class PipelineConfig:
    """One pipeline run on one collection."""

    dataset: str = Field(catalog.BUNDLED_SPEC, description="collection: a BEIR-layout folder, beir/<name>, "
                         "bundled/tiny-science or gs://bucket/prefix")
    out_dir: str = Field("runs/tiny-science", description="run root: every stage writes its folder here")
    split: str = Field("test", description="the qrels split that is retrieved, reranked and evaluated")
    k: int = Field(1000, ge=1, description="BM25 depth of the first-stage run (InPars reranks the top 1000)")
    measures: tuple[str, ...] = Field(DEFAULT_MEASURES, min_length=1, description="ir-measures names reported")
    load: LoadConfig = Field(LoadConfig(), description="how strictly input files are read")
    index: IndexConfig = Field(IndexConfig(), description="how the BM25 (Lucene) index is built")
    bm25: BM25Config = Field(BM25Config(), description="BM25 parameters and search parallelism")
    inpars: InparsConfig | None = Field(InparsConfig(), description="the synthetic-data stages; null runs the "
                                        "BM25 baseline only")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> PipelineConfig:
        """The defaults with ``data`` (e.g. parsed YAML) merged over them; nested sections are dicts."""
        return merge(cls(), data, source)


_ADAPTER = TypeAdapter(PipelineConfig)


def to_dict(config: PipelineConfig) -> dict[str, Any]:
    """Plain values (dicts, lists, strings, numbers), as YAML or JSON would hold them."""
    return _ADAPTER.dump_python(config, mode="json")


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        current = out.get(key)
        if isinstance(value, Mapping) and current is None and isinstance(defaults.get(key), Mapping):
            current = defaults[key]  # e.g. `inpars:` given over a BM25-only base: start from the defaults
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = _deep_merge(dict(current), value, defaults.get(key) or {})
        else:
            out[key] = value
    return out


def _check_seeds(data: Mapping[str, Any], base: PipelineConfig, source: str) -> None:
    inpars = data.get("inpars")
    if not isinstance(inpars, Mapping):
        return
    seed = inpars.get("seed", base.inpars.seed if base.inpars is not None else InparsConfig().seed)
    for section in _SEEDED:
        part = inpars.get(section)
        if not isinstance(part, Mapping):
            continue
        for where, value in ((f"inpars.{section}.seed", part.get("seed", seed)),
                             ("inpars.generate.generation.seed", (part.get("generation") or {}).get("seed", seed))):
            if value != seed:
                raise ConfigError(f"{source}: {where} is set from inpars.seed ({seed}); set inpars.seed instead")


#: stage sections whose ranker settings are one nested ``ranker:`` block (:class:`RankerConfig`)
_RANKER_SECTIONS = ("filter", "rerank")
_RANKER_KEYS = frozenset(RankerConfig.__pydantic_fields__)  # type: ignore[attr-defined]


def _check_ranker_keys(data: Mapping[str, Any], source: str) -> None:
    """A ranker setting written flat in its stage's section (``inpars.rerank.max_length``) gets an error that
    names where it lives now (``inpars.rerank.ranker.max_length``), not only "unknown key"."""
    inpars = data.get("inpars")
    if not isinstance(inpars, Mapping):
        return
    for section in _RANKER_SECTIONS:
        part = inpars.get(section)
        flat = sorted(_RANKER_KEYS.intersection(part)) if isinstance(part, Mapping) else []
        if flat:
            moved = ", ".join(f"inpars.{section}.{key} is now inpars.{section}.ranker.{key}" for key in flat)
            raise ConfigError(f"{source}: {moved} (one ranker block, shared by filter, rerank and the teacher)")


def merge(base: PipelineConfig, data: Mapping[str, Any], source: str) -> PipelineConfig:
    """``base`` with ``data`` merged over it, validated; errors name the key and ``source``."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    _check_seeds(data, base, source)
    _check_ranker_keys(data, source)
    merged = _deep_merge(to_dict(base), data, to_dict(PipelineConfig()))
    try:
        return _ADAPTER.validate_python(merged)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_errors(exc)}") from None
    except ConfigError as exc:  # a stage's own cross-field check
        raise ConfigError(f"{source}: {exc}") from None


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=VALUE`` -> ``{"a": {"b": {"c": VALUE}}}``, VALUE read as YAML (numbers, null, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. inpars.train.lr=1e-3")
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                base: PipelineConfig | None = None) -> PipelineConfig:
    """The defaults, then the YAML file at ``path``, then the ``KEY.PATH=VALUE`` overrides, validated.

    The overrides are merged together (a later one wins where two set the same key) and validated once, so
    settings checked against each other can be changed together in any order (``train.batch_size`` and
    ``train.micro_batch_size``)."""
    config = base or PipelineConfig()
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        config = merge(config, data or {}, str(path))
    texts = list(overrides)
    if texts:
        combined: dict[str, Any] = {}
        for text in texts:
            combined = _deep_merge(combined, parse_override(text), {})
        config = merge(config, combined, ", ".join(f"--set {text}" for text in texts))
    return config


def dump_yaml(config: PipelineConfig) -> str:
    """The resolved config as YAML that :func:`load_config` reads back to the same config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False, width=100)


__all__ = ["TINY_LM", "TINY_MONOT5", "TRAINED", "InparsConfig", "PipelineConfig",
           "dump_yaml", "load_config", "merge", "parse_override", "to_dict"]
