"""Typed errors raised by inpars-ray.

Library code raises these; only the CLI turns them into an exit status. Every error that concerns an
input file names the file and, where it applies, the 1-based line number.
"""
from __future__ import annotations

import re


class InparsError(Exception):
    """Base class of every error inpars-ray raises on purpose."""


class ConfigError(InparsError):
    """A configuration value is invalid or inconsistent."""


class MissingDependencyError(InparsError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed. "
            f"Install it with: pip install 'inpars-ray[{extra}]'"
        )
        self.module = module
        self.extra = extra
        self._purpose = purpose

    def __reduce__(self):  # errors cross process boundaries in Ray: pickle the constructor's arguments
        return (type(self), (self.module, self.extra, self._purpose))


class CollectionError(InparsError):
    """A collection cannot be resolved, downloaded or read."""


class DownloadError(CollectionError):
    """A download failed or its checksum did not match."""


class DatasetUnavailableError(CollectionError):
    """An ir_datasets id's data could not be read here (not downloaded, and no network to fetch it).

    Attributes:
        dataset_id: the ir_datasets id.
        home: the folder ir_datasets keeps its data in (``IR_DATASETS_HOME``).
        reason: what ir_datasets said.
    """

    def __init__(self, dataset_id: str, home: str, reason: str) -> None:
        super().__init__(
            f"the data of ir_datasets id {dataset_id!r} is not available: {reason}. ir_datasets fetches it on "
            f"first use into IR_DATASETS_HOME (here {home}); without network, fetch it on a machine that has "
            f"network (e.g. `ir_datasets export {dataset_id} docs > /dev/null`, likewise queries and qrels), then "
            f"copy that machine's IR_DATASETS_HOME folder here and set IR_DATASETS_HOME to it")
        self.dataset_id = dataset_id
        self.home = home
        self.reason = reason

    def __reduce__(self):  # errors cross process boundaries in Ray: pickle the constructor's arguments
        return (type(self), (self.dataset_id, self.home, self.reason))


class FormatError(CollectionError):
    """A row of an input file is malformed.

    Attributes:
        path: the file the row came from.
        line: 1-based line number in that file (0 when the error concerns the whole file).
        reason: what is wrong with the row.
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason

    def __reduce__(self):  # errors cross process boundaries in Ray: pickle the constructor's arguments
        return (type(self), (self.path, self.line, self.reason))


class SchemaError(InparsError):
    """A table handed to a stage lacks columns that stage needs."""


class StorageError(InparsError):
    """An artifact location cannot be used: a bad URI, a missing or changed file, a local path on many nodes."""


class ArtifactDamagedError(StorageError):
    """A file a complete manifest lists is missing or has another size: the artifact must be made again."""


class IndexError_(InparsError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """A Lucene index is missing, incomplete or unusable."""


class LeaseHeldError(StorageError):
    """Another driver holds the run root's lease (:mod:`inpars_ray.io.lease`).

    Attributes:
        root: the run root.
        lease: where the lease is (file or object).
        holder: who holds it, in words (pid, host, since when).
    """

    def __init__(self, root: str, lease: str, holder: str) -> None:
        super().__init__(
            f"{root} is in use by another inpars-ray run: {holder} holds {lease}. Wait for it to finish "
            f"(--lease-wait SECONDS), or, if that run is gone, rerun with --break-lease")
        self.root = root
        self.lease = lease
        self.holder = holder

    def __reduce__(self):  # errors cross process boundaries in Ray: pickle the constructor's arguments
        return (type(self), (self.root, self.lease, self.holder))


class BackendError(InparsError):
    """A generation or scoring backend failed in a way retries could not cure."""


class HubError(InparsError):
    """The Hugging Face Hub cannot take an upload: no token, offline mode, or the Hub refused it."""


#: ``scheme://user:password@``: the credentials part of a URL
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (``http://user:***@host/...``).

    Manifests, run files and error messages go through this: an endpoint URL that carries credentials
    (``http://user:secret@proxy/v1``) is shown, hashed and logged without them: run folders and logs are
    shared and kept, a password must not travel with them.
    """
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text) if "@" in text else text


def find_typed_error(exc: BaseException | None) -> InparsError | None:
    """The innermost inpars-ray error inside ``exc`` and its causes, or None.

    Ray re-raises an error from a task or actor as ``RayTaskError(<original type>)`` whose message carries
    a remote traceback; this digs out the original error so users see its own message.
    """
    found: InparsError | None = None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, InparsError) and not type(exc).__module__.startswith("ray."):
            found = exc  # keep digging: the innermost original is the most precise
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return found
