"""Starting or joining Ray the same way from the CLI, the jobs and the tests."""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), or start a local Ray; a no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("INPARS_RAY_PROGRESS", "1") != "0"
    from inpars_ray import progress

    progress.install()  # quiet CLI: Ray's and Ray Data's output to the run's log file, rows to the stage lines
    logger.info("Ray ready: %s", ray.cluster_resources())
