"""The TPU path of training: torch-xla inside each Ray Train worker (see docs/tpu.md).

Why not ``ScalingConfig(use_tpu=True)`` alone: on Ray 2.60 it makes ``TorchTrainer`` pick the
``tpu_dist`` process-group backend, which needs Google's ``torch_tpu`` package, not ``torch_xla``; and
``ray.train.torch.xla.TorchXLAConfig`` targets AWS Neuron (Ray 2.60's ``ray/train/torch/xla/config.py``). So
this module supplies its own :class:`XlaTorchConfig`:

* one Ray Train worker per TPU VM host (it reserves the host's chips through the ``TPU`` resource);
* before the training function runs, every worker gets ``PJRT_DEVICE`` set (``TPU`` on TPU VMs; ``CPU``
  to exercise the path without a TPU) so torch-xla's PJRT runtime drives the local devices;
* the torch.distributed process group that Ray Train sets up is ``gloo``: gradient sums between hosts
  travel through host memory (see :class:`inpars_ray.runtime.collectives.Collectives`), compute stays on XLA.

torch-xla is imported lazily and only inside workers; the extra is ``inpars-ray[tpu]``.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from ray.train.torch.config import TorchConfig, _TorchBackend

from inpars_ray.runtime.deps import require

logger = logging.getLogger(__name__)

#: which PJRT device workers use; set INPARS_PJRT_DEVICE=CPU on the driver to run the path without a TPU
PJRT_ENV = "INPARS_PJRT_DEVICE"


def _set_pjrt_device(device: str) -> str:
    os.environ["PJRT_DEVICE"] = device
    return device


class _XlaBackend(_TorchBackend):
    """Ray Train's torch backend (gloo process group) + the PJRT device variable on every worker."""

    def on_start(self, worker_group, backend_config: XlaTorchConfig) -> None:
        worker_group.execute(_set_pjrt_device, backend_config.pjrt_device)
        super().on_start(worker_group, backend_config)


@dataclasses.dataclass
class XlaTorchConfig(TorchConfig):
    """Process-group settings of the torch-xla path.

    Attributes:
        pjrt_device: PJRT device the workers use: "TPU" on TPU VMs, "CPU" for torch-xla's CPU device.
    """

    pjrt_device: str = dataclasses.field(default_factory=lambda: os.environ.get(PJRT_ENV, "TPU"))

    def __post_init__(self) -> None:
        # host-level collectives: XLA tensors are summed through host memory (docs/tpu.md)
        self.backend = "gloo"

    @property
    def backend_cls(self):
        return _XlaBackend


def xla_device():
    """The worker's XLA device (``xla:0``); PJRT_DEVICE must be set before torch-xla is first imported."""
    if "PJRT_DEVICE" not in os.environ:
        _set_pjrt_device(os.environ.get(PJRT_ENV, "TPU"))
    torch_xla = require("torch_xla", "training on TPU")
    device = torch_xla.device()
    logger.info("XLA device %s (PJRT_DEVICE=%s)", device, os.environ["PJRT_DEVICE"])
    return device


def xla_sync() -> None:
    """Cut the lazy XLA graph and run it (``torch_xla.sync``; ``xm.mark_step`` is deprecated)."""
    torch_xla = require("torch_xla", "training on TPU")
    torch_xla.sync()
