"""Secrets: a sentinel API key and a sentinel password in the endpoint URL reach no file, log or message.

``inpars-ray generate`` runs with the openai backend against a loopback OpenAI-style endpoint
(tests/fakes/fault_proxy.py), its own Ray in a temporary folder, and both secrets set. Afterwards every
byte the run left behind -- the output folder (parts, manifest, run.json), the run log, Ray's session logs,
the command's stdout and stderr -- is searched for either sentinel, and for the Basic credential the HTTP
client derives from the URL (base64 of ``user:password``), which some providers quote back in a 401.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from inpars_ray.testing.tiny_lm import tiny_lm_path
from tests.fakes.fault_proxy import EchoCompletionsServer

KEY = "sk-SENTINELKEY-5f0c9a7e"
PASSWORD = "SENTINELPW-2b7d41"
SECRETS = (KEY, PASSWORD, base64.b64encode(f"user:{PASSWORD}".encode()).decode())


@pytest.fixture()
def ray_tmp():
    """A short private Ray temp folder (Unix socket paths must stay under 108 bytes)."""
    path = tempfile.mkdtemp(prefix="rsec", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def _generate(out: Path, base_url: str, ray_tmp: Path, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INPARS_RAY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "",
           "RAY_TMPDIR": str(ray_tmp), "SECRET_KEY_VAR": KEY}
    cmd = [sys.executable, "-m", "inpars_ray", "generate", "--dataset", "bundled/tiny-science", "--backend", "openai",
           "--model", "echo", "--prompt", "inpars", "--num-docs", "4", "--out", str(out), "--num-cpus", "2",
           "--backend-option", f"base_url={base_url}", "--backend-option", "api_key_env=SECRET_KEY_VAR",
           *(x for o in options for x in ("--backend-option", o))]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _leaks(*places: Path, texts: tuple[str, ...] = ()) -> list[str]:
    """Where a secret appears: files under ``places`` (binary-safe) and the given texts."""
    found = []
    for place in places:
        for f in [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file()):
            data = f.read_bytes()
            found += [f"{f}: {s}" for s in SECRETS if s.encode() in data]
    for i, text in enumerate(texts):
        found += [f"text {i}: {s}" for s in SECRETS if s in text]
    return found


def test_no_secret_in_any_output_of_a_successful_run(tmp_path, ray_tmp):
    with EchoCompletionsServer(api_key=None) as server:  # accepts any credential
        url = server.url.replace("http://", f"http://user:{PASSWORD}@") + "/v1"
        done = _generate(tmp_path / "gen", url, ray_tmp)  # tokenizer=server: /tokenize with the URL's credentials
        assert done.returncode == 0, done.stderr[-3000:]
        assert server.requests["/v1/completions"] == 4
    assert (tmp_path / "gen" / "manifest.json").is_file()
    rows = pq.read_table(tmp_path / "gen" / "parts").to_pylist()
    assert len(rows) == 4 and all(r["error"] is None for r in rows), rows
    assert not _leaks(tmp_path, ray_tmp, texts=(done.stdout, done.stderr))


def test_no_secret_when_the_endpoint_refuses_the_credentials(tmp_path, ray_tmp):
    """A 401 whose body quotes the credential received (as some providers do) becomes an error row; the
    quoted credential is scrubbed from the row, the manifest and the logs."""
    with EchoCompletionsServer(api_key="another-key") as server:
        url = server.url.replace("http://", f"http://user:{PASSWORD}@") + "/v1"
        done = _generate(tmp_path / "gen", url, ray_tmp, f"tokenizer={tiny_lm_path()}")
        assert done.returncode == 0, done.stderr[-3000:]  # backend errors are rows, retried by a rerun
    rows = pq.read_table(tmp_path / "gen" / "parts").to_pylist()
    assert rows and all("401" in (r["error"] or "") for r in rows), rows
    assert not _leaks(tmp_path, ray_tmp, texts=(done.stdout, done.stderr))


def test_no_secret_in_the_error_of_a_failed_command(tmp_path, ray_tmp):
    """An endpoint without the server tokenizer routes: the command fails with a ConfigError that names the
    endpoint -- without its password. (Exit 1, not 2: raised in a Ray Data actor's constructor, the error
    reaches the driver without its type; the traceback is printed, redacted.)"""
    with EchoCompletionsServer(api_key=None) as server:
        url = server.url.replace("http://", f"http://user:{PASSWORD}@") + "/v2"  # /v2/tokenize: 404
        done = _generate(tmp_path / "gen", url, ray_tmp)
    assert done.returncode != 0, done.stderr[-3000:]
    assert "tokenize" in done.stderr and "user:***@127.0.0.1" in done.stderr, done.stderr[-3000:]
    assert not _leaks(tmp_path, ray_tmp, texts=(done.stdout, done.stderr))
