"""The train stage's settings (:class:`TrainConfig`) and its batch geometry (:func:`plan_steps`).

Defaults follow the InPars-v1 recipe for monoT5 (arXiv 2202.05144; the 3e-4 LR from
github.com/zetaalphavector/InPars issue #21) and GPL's for bi- and cross-encoders (arXiv 2112.07577;
UKPLab/gpl: lr 2e-5, 1k warm-up steps of 140k).
Batch sizes count examples (two per triple) for the pairwise losses and lists (queries) for the grouped
ones (listwise, contrastive).
"""
from __future__ import annotations

import dataclasses
from typing import Literal, cast, get_args

from inpars_ray.errors import ConfigError
from inpars_ray.io import storage
from inpars_ray.models.families import BI_ENCODER, CROSS_ENCODER, MONOT5, Family, Pooling
from inpars_ray.stageconfig import Field, stage_config

STAGE = "train"
#: the trained model's folder inside a train output folder
MODEL_DIR = "model"
TRAINER_STATE = "trainer_state.pt"
DATA_STATE = "data_state"
Accelerator = Literal["cpu", "gpu", "tpu"]
#: where the contrastive loss finds its in-batch negatives
InBatch = Literal["batch", "micro-batch"]
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)
#: every loss; which of them a family trains with is :data:`LOSSES`
Loss = Literal["monot5", "listwise", "pointwise", "contrastive", "margin-mse", "kl"]
LOSSES = {MONOT5: ("monot5", "margin-mse", "kl"), CROSS_ENCODER: ("listwise", "pointwise", "margin-mse", "kl"),
          BI_ENCODER: ("contrastive", "margin-mse", "kl")}
GROUPED_LOSSES = ("listwise", "contrastive", "margin-mse", "kl")
#: the losses that train on a teacher's scores (:mod:`inpars_ray.models.distill`)
DISTILL_LOSSES = ("margin-mse", "kl")
#: learning rate per family when none is given: InPars-v1's for monoT5, GPL's for the encoders
DEFAULT_LR = {MONOT5: 3e-4, CROSS_ENCODER: 2e-5, BI_ENCODER: 2e-5}
#: triples per hash partition when they are grouped into lists
GROUP_ROWS_PER_PARTITION = 200_000


@stage_config
class TrainConfig:
    """How to fine-tune a ranker (defaults: InPars-v1 monoT5 on GPU, arXiv 2202.05144).

    ``batch_size / (num_workers * micro_batch_size)`` is the number of gradient-accumulation micro-steps and
    must be a whole number. The unit of both is an example (two per triple) for the pairwise losses
    (monot5, pointwise) and a (query, positive, negatives) list for listwise and contrastive.
    """

    base_model: str = Field(description="Hugging Face id or local folder of the checkpoint to start from")
    family: Family | None = Field(None, description="monot5, cross-encoder or bi-encoder; None reads it from "
                                  "base_model (a bare encoder such as all-MiniLM-L6-v2 reads as a bi-encoder: say "
                                  "cross-encoder to train one)")
    loss: Loss | None = Field(None, description="monot5 (monoT5), listwise or pointwise (cross-encoder), "
                              "contrastive (bi-encoder); None picks the first of these for the family. margin-mse "
                              "and kl (every family) distil the teacher stage's scores (GPL)")
    lr: float | None = Field(None, gt=0, description="AdamW learning rate, constant after the warm-up; None: "
                             "3e-4 for monoT5 (InPars-v1), 2e-5 for bi- and cross-encoders (GPL)")
    warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up from 0 to lr")
    warmup_ratio: float | None = Field(None, ge=0, le=1, description="warm-up as a fraction of the run's steps "
                                       "(wins over warmup_steps; GPL: 1k of 140k)")
    teacher_temperature: float | None = Field(None, gt=0, description="kl: temperature of the teacher's "
                                              "softmax (None: the student's, `temperature`)")
    query_only: bool = Field(False, description="bi-encoder: train the query tower only; documents are embedded "
                             "by the frozen start model (saved beside it as document_encoder/)")
    interpolate: float = Field(1.0, gt=0, le=1, description="WiSE-FT (arXiv 2109.01903): the saved weights are "
                               "(1 - a) * start + a * trained; 1 keeps the trained weights")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(128, ge=1, description="effective batch per optimizer step, all workers together: "
                            "examples (a triple gives two) or lists (listwise, contrastive)")
    micro_batch_size: int = Field(8, ge=1, description="examples (or lists) per forward pass on one worker")
    max_length: int = Field(512, ge=1, description="input length in tokens; the document is truncated, never "
                            "monoT5's suffix")
    max_negatives: int | None = Field(None, ge=1, description="listwise/contrastive: at most this many BM25 negatives "
                                      "per list (None: all mined)")
    temperature: float = Field(0.05, gt=0, description="contrastive: softmax temperature of the cosine "
                               "similarities (0.05 = scale 20)")
    in_batch: InBatch = Field("batch", description="contrastive: the other lists' documents a query is "
                              "scored against: those of the whole batch, all workers together (gradient "
                              "caching, arXiv 2101.06983, as sentence-transformers' CachedMultipleNegatives"
                              "RankingLoss; one more forward pass), or of its micro-batch only")
    contrastive_weight: float = Field(0.0, ge=0, description="margin-mse or kl on a bi-encoder: add this weight "
                                      "times the contrastive loss (hard labels: each query's source document "
                                      "against its negatives and the other lists' documents, as `in_batch` and "
                                      "`temperature` say) to the distillation loss; 0 distils only")
    pooling: Pooling = Field("mean", description="bi-encoder pooling: mean or cls")
    epochs: int = Field(1, ge=1, description="passes over the triples (when max_steps is None)")
    max_steps: int | None = Field(None, ge=1, description="train exactly this many optimizer steps, over as many "
                                  "epochs as that takes; None trains for `epochs` full epochs")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU, or one per TPU VM host)")
    accelerator: Accelerator = Field("cpu", description="cpu (gloo), gpu (nccl) or tpu (torch-xla, see docs/tpu.md)")
    mixed_precision: bool = Field(True, description="on GPU, autocast to bfloat16 when the GPU supports it")
    checkpoint_every: int = Field(50, ge=1, description="save a Hugging Face checkpoint every this many steps (and "
                                  "after the last one)")
    keep_checkpoints: int = Field(2, ge=1, description="how many checkpoints Ray Train keeps in storage")
    max_failures: int = Field(2, ge=0, description="worker-group failures Ray Train recovers from (restoring the "
                              "last checkpoint)")
    storage_path: str | None = Field(None, description="where Ray Train writes checkpoints (local path or "
                                     "gs://...); None means <out>/ray")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs a worker reserves; None takes 1, or an "
                                          "equal share of a smaller cluster; more than the cluster holds is "
                                          "refused (Ray Train would wait for them forever)")
    rows_per_block: int = Field(1024, ge=1, description="at most this many training rows per Ray Data block; "
                                "fewer when the data is small, so that every worker gets several blocks")
    tpu_chips_per_worker: int = Field(4, ge=0, description="TPU chips a worker reserves (4 per v4 VM host; 0 "
                                      "runs the XLA path on torch-xla's CPU device)")
    seed: int = Field(0, ge=0, description="torch seed (the model init is the checkpoint's; this seeds dropout)")
    validate_every: int | None = Field(None, ge=1, description="rank 0 computes nDCG@10 on the dev set every this "
                                       "many steps; None disables it")
    mlflow: bool = Field(False, description="log each step's loss, learning rate and dev nDCG@10 (where scored) "
                         "to MLflow through Ray's setup_mlflow, for train and every tune trial (the mlflow extra)")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI (a server, sqlite:///..., "
                                            "file:...); None: a local store under the run root, "
                                            "file:<run root>/mlruns (a gs:// run root needs one)")
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name; None: inpars-ray (tune "
                                          "trials: inpars-ray tune <sweep>)")

    def __post_init__(self) -> None:
        # ranges and choices are the fields' own (pydantic names the field and the value); what is left
        # here depends on two settings at once
        if self.family is not None and self.loss is not None and self.loss not in LOSSES[self.family]:
            raise ConfigError(f"a {self.family} trains with loss {LOSSES[self.family]}, not {self.loss!r}")
        if self.contrastive_weight and (self.loss not in DISTILL_LOSSES or self.family not in (None, BI_ENCODER)):
            raise ConfigError(f"contrastive_weight adds hard labels to a bi-encoder's distillation loss "
                              f"({DISTILL_LOSSES}); this config trains a {self.family or 'model'} with "
                              f"{self.loss or 'its family default loss'!r}")
        loss = self.loss if self.loss is not None or self.family is None else LOSSES[self.family][0]
        if loss is None:  # the unit is known once the family is read
            plan_steps(self.batch_size, self.micro_batch_size, self.num_workers, grouped=True)
        else:
            plan_steps(self.batch_size, self.micro_batch_size, self.num_workers, loss in GROUPED_LOSSES)

    def resolved(self) -> TrainConfig:
        """This config with ``family`` (from the checkpoint) and ``loss`` (the family's default) filled in."""
        from inpars_ray.models.families import detect_family

        family = self.family or detect_family(self.base_model)
        loss = self.loss or LOSSES[family][0]
        if loss not in LOSSES[family]:
            raise ConfigError(f"a {family} trains with loss {LOSSES[family]}, not {loss!r}")
        if self.query_only and family != BI_ENCODER:
            raise ConfigError(f"query_only trains a bi-encoder's query tower; this model is a {family}")
        if self.contrastive_weight and family != BI_ENCODER:  # the loss was checked when the config was read
            raise ConfigError(f"contrastive_weight adds hard labels to a bi-encoder's distillation loss; "
                              f"this model is a {family}")
        # detect_family returns one of FAMILIES and LOSSES holds Loss names: the Literal types hold
        return dataclasses.replace(self, family=cast(Family, family), loss=cast(Loss, loss),
                                   lr=self.lr or DEFAULT_LR[family])

    @property
    def distills(self) -> bool:
        """Whether this loss trains on a teacher's scores."""
        return self.loss in DISTILL_LOSSES

    @property
    def in_batch_negatives(self) -> bool:
        """Whether the loss scores queries against other lists' documents (contrastive, alone or added);
        read on a :meth:`resolved` config (an unset loss reads as False)."""
        return self.loss == "contrastive" or (self.distills and self.contrastive_weight > 0)

    @property
    def grouped(self) -> bool:
        """Whether training rows are (query, positive, all negatives) lists rather than triples."""
        return self.loss in GROUPED_LOSSES


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Batch geometry of one optimizer step on one worker."""

    micro_triples: int  #: rows (triples, or lists when grouped) per forward pass
    accum_steps: int  #: forward passes per optimizer step
    triples_per_step: int  #: rows one worker consumes per optimizer step


def plan_steps(batch_size: int, micro_batch_size: int, num_workers: int, grouped: bool = False) -> StepPlan:
    """Split an effective batch of ``batch_size`` units over workers and accumulation micro-steps.

    The unit is an example (two per triple) for the pairwise losses and a list (one row) when ``grouped``.
    """
    per_row = 1 if grouped else 2
    if micro_batch_size % per_row:
        raise ConfigError(f"micro_batch_size={micro_batch_size} must be even: each triple gives two examples")
    per_step = micro_batch_size * num_workers
    if batch_size % per_step:
        raise ConfigError(f"batch_size={batch_size} is not a multiple of micro_batch_size x workers = "
                          f"{micro_batch_size} x {num_workers}")
    accum = batch_size // per_step
    return StepPlan(micro_batch_size // per_row, accum, accum * micro_batch_size // per_row)


def model_location(train_dir: storage.PathLike) -> storage.Location:
    """Where the train stage writes the trained model under its output folder ``train_dir``."""
    return storage.location(train_dir).join(MODEL_DIR)
