"""Artifacts of many files: published without rename, read only as their manifest lists them.

Object stores have no rename, so nothing here relies on one. Artifacts that take many objects (Parquet
parts, an index, a model) get write-once names, and the stage's manifest, written *last*, lists them
(:func:`snapshot`): it is the commit marker. Readers take only the files a complete manifest lists
(:func:`listed_files`), so a killed writer leaves nothing a rerun mistakes for done, and a stray part of a
dead attempt is never read. Actors that need real files copy a published folder once per node
(:func:`materialize`); Parquet parts are read by Ray tasks through pyarrow (:func:`read_parquet_dataset`), or
on the driver as one table (:func:`read_parquet_table`).
Single objects and locations live in :mod:`inpars_ray.io.storage`.

**Damage.** A manifest lists each file's size: a missing or truncated file is found before any read
(:func:`listed_files`). Every Parquet file the engine writes carries a CRC32 per page
(:data:`PARQUET_WRITE`), checked on every read (:func:`read_parquet`): damage that keeps a file's size,
which pyarrow would otherwise read as wrong rows without a word, is an :class:`ArtifactDamagedError`
naming the file, and the manifest that listed it is marked ``damaged`` (:func:`damaged`), so the next run
redoes the stage that wrote it instead of reading the file again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from inpars_ray.errors import ArtifactDamagedError, StorageError
from inpars_ray.io.storage import Location, PathLike, location

logger = logging.getLogger(__name__)


#: keyword arguments of every Parquet write of the engine (pyarrow's writers and Ray Data's write_parquet)
PARQUET_WRITE: dict[str, Any] = {"write_page_checksum": True}


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
    wanted = {name: int(size) for name, size in listed.items() if name.startswith(prefix)}
    if not wanted:
        return []
    try:  # one listing per top-level folder (or one look-up per top-level file), not one call per file
        present = snapshot(loc, *sorted({name.split("/")[0] for name in wanted}))
    except OSError as exc:  # the store does not answer: an outage, not a damaged artifact
        raise StorageError(f"could not list {loc.uri}: {exc}") from exc
    for name, size in sorted(wanted.items()):
        if present.get(name) != size:
            raise ArtifactDamagedError(f"{loc.join(name).uri} is listed in {loc.uri}'s manifest but is missing "
                                       f"or changed (size {present.get(name)}, listed {size})")
    return [loc.join(name) for name in sorted(wanted)]


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


#: part files one read task takes (parts are small: one per generate batch or Ray Data write task)
FILES_PER_READ_TASK = 32


def damaged(f: Location, why: str) -> ArtifactDamagedError:
    """The error for a damaged file ``f``; first marks the manifest that lists it (in its folder or up to
    two above) ``damaged``, so that its stage is redone on the next run rather than read as complete."""
    from inpars_ray.io.manifest import MANIFEST_NAME, read_manifest, write_json_atomic

    marked = ""
    root = f.parent
    for _ in range(3):
        if not root.path.strip("/"):
            break
        manifest = read_manifest(root)
        rel = f.path[len(root.path.rstrip("/")) + 1:]
        if manifest and rel in manifest.get("files", {}):
            manifest.update(status="damaged", damaged=sorted({*manifest.get("damaged", []), rel}))
            write_json_atomic(root.join(MANIFEST_NAME), manifest)
            marked = f"; {root.join(MANIFEST_NAME).uri} is marked damaged: the next run redoes its {manifest.get('stage')} stage"
            break
        if root.parent.path == root.path:
            break
        root = root.parent
    logger.error("%s is damaged (%s)%s", f.uri, why, marked)
    return ArtifactDamagedError(f"{f.uri} is damaged ({why}){marked}")


def read_parquet(f: Location, **kwargs: Any) -> Any:
    """One Parquet file of an artifact, read whole (``kwargs``: ``columns``, ``schema``...) with its page
    checksums verified: a damaged file raises :func:`damaged`'s error, never returns wrong rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with f.open_input() as fh:
            return pq.read_table(fh, page_checksum_verification=True, **kwargs)
    except pa.ArrowInvalid as exc:  # no readable footer or pages: cut short or overwritten
        raise damaged(f, str(exc)) from exc
    except OSError as exc:
        if "checksum" not in str(exc).lower():
            raise
        raise damaged(f, str(exc)) from exc


def read_parquet_table(files: list[Location], **kwargs: Any) -> Any:
    """The Parquet files of an artifact (e.g. :func:`listed_files`) as one table, each file read by
    :func:`read_parquet` (``kwargs``: ``columns``...): page checksums verified, a damaged file an
    :class:`ArtifactDamagedError` naming it."""
    import pyarrow as pa

    if not files:
        raise StorageError("no Parquet files to read")
    return pa.concat_tables([read_parquet(f, **kwargs) for f in files], promote_options="default")


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
    read = ray.remote(read_parquet_table)
    groups = [files[i:i + FILES_PER_READ_TASK] for i in range(0, len(files), FILES_PER_READ_TASK)]
    return ray.data.from_arrow_refs([read.remote(g) for g in groups])
