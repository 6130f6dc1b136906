"""Storage: every artifact of a run is read and written through here; a run root is a URI.

A run root is a local folder or an object-store URI such as ``gs://bucket/prefix`` (any scheme
:func:`pyarrow.fs.FileSystem.from_uri` knows). ``gs://`` goes through pyarrow's ``GcsFileSystem``;
``STORAGE_EMULATOR_HOST`` (the variable google-cloud-storage honours) points it at an emulator. A
:class:`Location` carries its filesystem object, which pickles with its options, so a location handed to a
Ray actor on another node reaches the same bucket (or emulator) without that node's environment.

One object is written whole or not at all: locally through a temporary name and ``os.replace``; on an
object store by one upload, which the store makes visible only when it completes. Artifacts of many
objects are published and read by :mod:`inpars_ray.io.artifacts`.

**Many nodes.** A local path means a different disk on every node of a real cluster. :func:`check_reachable`
fails at once, before any work, when a stage is given one on a multi-node Ray cluster, unless the user says
the path is a shared mount (``INPARS_RAY_SHARED_FS=1`` or ``--shared-fs``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from inpars_ray.errors import StorageError

#: environment variable that declares local paths to be on a disk every node shares (NFS, Filestore...)
SHARED_FS_ENV = "INPARS_RAY_SHARED_FS"


#: environment variable: seconds one object-store call keeps retrying (with back-off) before it fails
STORAGE_RETRY_ENV = "INPARS_RAY_STORAGE_RETRY_S"
#: its default. pyarrow's own is 15 minutes per call, during which a stage with a bucket gone looks hung
DEFAULT_STORAGE_RETRY_S = 180.0


def storage_retry_s() -> float:
    """How long one object-store call retries before a :class:`StorageError` (``INPARS_RAY_STORAGE_RETRY_S``)."""
    text = os.environ.get(STORAGE_RETRY_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_STORAGE_RETRY_S
    except ValueError:
        raise StorageError(f"{STORAGE_RETRY_ENV}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise StorageError(f"{STORAGE_RETRY_ENV} must be > 0, got {text}")
    return value


def gcs_filesystem() -> pafs.FileSystem:
    """A pyarrow GCS filesystem; anonymous against ``STORAGE_EMULATOR_HOST`` when that is set.

    Each call retries transient failures with back-off for at most :func:`storage_retry_s` (the setting
    travels with the filesystem when it is pickled to Ray workers), then fails: a storage outage ends a
    stage in a :class:`StorageError` within a bounded time, and the rerun resumes.
    """
    import datetime

    limit = datetime.timedelta(seconds=storage_retry_s())
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        scheme, _, host = emulator.rpartition("://")
        return pafs.GcsFileSystem(anonymous=True, endpoint_override=host, scheme=scheme or "http",
                                  retry_time_limit=limit)
    return pafs.GcsFileSystem(retry_time_limit=limit)


@dataclasses.dataclass(frozen=True)
class Location:
    """A file or folder in some filesystem.

    Attributes:
        fs: the pyarrow filesystem (pickles with its options: safe to send to Ray workers).
        path: the path inside ``fs``: absolute for local files, ``bucket/key`` for object stores.
        scheme: ``""`` for the local filesystem, else the URI scheme (``gs``).
    """

    fs: pafs.FileSystem
    path: str
    scheme: str = ""

    # --- naming -------------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return not self.scheme

    @property
    def uri(self) -> str:
        """The location as users write it: a local path or ``scheme://bucket/key``."""
        return self.path if self.is_local else f"{self.scheme}://{self.path}"

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:
        """Only local locations are paths; an object-store location used as a path is a bug, said loudly."""
        if not self.is_local:
            raise StorageError(f"{self.uri} is not a local path: read and write it through inpars_ray.io.storage")
        return self.path

    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    def join(self, *parts: str) -> Location:
        return dataclasses.replace(self, path=posixpath.join(self.path, *(str(p).strip("/") for p in parts)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        return dataclasses.replace(self, path=posixpath.dirname(self.path.rstrip("/")))

    def local_path(self) -> Path:
        """The local :class:`~pathlib.Path` of a local location."""
        return Path(os.fspath(self))

    def _failed(self, what: str, exc: OSError) -> StorageError:
        """The typed error of a storage call that failed (after the filesystem's own retries)."""
        retried = "" if self.is_local else \
            f" (after retrying for up to {storage_retry_s():g}s; {STORAGE_RETRY_ENV} sets how long)"
        return StorageError(f"could not {what} {self.uri}: {exc}{retried}")

    # --- queries ------------------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except (FileNotFoundError, NotADirectoryError):
            raise
        except OSError as exc:
            raise self._failed("look up", exc) from exc

    def _type(self) -> pafs.FileType:
        return self._info().type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        if self._type() == pafs.FileType.Directory:
            return True
        # object stores have no folders: a prefix with objects under it is one
        return not self.is_local and bool(self.files())

    def size(self) -> int:
        return int(self._info().size or 0)

    def files(self, recursive: bool = True, suffix: str = "") -> list[str]:
        """Names (relative to this folder, ``/``-separated) of the files under it, sorted; [] if none.

        Names starting with ``.`` (temporary files of unfinished local writes) are left out.
        """
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise self._failed("list", exc) from exc
        root = self.path.rstrip("/") + "/"
        out = []
        for info in infos:
            if info.type != pafs.FileType.File or not info.path.startswith(root):
                continue
            rel = info.path[len(root):]
            if any(part.startswith(".") for part in rel.split("/")) or not rel.endswith(suffix):
                continue
            out.append(rel)
        return sorted(out)

    # --- reading ------------------------------------------------------------------------------------
    def open_input(self) -> Any:
        """A seekable input file (what Parquet and CSV readers want)."""
        try:
            return self.fs.open_input_file(self.path)
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri} does not exist") from exc
        except OSError as exc:
            raise self._failed("read", exc) from exc

    def read_bytes(self) -> bytes:
        with self.open_input() as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    # --- writing ------------------------------------------------------------------------------------
    def mkdir(self) -> Location:
        """Create the folder (and its parents) where folders exist; object stores need none."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        return self

    @contextmanager
    def open_output(self) -> Iterator[Any]:
        """A stream whose bytes appear at this location only when the block exits without an error.

        Locally: a temporary file beside the target, renamed over it. Object stores: a single upload,
        which becomes visible only once complete (and is abandoned when the block raises).
        """
        if self.is_local:
            target = Path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with self.fs.open_output_stream(str(tmp)) as fh:
                    yield fh
                os.replace(tmp, target)
            except FileNotFoundError:
                raise
            except OSError as exc:  # e.g. no space left on the device
                raise self._failed("write", exc) from exc
            finally:
                tmp.unlink(missing_ok=True)
            return
        # An object appears only when its upload is finalised; a killed process never finalises it. pyarrow's
        # stream has no abort, and closing (which an error path cannot avoid) finalises: so delete it again.
        try:
            fh = self.fs.open_output_stream(self.path)
        except OSError as exc:
            raise self._failed("write", exc) from exc
        try:
            yield fh
        except BaseException:
            try:
                fh.close()
                self.fs.delete_file(self.path)
            except OSError:  # the store is unreachable: the error that got us here is the one to report
                pass
            raise
        try:
            fh.close()  # the upload happens (or completes) here
        except OSError as exc:
            raise self._failed("write", exc) from exc

    def write_bytes(self, data: bytes) -> None:
        with self.open_output() as fh:
            fh.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, payload: Any) -> None:
        self.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")

    def delete(self) -> None:
        """Remove this file or folder (with everything under it); nothing there is fine."""
        kind = self._type()
        if kind == pafs.FileType.File:
            self.fs.delete_file(self.path)
        elif kind == pafs.FileType.Directory or not self.is_local:
            try:
                self.fs.delete_dir(self.path)
            except (FileNotFoundError, OSError) as exc:
                if self.exists() or (not self.is_local and self.files()):
                    raise StorageError(f"could not delete {self.uri}: {exc}") from exc


PathLike = str | os.PathLike | Location


def location(where: PathLike) -> Location:
    """The :class:`Location` of a local path or a URI (``gs://bucket/key``, ``file:///...``).

    A path that looks like a URI that lost a slash (``gs:/bucket``, what ``pathlib.Path("gs://b")`` turns a
    URI into) is an error, never a local folder named ``gs:``.
    """
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    if not isinstance(text, str):
        raise StorageError(f"not a path or URI: {where!r}")
    scheme, sep, rest = text.partition("://")
    if sep and scheme and "/" not in scheme:
        if scheme == "file":
            return Location(pafs.LocalFileSystem(), str(Path(rest or "/").resolve()))
        if scheme == "gs":
            if not rest.strip("/"):
                raise StorageError(f"{text!r} names no bucket")
            return Location(gcs_filesystem(), rest.rstrip("/"), "gs")
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as exc:
            raise StorageError(f"cannot open {text!r}: {exc}") from exc
        if isinstance(fs, pafs.LocalFileSystem):
            return Location(fs, path)
        return Location(fs, path.rstrip("/"), scheme)
    first = PurePosixPath(text).parts[0] if text else ""
    if first.endswith(":") and len(first) > 2:  # "gs:", "s3:" (not a Windows drive letter)
        raise StorageError(f"{text!r} looks like a URI that lost a slash; write it as "
                           f"{first}//{text[len(first):].lstrip('/')}")
    return Location(pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()))


def join(where: PathLike, *parts: str) -> str:
    """``where`` with ``parts`` appended, as a URI string."""
    return location(where).join(*parts).uri


def exists(where: PathLike) -> bool:
    return location(where).exists()


def read_bytes(where: PathLike) -> bytes:
    return location(where).read_bytes()


def read_text(where: PathLike) -> str:
    return location(where).read_text()


def read_json(where: PathLike) -> Any:
    return location(where).read_json()


def write_bytes(where: PathLike, data: bytes) -> None:
    location(where).write_bytes(data)


def write_text(where: PathLike, text: str) -> None:
    location(where).write_text(text)


def write_json(where: PathLike, payload: Any) -> None:
    location(where).write_json(payload)


# --- many nodes ---------------------------------------------------------------------------------------
def shared_fs_declared() -> bool:
    return os.environ.get(SHARED_FS_ENV, "").strip().lower() in ("1", "true", "yes")


def alive_nodes() -> int:
    """Alive nodes of the Ray cluster this process is connected to (1 when Ray is not initialised)."""
    try:
        import ray
    except ImportError:
        return 1
    if not ray.is_initialized():
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_reachable(*places: PathLike, shared_fs: bool | None = None) -> None:
    """Fail at once when a local path is used on a Ray cluster of several nodes.

    Every node of a real cluster has its own disk: a stage that writes a local path on a worker node and
    reads it on the driver would fail half-way, or silently scatter its output. ``shared_fs`` (default:
    ``INPARS_RAY_SHARED_FS``) declares local paths to be on a disk every node mounts at the same place.
    """
    shared = shared_fs_declared() if shared_fs is None else shared_fs
    local = [location(p) for p in places if p is not None and location(p).is_local]
    if not local or shared:
        return
    nodes = alive_nodes()
    if nodes > 1:
        shown = ", ".join(loc.uri for loc in local)
        raise StorageError(
            f"{shown} is a local path, but the Ray cluster has {nodes} nodes, each with its own disk: use an "
            f"object store (--out-dir gs://bucket/prefix), or, if that path is a mount every node shares, "
            f"say so with --shared-fs (or {SHARED_FS_ENV}=1)")
