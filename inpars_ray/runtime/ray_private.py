"""The one place inpars-ray calls Ray's private code, each use with its reason.

Ray has no public way to read the address ``ray start`` recorded on this machine; inpars-ray reads it only
to say, in its log, which cluster it did not join (runtime/raykit). ``tests/unit/runtime/test_ray_private.py``
fails loudly when a Ray upgrade moves or changes what is used here.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def recorded_cluster() -> str | None:
    """The address ``ray start`` last recorded on this machine (``$RAY_TMPDIR/ray/ray_current_cluster``), or
    ``None``; never raises (it only feeds a log message)."""
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address()
    except Exception:  # a private helper: its absence must never stop a run
        logger.debug("could not read the recorded Ray cluster", exc_info=True)
        return None
