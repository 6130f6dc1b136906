"""Starting or joining Ray the same way from the CLI, the jobs and the tests; and one Ray Data helper
(:func:`one_block_per_call`).

With no address, ``ray.init()`` joins the cluster recorded in ``$RAY_TMPDIR/ray/ray_current_cluster`` by
the last ``ray start``; when that cluster was killed, the record stays behind and ``ray.init()`` waits for
its GCS for minutes without a word. So without an explicit address (argument or ``RAY_ADDRESS``) inpars-ray
always starts a Ray of its own (``address="local"``) and never reads that record; joining a cluster is
always explicit (``--ray-address``, ``RAY_ADDRESS``, or ``ray job submit``, which sets ``RAY_ADDRESS``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), or start a local Ray; a no-op when Ray is already up.

    Without either address a new local Ray is started, even when a ``ray start`` cluster is recorded on
    this machine (live or stale): pass its address to join it.
    """
    import ray

    if ray.is_initialized():
        return
    from inpars_ray.runtime import progress
    from inpars_ray.runtime.ray_private import recorded_cluster

    address = address or os.environ.get("RAY_ADDRESS") or None
    # a quiet CLI keeps the workers' output in Ray's session logs (named in the log file below), off the console
    kwargs: dict = {"log_to_driver": not progress.quiet(), "configure_logging": False}
    if address and address != "local":
        logger.info("joining the Ray cluster at %s", address)
        context = ray.init(address=address, **kwargs)
    else:
        recorded = recorded_cluster()
        if recorded:
            logger.info("not joining the Ray cluster recorded at %s (it may be gone); starting a local Ray. "
                        "Pass --ray-address or set RAY_ADDRESS to join a cluster.", recorded)
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    session = getattr(context, "address_info", {}).get("session_dir")
    if session:
        logger.info("Ray's own logs (the output of its workers and actors): %s/logs", session)
    ctx = ray.data.DataContext.get_current()
    # a UDF's own error, not Ray Data's UserCodeException wrapper: the wrapper's cause does not survive the
    # trip to the driver, so a typed error (e.g. StorageError on ENOSPC) would reach the CLI as a traceback
    ctx.raise_original_map_exception = True
    progress.install()  # Ray Data's progress by the one switch; quiet CLI: Ray's and Ray Data's logs to the log file
    logger.info("Ray ready: %s", ray.cluster_resources())


def _cut(block: Any, rows: int) -> Iterator[Any]:
    for start in range(0, block.num_rows, rows):
        yield block.slice(start, rows)


def one_block_per_call(todo: Any, rows: int) -> Any:
    """``todo`` (materialised) re-cut into blocks of at most ``rows`` consecutive rows, each within one of its
    blocks: one block is one backend call, so every actor gets work (a small sample is a single block, which
    one actor would otherwise take whole) and a call's documents depend on the sample alone, not on the
    number of actors or the order blocks arrive in. The blocks stay in the object store (only references
    reach the driver)."""
    import ray

    cut = ray.remote(num_cpus=0.25)(_cut)
    refs = [ref for block in todo.to_arrow_refs() for ref in cut.remote(block, rows)]
    return ray.data.from_arrow_refs(refs) if refs else todo
