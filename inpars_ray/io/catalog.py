"""Resolve a dataset spec to a BEIR-layout collection: a local folder, ``beir/<name>``, ``irds:<id>`` or ``gs://...``.

A BEIR-layout collection holds ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``.

* A local folder is used in place.
* ``beir/<name>`` is downloaded from the public BEIR site into a cache folder, verified against the md5
  the BEIR authors publish, and unpacked. The download resumes from a ``.part`` file with an HTTP Range
  request; the folder appears under its final name only once verified and fully unpacked, so a cache
  folder is never half-written. CQADupStack's zip holds one collection per StackExchange forum:
  ``beir/cqadupstack/<forum>`` is that forum's folder (BEIR reports the mean over the 12 forums).
* ``irds:<id>`` (an ir_datasets id, e.g. ``irds:beir/scifact/test``) is written once into BEIR-layout
  files in the cache folder (:mod:`inpars_ray.io.irds`).
* ``gs://bucket/prefix`` is read in place through a pyarrow filesystem; ``STORAGE_EMULATOR_HOST`` (the
  variable google-cloud-storage honours) points it at an emulator.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from inpars_ray.errors import CollectionError, DownloadError
from inpars_ray.io.storage import gcs_filesystem  # noqa: F401 - one place reaches gs:// (re-exported)

logger = logging.getLogger(__name__)

BEIR_BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"

#: md5 of each public BEIR zip, as published in the BEIR README's dataset table (beir-cellar/beir).
BEIR_MD5: dict[str, str] = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}

#: CQADupStack's forums: its zip unpacks into ``cqadupstack/<forum>/``, one BEIR-layout collection each
CQADUPSTACK_FORUMS = ("android", "english", "gaming", "gis", "mathematica", "physics", "programmers", "stats",
                      "tex", "unix", "webmasters", "wordpress")
#: BEIR collections that need a licence (no public zip): build them as BEIR's authors describe and pass the
#: folder as the dataset spec
LICENSED = ("bioasq", "signal1m", "trec-news", "robust04")

#: The collection bundled with the package, for tests and the demo (see its PROVENANCE.md).
BUNDLED_SPEC = "bundled/tiny-science"
BUNDLED_ROOT = Path(__file__).resolve().parents[1] / "data" / "collections" / "tiny-science"


@dataclasses.dataclass(frozen=True)
class ZipSource:
    """A zipped BEIR-layout collection on the web.

    Attributes:
        name: the collection's name, also the folder the zip unpacks to.
        url: where the zip is.
        md5: hex md5 of the whole zip; a download that does not match is discarded.
    """

    name: str
    url: str
    md5: str


def beir_source(name: str, base_url: str | None = None) -> ZipSource:
    """The :class:`ZipSource` of a public BEIR dataset; ``INPARS_RAY_BEIR_URL`` overrides the site."""
    if name not in BEIR_MD5:
        raise CollectionError(
            f"unknown BEIR dataset {name!r}; public ones are {sorted(BEIR_MD5)} "
            f"({', '.join(LICENSED)} need licences: build them locally and pass the folder)"
        )
    base = (base_url or os.environ.get("INPARS_RAY_BEIR_URL") or BEIR_BASE_URL).rstrip("/")
    return ZipSource(name=name, url=f"{base}/{name}.zip", md5=BEIR_MD5[name])


def default_cache_dir() -> Path:
    """``$INPARS_RAY_CACHE`` or ``~/.cache/inpars-ray``."""
    return Path(os.environ.get("INPARS_RAY_CACHE", Path.home() / ".cache" / "inpars-ray"))


@dataclasses.dataclass(frozen=True)
class Collection:
    """A resolved BEIR-layout collection.

    Attributes:
        spec: the spec it was resolved from (recorded in manifests).
        root: the folder, as a path inside ``filesystem`` (no ``gs://`` scheme).
        filesystem: the pyarrow filesystem ``root`` lives in.
        source: where a built collection came from, for the run's manifest (``irds:``: the resolved ids,
            split and ir_datasets version), or None.
    """

    spec: str
    root: str
    filesystem: pafs.FileSystem
    source: dict[str, Any] | None = dataclasses.field(default=None, compare=False)

    @property
    def name(self) -> str:
        """The collection's short name (``beir/scifact`` and ``irds:beir/scifact/test`` -> ``scifact``)."""
        ident = (self.source or {}).get("ids", {}).get("docs") or self.spec
        return ident.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def display(self, *parts: str) -> str:
        """A path for messages: with the ``gs://`` scheme for remote files."""
        p = self.path(*parts)
        return p if self.is_local else f"{self.filesystem.type_name}://{p}"

    def corpus_path(self) -> str:
        return self.path("corpus.jsonl")

    def queries_path(self) -> str:
        return self.path("queries.jsonl")

    def qrels_path(self, split: str) -> str:
        return self.path("qrels", f"{split}.tsv")

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type == pafs.FileType.File

    def check_layout(self, split: str | None = None) -> None:
        """Raise :class:`CollectionError` naming every BEIR file the collection lacks."""
        needed = [self.corpus_path(), self.queries_path()]
        if split is not None:
            needed.append(self.qrels_path(split))
        missing = [p for p in needed if not self.exists(p)]
        if missing:
            shown = ", ".join(p if self.is_local else f"gs://{p}" for p in missing)
            raise CollectionError(f"collection {self.spec!r} is not in BEIR layout: missing {shown}")


def resolve(spec: str, cache_dir: str | os.PathLike[str] | None = None) -> Collection:
    """Resolve a dataset spec (folder, ``beir/<name>``, ``beir/cqadupstack/<forum>``, ``irds:<id>``,
    ``bundled/tiny-science``, ``builtin/python-docstrings``, ``builtin/man-pages`` or ``gs://...``)."""
    if spec.startswith("gs://"):
        return Collection(spec=spec, root=spec[len("gs://"):].rstrip("/"), filesystem=gcs_filesystem())
    if spec == BUNDLED_SPEC:
        return Collection(spec=spec, root=str(BUNDLED_ROOT), filesystem=pafs.LocalFileSystem())
    if spec == "builtin/python-docstrings":  # built at first use from this Python's standard library
        from inpars_ray.io import stdlib_docs

        root = stdlib_docs.ensure(Path(cache_dir) if cache_dir else default_cache_dir())
        return Collection(spec=spec, root=str(root), filesystem=pafs.LocalFileSystem())
    if spec == "builtin/man-pages":  # built at first use from this machine's manual pages (/usr/share/man)
        from inpars_ray.io import man_pages

        root = man_pages.ensure(Path(cache_dir) if cache_dir else default_cache_dir())
        return Collection(spec=spec, root=str(root), filesystem=pafs.LocalFileSystem())
    if spec.startswith("irds:"):  # materialised on this process (the driver), once per id, in the cache
        from inpars_ray.io import irds

        root, manifest = irds.ensure(spec, Path(cache_dir) if cache_dir else default_cache_dir())
        return Collection(spec=spec, root=str(root), filesystem=pafs.LocalFileSystem(),
                          source=irds.provenance(manifest))
    if spec.startswith("beir/"):
        name, _, forum = spec[len("beir/"):].strip("/").partition("/")
        if name == "cqadupstack" and forum not in CQADUPSTACK_FORUMS:
            raise CollectionError(f"{spec!r}: CQADupStack is one collection per forum; name one as "
                                  f"beir/cqadupstack/<forum>, <forum> one of {', '.join(CQADUPSTACK_FORUMS)}")
        if forum and name != "cqadupstack":
            raise CollectionError(f"{spec!r}: only beir/cqadupstack has sub-collections")
        root = download(beir_source(name), Path(cache_dir) if cache_dir else default_cache_dir())
        return Collection(spec=spec, root=str(root / forum if forum else root), filesystem=pafs.LocalFileSystem())
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise CollectionError(
            f"dataset spec {spec!r} is neither a folder, 'beir/<name>', 'irds:<id>', '{BUNDLED_SPEC}' nor "
            "'gs://bucket/prefix'"
        )
    return Collection(spec=spec, root=str(path.resolve()), filesystem=pafs.LocalFileSystem())


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()  # noqa: S324 - BEIR publishes md5; used for integrity, not security
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part``, resuming with a Range request where it already has bytes."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
            if have and response.status != 206:
                logger.info("server ignored the Range request; restarting %s from byte 0", url)
                have = 0
            total = response.headers.get("Content-Length")
            logger.info("downloading %s from byte %d (%s more bytes)", url, have, total or "unknown")
            with part.open("ab" if have else "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
            got = part.stat().st_size - have
            if total is not None and got < int(total):
                raise DownloadError(f"download of {url} stopped after {part.stat().st_size} bytes "
                                    f"({got} of {total} in this attempt); rerun to resume")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file already holds the whole object
            return
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise DownloadError(f"download of {url} failed after {part.stat().st_size if part.exists() else 0} "
                            f"bytes: {exc}; rerun to resume") from exc


def download(source: ZipSource, cache_dir: Path, timeout: float = 60.0) -> Path:
    """Download, verify and unpack ``source`` into ``cache_dir/<name>``; return that folder.

    The zip goes to ``<name>.zip.part`` first; a rerun after an interruption resumes it. A finished
    download whose md5 does not match is deleted and reported; the next run starts afresh.
    """
    if not source.url.startswith(("http://", "https://")):
        raise DownloadError(f"only http(s) downloads are supported, not {source.url!r}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / source.name
    stamp = final / ".inpars-ray-verified"
    if stamp.exists() and stamp.read_text().strip() == source.md5:
        return final
    part = cache_dir / f"{source.name}.zip.part"
    _fetch(source.url, part, timeout)
    got = _md5_of(part)
    if got != source.md5:
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {source.url}: md5 {got}, expected {source.md5}; the bad download was deleted"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{source.name}.", dir=cache_dir))
    try:
        with zipfile.ZipFile(part) as archive:
            for member in archive.namelist():
                target = (staging / member).resolve()
                if not str(target).startswith(str(staging.resolve())):
                    raise DownloadError(f"{source.url}: zip member {member!r} escapes the target folder")
            archive.extractall(staging)
        # BEIR zips hold one top folder named like the dataset; accept a flat zip too
        inner = staging / source.name
        unpacked = inner if inner.is_dir() else staging
        (unpacked / stamp.name).write_text(source.md5 + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(unpacked, final)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{source.url}: not a valid zip ({exc})") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    part.unlink()
    logger.info("collection %s ready in %s", source.name, final)
    return final
