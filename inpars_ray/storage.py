"""Storage: every artifact of a run is read and written through here; a run root is a URI.

A run root is a local folder or an object-store URI such as ``gs://bucket/prefix`` (any scheme
:func:`pyarrow.fs.FileSystem.from_uri` knows). ``gs://`` goes through pyarrow's ``GcsFileSystem``;
``STORAGE_EMULATOR_HOST`` (the variable google-cloud-storage honours) points it at an emulator. A
:class:`Location` carries its filesystem object, which pickles with its options, so a location handed to a
Ray actor on another node reaches the same bucket (or emulator) without that node's environment.

**Publishing without rename.** Object stores have no rename, so nothing here relies on one:

* one object is written whole or not at all: locally through a temporary name and ``os.replace``; on an
  object store by one upload, which the store makes visible only when it completes;
* artifacts that take many objects (Parquet parts, an index) get write-once names, and the stage's
  manifest, written *last*, lists them (:func:`snapshot`): it is the commit marker. Readers take only the
  files a complete manifest lists (:func:`listed_files`), so a killed writer leaves nothing a rerun
  mistakes for done, and a stray part of a dead attempt is never read.

**Many nodes.** A local path means a different disk on every node of a real cluster. :func:`check_reachable`
fails at once, before any work, when a stage is given one on a multi-node Ray cluster, unless the user says
the path is a shared mount (``INPARS_RAY_SHARED_FS=1`` or ``--shared-fs``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Union

import pyarrow.fs as pafs

from inpars_ray.errors import StorageError

logger = logging.getLogger(__name__)

#: environment variable that declares local paths to be on a disk every node shares (NFS, Filestore...)
SHARED_FS_ENV = "INPARS_RAY_SHARED_FS"


def gcs_filesystem() -> pafs.FileSystem:
    """A pyarrow GCS filesystem; anonymous against ``STORAGE_EMULATOR_HOST`` when that is set."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        scheme, _, host = emulator.rpartition("://")
        return pafs.GcsFileSystem(anonymous=True, endpoint_override=host, scheme=scheme or "http")
    return pafs.GcsFileSystem()


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
            raise StorageError(f"{self.uri} is not a local path: read and write it through inpars_ray.storage")
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

    # --- queries ------------------------------------------------------------------------------------
    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

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
        return int(self.fs.get_file_info(self.path).size or 0)

    def files(self, recursive: bool = True, suffix: str = "") -> list[str]:
        """Names (relative to this folder, ``/``-separated) of the files under it, sorted; [] if none.

        Names starting with ``.`` (temporary files of unfinished local writes) are left out.
        """
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
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
            finally:
                tmp.unlink(missing_ok=True)
            return
        # An object appears only when its upload is finalised; a killed process never finalises it. pyarrow's
        # stream has no abort, and closing (which an error path cannot avoid) finalises: so delete it again.
        fh = self.fs.open_output_stream(self.path)
        try:
            yield fh
        except BaseException:
            fh.close()
            self.fs.delete_file(self.path)
            raise
        fh.close()

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


PathLike = Union[str, os.PathLike, Location]


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


def ray_io(where: PathLike) -> dict[str, Any]:
    """Keyword arguments that point a Ray Data reader or writer at ``where``: ``paths``/``path`` is the
    caller's, this gives ``filesystem`` (use with :attr:`Location.path`)."""
    return {"filesystem": location(where).fs}


# --- folders ------------------------------------------------------------------------------------------
def upload_dir(local_dir: str | os.PathLike[str], dest: PathLike) -> list[str]:
    """Copy a local folder's files under ``dest``; returns their relative names.

    Each file is one upload (or one atomic local write), so a reader that goes by a manifest written after
    this returns never sees a partial file.
    """
    src = Path(local_dir)
    dst = location(dest)
    names = sorted(str(p.relative_to(src).as_posix()) for p in src.rglob("*") if p.is_file())
    for name in names:
        with (src / name).open("rb") as fh, dst.join(name).open_output() as out:
            shutil.copyfileobj(fh, out, length=1 << 22)
    return names


def download_dir(source: PathLike, local_dir: str | os.PathLike[str], names: list[str] | None = None) -> Path:
    """Copy the files under ``source`` (or only ``names``, relative to it) into ``local_dir``.

    The copy lands in a temporary folder beside ``local_dir`` and is renamed into place when complete, so
    ``local_dir`` is either absent or whole. An existing ``local_dir`` is replaced.
    """
    src = location(source)
    target = Path(local_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    names = src.files() if names is None else names
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name in names:
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with src.join(name).open_input() as fh, dest.open("wb") as out:
                shutil.copyfileobj(fh, out, length=1 << 22)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --- node-local copies ------------------------------------------------------------------------------
def node_cache_dir() -> Path:
    """Where a node keeps local copies of published artifacts: ``$INPARS_RAY_NODE_CACHE`` or
    ``~/.cache/inpars-ray/artifacts``."""
    return Path(os.environ.get("INPARS_RAY_NODE_CACHE", Path.home() / ".cache" / "inpars-ray" / "artifacts"))


def materialize(source: PathLike, files: dict[str, int] | None = None, key: str | None = None,
                cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local folder holding the published folder ``source``: for actors that need real files (a Lucene
    index, a model) on whichever node they run.

    A local ``source`` is returned as it is (one node, or a shared mount). An object-store ``source`` is
    copied once per node into ``cache_dir/<key>`` and reused by every later caller on that node; ``files``
    (``{relative name: size}``, the manifest's list; default: every file under ``source``) are the ones
    copied, and ``key`` (default: a hash of the URI and that list) names the copy, so a republished artifact
    gets a fresh copy. A copy is verified (every listed file, with its size) before it is used; concurrent
    callers on one node each download to a private folder and the first rename wins. With no ``files``, a
    ``manifest.json`` in ``source`` that lists files (see :func:`publish_dir`) decides what is copied.
    """
    import hashlib

    src = location(source)
    if src.is_local:
        return Path(src.path)
    if files is None:
        published = src.join("manifest.json")
        if published.is_file() and "files" in (payload := published.read_json()):
            files = payload["files"]  # what the publisher listed: never a stray file of a killed attempt
            key = key or hashlib.sha256(published.read_bytes()).hexdigest()[:20]
        else:
            files = {name: src.join(name).size() for name in src.files()}
    if not files:
        raise StorageError(f"{src.uri} holds no files to copy")
    key = key or hashlib.sha256(json.dumps([src.uri, sorted(files.items())]).encode()).hexdigest()[:20]
    target = Path(cache_dir) if cache_dir else node_cache_dir()
    final = target / key

    def whole(folder: Path) -> bool:
        return all((folder / n).is_file() and (folder / n).stat().st_size == int(size) for n, size in files.items())

    if final.is_dir() and whole(final):
        return final
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target))
    try:
        for name in sorted(files):
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with src.join(name).open_input() as fh, dest.open("wb") as out:
                shutil.copyfileobj(fh, out, length=1 << 22)
        if not whole(staging):
            raise StorageError(f"the copy of {src.uri} does not match its manifest (sizes differ)")
        try:
            os.replace(staging, final)  # atomic; fails if another caller's complete copy is already there
        except OSError:
            if not (final.is_dir() and whole(final)):
                shutil.rmtree(final, ignore_errors=True)
                os.replace(staging, final)
        logger.info("copied %s (%d files) to %s", src.uri, len(files), final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_dir(local_dir: str | os.PathLike[str], dest: PathLike, manifest: dict[str, Any] | None = None,
                name: str = "manifest.json") -> dict[str, Any]:
    """Publish a local folder (a model, an index) at ``dest``: upload its files, then write a manifest that
    lists them (``files``), last. Returns that manifest. A local ``dest`` equal to ``local_dir`` only gets
    the manifest."""
    dst = location(dest)
    src = Path(local_dir)
    if not (dst.is_local and Path(dst.path) == src.resolve()):
        dst.delete()
        upload_dir(src, dst)
    payload = {**(manifest or {}), "files": snapshot(dst)}
    payload["files"].pop(name, None)
    dst.join(name).write_json(payload)
    return payload


# --- write-once publishing ----------------------------------------------------------------------------
def attempt_id() -> str:
    """A fresh id for one attempt at writing an artifact: write-once names carry it."""
    return uuid.uuid4().hex[:12]


def snapshot(root: PathLike, *subdirs: str) -> dict[str, int]:
    """``{relative name: size}`` of every file under ``root``'s ``subdirs`` (all of ``root`` when none):
    what a manifest lists so that readers take exactly these files."""
    loc = location(root)
    out: dict[str, int] = {}
    for sub in subdirs or ("",):
        base = loc.join(sub) if sub else loc
        info = loc.fs.get_file_info(base.path)
        if info.type == pafs.FileType.File:
            out[sub] = int(info.size or 0)
            continue
        try:
            infos = loc.fs.get_file_info(pafs.FileSelector(base.path, recursive=True, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            continue
        prefix = loc.path.rstrip("/") + "/"
        for info in infos:
            rel = info.path[len(prefix):] if info.path.startswith(prefix) else None
            if info.type == pafs.FileType.File and rel and not any(p.startswith(".") for p in rel.split("/")):
                out[rel] = int(info.size or 0)
    return dict(sorted(out.items()))


def listed_files(root: PathLike, manifest: dict[str, Any], subdir: str = "") -> list[Location]:
    """The files a manifest lists (``manifest["files"]``) under ``subdir`` of ``root``, as locations.

    A listed file that is missing or has another size is an error: the artifact was tampered with or
    half-deleted, and must not be read as complete.
    """
    loc = location(root)
    listed = manifest.get("files")
    if listed is None:
        raise StorageError(f"the manifest in {loc.uri} lists no files (written by an older inpars-ray?); "
                           "rerun the stage")
    prefix = subdir.strip("/") + "/" if subdir else ""
    out = []
    for name, size in sorted(listed.items()):
        if not name.startswith(prefix):
            continue
        f = loc.join(name)
        info = loc.fs.get_file_info(f.path)
        if info.type != pafs.FileType.File or int(info.size or 0) != int(size):
            raise StorageError(f"{f.uri} is listed in {loc.uri}'s manifest but is missing or changed")
        out.append(f)
    return out


def remove_unlisted(root: PathLike, manifest: dict[str, Any] | None, *subdirs: str) -> int:
    """Delete files under ``subdirs`` of ``root`` that ``manifest`` does not list (leftovers of a killed
    attempt); returns how many. Only for a stage about to rewrite its folder."""
    loc = location(root)
    keep = set((manifest or {}).get("files", {}))
    gone = 0
    for name in snapshot(loc, *subdirs):
        if name not in keep:
            loc.join(name).delete()
            gone += 1
    return gone


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


#: part files one read task takes (parts are small: one per generate batch or Ray Data write task)
FILES_PER_READ_TASK = 32


def _read_parquet_group(files: list[Location]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        with f.open_input() as fh:
            tables.append(pq.read_table(fh))
    return pa.concat_tables(tables, promote_options="default")


def read_parquet_dataset(files: list[Location]) -> Any:
    """A Ray Dataset of published Parquet part files, read whole by Ray tasks (a group of files per task)
    on whichever nodes run them, through each file's own filesystem (local or ``gs://``).

    Ray Data's ``read_parquet`` took 3.9 to 6.6 s to read one 100,000-row file of generated queries that
    pyarrow reads in 0.1 s (Ray 2.60, ``ReadFilesParquetV2``; measured with the filter benchmark's rows).
    The artifacts read here are many small parts, so a task per group of files is parallel enough.
    """
    import ray

    if not files:
        raise StorageError("no Parquet files to read")
    read = ray.remote(_read_parquet_group)
    groups = [files[i:i + FILES_PER_READ_TASK] for i in range(0, len(files), FILES_PER_READ_TASK)]
    return ray.data.from_arrow_refs([read.remote(g) for g in groups])
