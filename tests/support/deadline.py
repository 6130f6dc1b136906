"""Run Python code in a child process with a deadline: a hang fails the test instead of hanging the suite.

The child starts its own local Ray (``RAY_ADDRESS=local``), so nothing is shared with the session's Ray;
past the deadline its whole process group (the child and the Ray processes it started) is killed. The
child prints one line ``RESULT <json>``, which is returned.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_child(code: str, argument: Any, deadline_s: float, what: str) -> Any:
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(argument)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"{what} did not end within {deadline_s}s (a run must end)") from None
    assert proc.returncode == 0, stderr[-4000:]
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    assert line, stderr[-4000:]
    return json.loads(line[-1][len("RESULT "):])
