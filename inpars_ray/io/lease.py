"""The run lease: one driver at a time on a run root.

Two drivers on one run root would interleave their artifacts: both see a stage incomplete, both write
parts and a manifest, and the second manifest may list files the first one is still replacing. So a driver
takes the root's lease before any work and gives it back at the end:

* **local root** -- ``<root>/.inpars-ray.lease`` created with ``O_CREAT | O_EXCL``: the kernel lets exactly
  one process create it;
* **gs:// root** -- the object ``<root>/.inpars-ray.lease`` uploaded with ``if_generation_match=0``, the
  create-only precondition of Cloud Storage: exactly one upload wins, the others get 412 (the usual way to
  hold a lease on a bucket). An upload whose answer was lost is sent again by the client and finds the lease
  it wrote: the 412 is then read as "ours" (same token), not as another driver's. A lease is removed by a
  delete conditioned on its generation (the one this driver wrote, or the one found and judged stale), so a
  driver never removes a lease written after it looked. (gcp-storage-emulator 2026.7 ignores preconditions;
  against an emulator a "lease exists" check made before the upload refuses drivers started one after
  another, not two starting within the same few milliseconds. ``tests/reliability/test_lease_race.py``
  tests that race with a proxy that enforces preconditions as Cloud Storage does.) A storage call that
  fails once its retries are spent raises :class:`~inpars_ray.errors.StorageError`.

The lease holds the holder's host, pid, start time and a random token (never the command line, which may
carry credentials). A second driver refuses with :class:`~inpars_ray.errors.LeaseHeldError` naming the
holder, or waits up to ``wait_s`` for it to go. A lease whose holder is a dead process *on this host* is
stale and broken automatically (a SIGKILLed driver leaves one); a lease held from another host cannot be
checked from here: ``inpars-ray run --break-lease`` breaks it, once the user knows that run is gone.
The name starts with a dot, so no manifest ever lists the lease as an artifact.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from inpars_ray.errors import LeaseHeldError, MissingDependencyError, StorageError
from inpars_ray.io import storage

logger = logging.getLogger(__name__)

LEASE_NAME = ".inpars-ray.lease"
#: how often a waiting driver looks at the lease again
POLL_S = 1.0


def holder_record(purpose: str) -> dict[str, Any]:
    """What a lease says about its holder."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale(holder: dict[str, Any]) -> bool:
    """True when the holder is a process of this host that no longer runs."""
    try:
        return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"]))
    except (KeyError, TypeError, ValueError):
        return False  # an unreadable lease is not ours to judge: the user breaks it


class _LocalLease:
    def __init__(self, path: str) -> None:
        self.path = path

    def create(self, record: dict[str, Any]) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(record, sort_keys=True))
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {"unreadable": text[:200]}  # being written this very moment, or damaged

    def remove(self, expected: dict[str, Any]) -> bool:
        """Remove the lease if it is still ``expected`` (same token): rename it aside first, so a lease
        another driver created meanwhile is never deleted by mistake."""
        aside = f"{self.path}.{uuid.uuid4().hex[:8]}.gone"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            with open(aside, encoding="utf-8") as fh:
                moved = json.loads(fh.read() or "{}")
        except ValueError:
            moved = {}
        if moved.get("token") != expected.get("token"):
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)  # put back the lease that was not the one we meant
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True


class _GcsLease:
    def __init__(self, loc: storage.Location) -> None:
        try:
            import requests
            from google.api_core import exceptions
            from google.auth import exceptions as auth_exceptions
            from google.cloud import storage as gcs
            from google.cloud.storage.retry import DEFAULT_RETRY
        except ImportError as exc:
            raise MissingDependencyError("google-cloud-storage", "gcs", "the run lease on a gs:// run root") from exc
        self._exceptions = exceptions
        #: what a call can end in once its retries are spent: each becomes a StorageError naming the lease
        self._failures = (exceptions.GoogleAPICallError, exceptions.RetryError, auth_exceptions.GoogleAuthError,
                          requests.RequestException)
        # every call below carries a generation precondition or only reads, so each is safe to retry; for as
        # long as the rest of the run's storage calls retry (INPARS_RAY_STORAGE_RETRY_S)
        self._retry = DEFAULT_RETRY.with_timeout(storage.storage_retry_s())
        bucket, _, key = loc.path.partition("/")
        self.path = loc.uri
        self._emulated = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
        try:
            if self._emulated:
                from google.auth.credentials import AnonymousCredentials

                client = gcs.Client(project="emulator", credentials=AnonymousCredentials())
            else:
                client = gcs.Client()
        except self._failures as exc:  # no credentials, no project
            raise StorageError(f"{self.path}: cannot reach Cloud Storage for the run lease: {exc}") from exc
        self._blob_name = key
        self._bucket = client.bucket(bucket)
        #: token and generation of the lease this driver wrote (None while it wrote none)
        self._token: str | None = None
        self.generation: int | None = None

    def _error(self, doing: str, exc: BaseException) -> StorageError:
        return StorageError(f"{self.path}: could not {doing} the run lease: {exc}")

    def create(self, record: dict[str, Any]) -> bool:
        blob = self._bucket.blob(self._blob_name)
        try:
            # Not needed on Cloud Storage, where the create-only precondition below lets exactly one upload
            # win. gcp-storage-emulator ignores preconditions (a second upload would replace the lease), so
            # against an emulator this check is what refuses a driver started after another; two starting
            # together can pass it both there (tests/reliability/test_lease_race.py tests that race through
            # a proxy that enforces preconditions as Cloud Storage does).
            if self._emulated and blob.exists(retry=self._retry):
                return False
            blob.upload_from_string(json.dumps(record, sort_keys=True), content_type="application/json",
                                    if_generation_match=0, retry=self._retry)
        except (self._exceptions.PreconditionFailed, self._exceptions.Conflict):
            # 412: a lease is there. It may be this driver's own: when the answer to an upload that succeeded
            # is lost, the client sends it again, and the retry finds the object the first attempt wrote.
            # (409, a conflicting write in progress: whoever won, the lease read next says who holds it.)
            return self._is_ours(record)
        except self._failures as exc:
            raise self._error("take", exc) from exc
        self._token, self.generation = record["token"], blob.generation
        return True

    def _is_ours(self, record: dict[str, Any]) -> bool:
        current = self.read()
        if current is None or current.get("token") != record["token"]:
            return False
        logger.info("the lease %s was written by this driver's first attempt, whose answer was lost", self.path)
        self._token, self.generation = record["token"], current["_generation"]
        return True

    def read(self) -> dict[str, Any] | None:
        try:
            blob = self._bucket.get_blob(self._blob_name, retry=self._retry)
            if blob is None:
                return None
            # taken now: the download resets it from a response header, which the emulator does not send
            generation = blob.generation
            # the download asks for that generation: replaced since, it is a 404
            text = blob.download_as_bytes(retry=self._retry)
        except self._exceptions.NotFound:
            return None
        except self._failures as exc:
            raise self._error("read", exc) from exc
        try:
            data = json.loads(text)
        except ValueError:
            data = {"unreadable": True}
        if not isinstance(data, dict):
            data = {"unreadable": True}
        data["_generation"] = generation
        return data

    def remove(self, expected: dict[str, Any]) -> bool:
        """Delete the lease ``expected`` -- one read from the bucket (its ``_generation``) or the record this
        driver wrote -- and only that one: the delete is conditioned on its generation, so a lease another
        driver wrote meanwhile (after breaking this one) stays, whatever happens between look and act."""
        generation = expected.get("_generation")
        if generation is None and expected.get("token") == self._token:
            generation = self.generation  # our own record: the generation our upload was given
        if generation is None:
            return False
        try:
            self._bucket.blob(self._blob_name).delete(if_generation_match=generation, retry=self._retry)
        except (self._exceptions.NotFound, self._exceptions.PreconditionFailed):
            return False
        except self._failures as exc:
            raise self._error("remove", exc) from exc
        return True


def _backend(root: storage.PathLike) -> _LocalLease | _GcsLease:
    loc = storage.location(root).join(LEASE_NAME)
    if loc.is_local:
        return _LocalLease(loc.path)
    if loc.scheme == "gs":
        return _GcsLease(loc)
    raise StorageError(f"{loc.uri}: no lease for a {loc.scheme}:// run root (only local folders and gs://)")


def describe(holder: dict[str, Any]) -> str:
    if "pid" not in holder:
        return "an unreadable lease"
    return f"pid {holder['pid']} on {holder.get('host', '?')} (since {holder.get('started', '?')})"


@contextlib.contextmanager
def run_lease(root: storage.PathLike, purpose: str = "inpars-ray run", wait_s: float = 0.0,
              break_lease: bool = False) -> Iterator[dict[str, Any]]:
    """Hold the lease of run root ``root`` for the block; yields the holder record written.

    Raises :class:`LeaseHeldError` when another live driver holds it and does not let go within
    ``wait_s`` seconds. ``break_lease`` removes whatever lease is there first (the user says its holder
    is gone); a lease of a dead process on this host is removed without asking.
    """
    lease = _backend(root)
    record = holder_record(purpose)
    deadline = time.monotonic() + max(0.0, wait_s)
    while not lease.create(record):
        holder = lease.read()
        if holder is None:
            continue  # released between our attempt and the read: try again
        if break_lease or is_stale(holder):
            logger.warning("breaking the lease %s held by %s (%s)", lease.path, describe(holder),
                           "--break-lease" if break_lease else "that process is gone")
            if not lease.remove(holder) and lease.read() == holder:  # neither gone nor replaced: stuck
                raise StorageError(f"{lease.path}: could not remove the lease of {describe(holder)}")
            break_lease = False  # break what was there once, never a lease taken after that
            continue
        if time.monotonic() >= deadline:
            raise LeaseHeldError(str(storage.location(root)), lease.path, describe(holder))
        time.sleep(POLL_S)  # waiting for another driver to finish: there is nothing to poll but the lease
    logger.info("took the lease %s", lease.path)
    try:
        yield record
    finally:
        try:
            released = lease.remove(record)
        except StorageError as exc:  # the run's own outcome (or error) matters more than the lease's
            logger.warning("could not release the lease %s (%s): the next run here breaks it once this process "
                           "is gone, from another host use --break-lease", lease.path, exc)
        else:
            if not released:
                logger.warning("the lease %s was no longer ours when this run ended", lease.path)
