"""Stage — tune: a Ray Tune sweep over the training recipe, scored on the synthetic dev set.

Each trial is the train stage itself (:func:`inpars_ray.stages.train.train`, Ray Train V2 inside a Tune
*function* trainable, the pattern of Ray's "Hyperparameter Tuning with Ray Tune" guide for Train V2): it
trains on the training part of the triples (:mod:`inpars_ray.stages.devset`), rank 0 scores the dev pairs
every ``validate_every`` steps (and after the last one), and :class:`DevReport` forwards each of those
evaluations to Tune, so one Tune result is one evaluation. ASHA (``time_attr="step"``) stops weak trials;
OptunaSearch proposes settings when optuna imports (else Tune's random search).

Early stopping is cooperative. Tune stops a trial by killing its actor, and the train stage inside dies
mid-step: no model and no train manifest (the trials table's record of a trial's steps and evaluations).
So the scheduler (:class:`_CooperativeASHA`) writes a ``STOP`` file in the trial's folder instead, and the
training loop ends the run (``train(stop_file=...)``): a normal end, model and manifest written. The
scheduler also writes ``decided-<step>`` for every evaluation it judged, and the loop waits for it after an
evaluation, so a stopped trial ends right after the evaluation that stopped it (the same steps on every
run). (The protocol began because a killed Train run kept its placement group, Train's cleaner needing the
dashboard's state API; on Ray 2.60 the placement group of a killed run is released without the dashboard:
a 2-CPU sweep went on to its next trial, and no placement group was left 2 s after it ended.)

Storage: the Tune experiment, each trial's Train checkpoints and model, and the outputs live under the
run root (local or ``gs://``). A driver killed mid-sweep resumes with ``Tuner.restore``: finished trials
are kept, an unfinished one restarts and its Train run (same storage and name) restores its last
checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any, Literal, get_args

from inpars_ray.errors import ConfigError
from inpars_ray.io import storage
from inpars_ray.io.manifest import StageRecord, read_manifest
from inpars_ray.io.stage import StageResult, StageSpec, run_once
from inpars_ray.stageconfig import Field, stage_config
from inpars_ray.stages.devset import DevSetConfig
from inpars_ray.stages.train_tracking import trial_mlflow

logger = logging.getLogger(__name__)

STAGE = "tune"
METRIC = "dev_ndcg@10"
STOP_FILE = "STOP"
ASHA_STATE = "asha.pkl"  #: the scheduler's saved state, beside the trials' folder
EXPERIMENT = "experiment"  #: the Tune experiment's folder name under the sweep folder
Search = Literal["auto", "optuna", "random"]
SEARCHES: tuple[str, ...] = get_args(Search)
#: sampling forms of a search-space leaf (YAML ``{form: args}``)
FORMS = ("loguniform", "uniform", "randint", "choice", "grid")
#: training settings a sweep may vary (``train.<name>``), and the rerank blend
TRAIN_KEYS = ("lr", "epochs", "max_steps", "batch_size", "micro_batch_size", "loss", "family", "max_negatives",
              "max_length", "base_model", "warmup_steps", "weight_decay", "temperature", "pooling")
RERANK_KEYS = ("first_stage_weight",)


def _default_space() -> dict[str, Any]:
    return {"train": {"lr": {"loguniform": [1e-5, 1e-3]}}, "rerank": {"first_stage_weight": {"choice": [0.0, 0.3]}}}


@stage_config
class SweepConfig:
    """A Ray Tune sweep of the training recipe on the synthetic dev set (``inpars.tune``)."""

    space: dict[str, dict[str, Any]] = Field(default_factory=dict, description="search space: "
                                             "{train: {setting: SPEC}, rerank: {first_stage_weight: SPEC}}, a "
                                             "SPEC being a value or one of {loguniform|uniform|randint: [lo, hi]}, "
                                             "{choice|grid: [values]}; empty: train.lr loguniform [1e-5, 1e-3] "
                                             "and rerank.first_stage_weight choice [0, 0.3]")
    space_file: str | None = Field(None, description="YAML file of the search space (same form as `space`; "
                                   "it replaces `space`), e.g. configs/tune-space.yaml")
    num_samples: int = Field(8, ge=1, description="trials (times the grid, when the space has grid entries)")
    search: Search = Field("auto", description="auto (optuna when it imports, else random), optuna or random")
    validate_every: int = Field(4, ge=1, description="steps between dev evaluations (ASHA's time unit)")
    grace_period: int = Field(4, ge=1, description="steps a trial runs before ASHA may stop it")
    reduction_factor: int = Field(2, ge=2, description="ASHA keeps the best 1/reduction_factor at each rung")
    max_concurrent_trials: int = Field(1, ge=1, description="trials at once (each holds its driver and workers)")
    cpus_per_trial: float = Field(1.0, ge=0.0, description="CPUs a trial's driver reserves (its Train workers "
                                  "reserve train.num_workers x train.cpus_per_worker and GPUs/TPUs on top)")
    seed: int = Field(0, ge=0, description="seed of the search algorithm")
    dev: DevSetConfig = Field(DevSetConfig(), description="how the synthetic dev set is cut")

    def __post_init__(self) -> None:
        parse_space(self.space)

    def resolved_space(self) -> dict[str, Any]:
        """The flat space (``train.lr`` -> SPEC): from ``space_file`` when set, else ``space``."""
        if self.space_file is None:
            return parse_space(self.space or _default_space())
        import yaml

        try:
            data = yaml.safe_load(storage.location(self.space_file).read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.space_file}: not valid YAML: {exc}") from None
        return parse_space(data or {}, self.space_file)


def parse_space(space: Any, source: str = "tune.space") -> dict[str, Any]:
    """``{section: {name: SPEC}}`` checked and flattened to ``{"section.name": SPEC}``."""
    if not isinstance(space, dict):
        raise ConfigError(f"{source}: expected a mapping {{train: ..., rerank: ...}}")
    flat: dict[str, Any] = {}
    for section, entries in space.items():
        allowed = {"train": TRAIN_KEYS, "rerank": RERANK_KEYS}.get(section)
        if allowed is None or not isinstance(entries, dict):
            raise ConfigError(f"{source}: unknown section {section!r} (train or rerank)")
        for name, spec in entries.items():
            if name not in allowed:
                raise ConfigError(f"{source}: {section}.{name} cannot be tuned (one of {', '.join(allowed)})")
            if isinstance(spec, dict):
                if len(spec) != 1 or next(iter(spec)) not in FORMS:
                    raise ConfigError(f"{source}: {section}.{name}: a SPEC is one of {FORMS}, got {spec!r}")
                form, args = next(iter(spec.items()))
                if not isinstance(args, list) or not args or (form in FORMS[:3] and len(args) != 2):
                    raise ConfigError(f"{source}: {section}.{name}.{form} takes a list"
                                      f"{' [low, high]' if form in FORMS[:3] else ''}")
            flat[f"{section}.{name}"] = spec
    if "train.epochs" in flat and "train.max_steps" in flat:
        raise ConfigError(f"{source}: tune train.epochs or train.max_steps, not both")
    return flat


def candidates(spec: Any) -> list[Any]:
    """Values that bound a SPEC (range ends, every choice): each is checked against the stage config."""
    if not isinstance(spec, dict):
        return [spec]
    form, args = next(iter(spec.items()))
    return list(args)


def apply(train, rerank_weight: float, values: dict[str, Any], models: dict[str, str] | None = None):
    """(TrainConfig, first_stage_weight) with the flat ``values`` of a trial set on them; ``models`` maps a
    tuned base_model name to what the stage loads (``local:minilm`` -> its folder)."""
    over = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("train.")}
    if "base_model" in over and models:
        over["base_model"] = models.get(over["base_model"], over["base_model"])
    if "epochs" in over:
        over["max_steps"] = None
    return dataclasses.replace(train, **over), float(values.get("rerank.first_stage_weight", rerank_weight))


def check_space(flat: dict[str, Any], train, rerank_weight: float) -> None:
    """Fail before the sweep on a value the training stage would refuse (e.g. a batch size that does not
    split into micro-batches): every range end and choice, one at a time, over the base settings."""
    from inpars_ray.models.rankers import RankerConfig
    from inpars_ray.stages.rerank import RerankConfig

    for key, spec in flat.items():
        for value in candidates(spec):
            try:
                _, weight = apply(train, rerank_weight, {key: value})
                RerankConfig(ranker=RankerConfig(model="x"), first_stage_weight=weight)
            except ConfigError as exc:
                raise ConfigError(f"tune space {key}={value!r}: {exc}") from None


def to_tune(flat: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune domains of the flat space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in flat.items():
        if not isinstance(spec, dict):
            out[key] = spec
            continue
        form, args = next(iter(spec.items()))
        if form == "loguniform":
            out[key] = tune.loguniform(float(args[0]), float(args[1]))
        elif form == "uniform":
            out[key] = tune.uniform(float(args[0]), float(args[1]))
        elif form == "randint":  # both ends included
            out[key] = tune.randint(int(args[0]), int(args[1]) + 1)
        elif form == "choice":
            out[key] = tune.choice(list(args))
        else:
            out[key] = tune.grid_search(list(args))
    return out


def planned_steps(train, units: dict[str, int]) -> int:
    """Optimizer steps a trial runs: ``max_steps``, or ``epochs`` full epochs of the training part (a step
    holds ``batch_size`` examples, two per triple, or lists for the grouped losses)."""
    if train.max_steps is not None:
        return train.max_steps
    per = units["lists"] if train.grouped else 2 * units["triples"]
    return train.epochs * max(1, math.ceil(per / train.batch_size))


def search_algorithm(config: SweepConfig, flat: dict[str, Any]):
    """OptunaSearch (seeded) when asked or, for ``auto``, when optuna imports and the space has no grid."""
    has_grid = any(isinstance(s, dict) and "grid" in s for s in flat.values())
    if config.search == "random":
        return None
    try:
        import optuna  # noqa: F401
    except ImportError:
        if config.search == "optuna":
            raise ConfigError("tune.search=optuna needs the optuna package: pip install 'inpars-ray[tune]'") from None
        return None
    if has_grid:
        if config.search == "optuna":
            raise ConfigError("OptunaSearch cannot take grid entries: use choice, or tune.search=random")
        return None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=config.seed)


def _make_scheduler(config: SweepConfig, max_t: int, trials_root: str):
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    state_file = storage.location(trials_root).parent.join(ASHA_STATE)

    class _CooperativeASHA(AsyncHyperBandScheduler):
        """ASHA whose stop decision is a STOP file the trial's training loop obeys (module docstring).

        Tune does not save a scheduler with the experiment: a restored sweep would start with empty rungs
        and judge the remaining trials against nothing. So the scheduler's public ``save`` runs after every
        result it records, and ``restore`` loads it back before the first trial of a resumed sweep."""

        def on_trial_add(self, tune_controller, trial):
            if not getattr(self, "_restored", False):
                self._restored = True
                if state_file.is_file():
                    _restore_scheduler(self, state_file)
            super().on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result):
            from inpars_ray.stages.train_loop import decision_file

            action = super().on_trial_result(tune_controller, trial, result)
            _save_scheduler(self, state_file)
            stop = storage.location(trials_root).join(trial.trial_id, STOP_FILE)
            if action == TrialScheduler.STOP:
                logger.info("[tune] ASHA stops trial %s at step %s", trial.trial_id, result.get("step"))
                stop.write_text(str(result.get("step")))
            if "step" in result:  # the verdict the training loop waits for (stop file first)
                decision_file(stop.uri, int(result["step"])).write_text(action)
            return TrialScheduler.CONTINUE if action == TrialScheduler.STOP else action

        def on_trial_complete(self, tune_controller, trial, result):
            super().on_trial_complete(tune_controller, trial, result)
            _save_scheduler(self, state_file)

    return _CooperativeASHA(time_attr="step", max_t=max(max_t, config.grace_period + 1),
                            grace_period=config.grace_period, reduction_factor=config.reduction_factor,
                            stop_last_trials=False)


def _save_scheduler(scheduler, where: storage.Location) -> None:
    """``scheduler.save`` (Ray's public API, a local path) published to ``where`` (local or an object store)."""
    with tempfile.TemporaryDirectory(prefix="inpars-asha-") as tmp:
        scheduler.save(os.path.join(tmp, ASHA_STATE))
        where.write_bytes(storage.location(os.path.join(tmp, ASHA_STATE)).read_bytes())


def _restore_scheduler(scheduler, where: storage.Location) -> None:
    """``scheduler.restore`` from the state :func:`_save_scheduler` published to ``where``."""
    with tempfile.TemporaryDirectory(prefix="inpars-asha-") as tmp:
        storage.location(os.path.join(tmp, ASHA_STATE)).write_bytes(where.read_bytes())
        scheduler.restore(os.path.join(tmp, ASHA_STATE))


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial shares (put in Ray's object store once by ``tune.with_parameters``)."""

    train: Any  #: the base TrainConfig (models resolved)
    rerank_weight: float
    triples: str  #: training part of the triples
    dev_pairs: str
    dev_qrels: str
    units: dict[str, int]  #: training triples and lists, for the planned steps
    trials_root: str
    validate_every: int
    models: dict[str, str]  #: tuned base_model names -> what the stage loads


def _make_report_callback(planned: int):
    from ray.tune.integration.ray_train import TuneReportCallback

    class DevReport(TuneReportCallback):
        """Forwards to Tune only the reports that carry a dev evaluation, once per step."""

        def __init__(self) -> None:
            super().__init__()
            self.last_step = 0

        def after_report(self, run_context, metrics, checkpoint):
            row = metrics[0]
            if METRIC not in row or row.get("step", 0) <= self.last_step:
                return
            self.last_step = row["step"]
            super().after_report(run_context, [{**row, "planned_steps": planned}], checkpoint)

    return DevReport()


def run_trial(params: dict[str, Any], ctx: TrialContext) -> None:
    """One trial (a Tune function trainable): the train stage with this trial's settings."""
    import ray
    import ray.tune

    cfg, weight = apply(ctx.train, ctx.rerank_weight, params, ctx.models)
    cfg = cfg.resolved()
    planned = planned_steps(cfg, ctx.units)
    trial_id = ray.tune.get_context().get_trial_id()
    out = storage.location(ctx.trials_root).join(trial_id)
    cfg = dataclasses.replace(cfg, max_steps=planned, validate_every=ctx.validate_every,
                              checkpoint_every=ctx.validate_every, keep_checkpoints=1,
                              storage_path=out.join("ray").uri)
    callback = _make_report_callback(planned)
    tracking = trial_mlflow(cfg, storage.location(ctx.trials_root).parent, trial_id)  # train.mlflow: one run per trial
    # The train stage runs in a task of its own, outside the trial's placement group: Tune makes a trial
    # capture its child tasks, and the stage's own tasks (the content-order exchange) ask for a whole CPU
    # that the trial's bundle does not have (ValueError: cannot fit into any bundles).
    task = ray.remote(_train_task).options(scheduling_strategy="DEFAULT", num_cpus=0)
    manifest, trained = ray.get(task.remote(ctx.triples, out.uri, cfg, {
        "pairs": ctx.dev_pairs, "qrels": ctx.dev_qrels, "first_stage_weight": weight}, callback,
        out.join(STOP_FILE).uri, tracking))
    if not trained:
        # the Train run had finished before a driver was killed: Tune gets its evaluations from the manifest
        for row in manifest.get("extra", {}).get("history", []):
            if METRIC in row:
                ray.tune.report({**row, "planned_steps": planned})


def _train_task(triples: str, out: str, cfg, dev: dict[str, Any], callback, stop_file: str, mlflow=None):
    """(the train stage's manifest, whether it trained now) of one trial's training run. A run found
    complete (the driver was killed after it ended) reported nothing to this Tune session."""
    from inpars_ray.stages.train import train

    before = read_manifest(out)
    manifest = train(triples, out, cfg, dev=dev, callbacks=[callback], stop_file=stop_file, mlflow=mlflow)
    reused = before is not None and before.get("finished_at") == manifest.get("finished_at")
    return manifest, not reused


def sweep_payload(config: SweepConfig, flat: dict[str, Any], devset_key: str, train, rerank_weight: float) -> dict:
    """What a sweep's results depend on (where it runs and how many trials run at once do not)."""
    base = dataclasses.replace(train, storage_path=None, cpus_per_worker=None, max_failures=0,
                               mlflow=False, mlflow_tracking_uri=None, mlflow_experiment=None)
    return {"space": flat, "devset": devset_key, "train": base, "first_stage_weight": rerank_weight,
            "tune": dataclasses.replace(config, space={}, space_file=None, max_concurrent_trials=1,
                                        cpus_per_trial=0.0)}


def run_sweep(devset: Mapping[str, Any], devset_dir: storage.PathLike, out: storage.PathLike, config: SweepConfig,
              train, rerank_weight: float, resolve=lambda name: name) -> StageResult:
    """Run (or resume) the sweep under ``out``; returns its result (trials, best trial, outputs).

    ``devset`` is the dev set's result or manifest (:func:`inpars_ray.stages.devset.build_dev_set`) under
    ``devset_dir``; ``train`` the base TrainConfig and ``rerank_weight`` the base first-stage blend.
    """
    import ray
    from ray import tune

    from inpars_ray.io.manifest import config_hash
    from inpars_ray.stages import tune_report
    from inpars_ray.stages.devset import dev_paths
    from inpars_ray.stages.train_config import model_location

    flat = config.resolved_space()
    check_space(flat, train, rerank_weight)
    out = storage.location(out)
    if out.is_local:
        out = storage.location(str(out.local_path().resolve()))
    trial_mlflow(train, out, "check")  # train.mlflow without a usable store fails here, before the sweep
    payload = sweep_payload(config, flat, config_hash(devset), train, rerank_weight)
    def body(record: StageRecord) -> None:
        paths = dev_paths(devset_dir)
        counts = devset.get("counts", {})
        ctx = TrialContext(train=train, rerank_weight=rerank_weight, triples=paths["triples"],
                           dev_pairs=paths["pairs"], dev_qrels=paths["qrels"],
                           units={"triples": counts.get("train_triples", 0), "lists": counts.get("train_lists", 0)},
                           trials_root=out.join("trials").uri, validate_every=config.validate_every,
                           models={v: resolve(v) for v in (candidates(flat["train.base_model"]) if "train.base_model" in flat
                                                           else [])})
        space = to_tune(flat)
        max_t = _max_steps(flat, train, ctx.units, ctx.models)
        resources = {"CPU": config.cpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)
        experiment = out.join(EXPERIMENT)
        # Tune saves the experiment (trials, ASHA's rungs) every ~10 s by default: a driver killed in between
        # restores a sweep that lost its last results, and ASHA then judges the next trials against other rungs.
        # Saving after every result (cheap next to a training step) makes the restored sweep the same sweep.
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
        with record.timed("sweep"):
            if tune.Tuner.can_restore(experiment.path, storage_filesystem=experiment.fs):
                logger.info("[tune] resuming the sweep in %s", experiment.uri)
                tuner = tune.Tuner.restore(experiment.path, trainable, resume_unfinished=True, resume_errored=True,
                                           storage_filesystem=experiment.fs)
            else:
                tuner = tune.Tuner(
                    trainable, param_space=space,
                    tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=config.num_samples,
                                                max_concurrent_trials=config.max_concurrent_trials,
                                                search_alg=search_algorithm(config, flat),
                                                scheduler=_make_scheduler(config, max_t, ctx.trials_root)),
                    run_config=tune.RunConfig(name=EXPERIMENT, storage_path=out.path, storage_filesystem=out.fs,
                                              verbose=0, failure_config=tune.FailureConfig(max_failures=1)))
            grid = tuner.fit()
        trials = tune_report.trials_table(grid, ctx.trials_root, flat)
        if not any(t["dev_ndcg@10"] is not None for t in trials):
            raise ConfigError(f"no trial of the sweep in {out.uri} reported a dev nDCG@10; see its trial errors")
        best = max((t for t in trials if t["dev_ndcg@10"] is not None), key=lambda t: t["dev_ndcg@10"])
        with record.timed("report"):
            outputs = tune_report.write_outputs(out, trials, flat)
        record.counts.update(trials=len(trials), stopped_early=sum(t["stopped_early"] for t in trials),
                             trial_steps=sum(t["steps"] for t in trials),
                             trial_steps_planned=sum(t["planned_steps"] for t in trials),
                             errored=sum(1 for t in trials if t["error"]))
        record.extra.update(trials=trials, best=best, outputs=outputs, metric=METRIC,
                            best_model=model_location(storage.location(ctx.trials_root).join(best["trial_id"])).uri,
                            best_settings=best_settings(best, flat), ray=ray.__version__)

    # no file list: the experiment folder stays across attempts, so that a killed sweep resumes
    return run_once(StageSpec(STAGE, out, payload), body)


def _max_steps(flat: dict[str, Any], train, units: dict[str, int], models: dict[str, str]) -> int:
    """The longest trial's steps (ASHA's max_t): over every bound of the step-setting entries."""
    keys = [k for k in ("train.max_steps", "train.epochs", "train.batch_size", "train.loss", "train.family")
            if k in flat]
    best = planned_steps(train.resolved(), units)
    for key in keys:
        for value in candidates(flat[key]):
            cfg, _ = apply(train, 0.0, {key: value}, models)
            try:
                best = max(best, planned_steps(cfg.resolved(), units))
            except ConfigError:
                continue
    return best


def best_settings(best: dict[str, Any], flat: dict[str, Any]) -> dict[str, Any]:
    """The best trial's tuned values as nested settings ``{"train": {...}, "rerank": {...}}``."""
    nested: dict[str, dict[str, Any]] = {}
    for key in flat:
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = best["settings"][key]
    if "epochs" in nested.get("train", {}):
        nested["train"]["max_steps"] = None  # as in the trial: epochs count only without max_steps
    return nested
