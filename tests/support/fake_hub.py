"""A loopback stand-in for the Hugging Face Hub's HTTP API, enough for huggingface_hub's real client to create a
repository, upload a folder (README validation, pre-upload, one commit) and download a dataset file.

It records every request (method, path, headers, body); files put in ``files`` are served by ``resolve``.
Used through ``HF_ENDPOINT``, which the code under test reads when it calls the client.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "c0ffee" + "0" * 34


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class FakeHub:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    #: (repo type + "s/" + repo id, path in repo) -> content, served under /{type}s/{repo}/resolve/{rev}/{path}
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def find(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    def committed(self) -> dict[str, bytes]:
        """path in repo -> content of every file the commits carried (NDJSON lines, base64 content)."""
        import base64

        out = {}
        for req in self.find("POST", r"/api/models/.+/commit/.+"):
            for line in req.body.splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    out[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
        return out


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _reply(self, code: int, payload: bytes = b"", headers: dict[str, str] | None = None,
                   content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _json(self, obj) -> None:
            self._reply(200, json.dumps(obj).encode())

        def _any(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(size) if size else b""
            hub.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            base = f"http://{self.headers['Host']}"
            if self.path == "/api/repos/create":
                req = json.loads(body)
                return self._json({"url": f"{base}/{req.get('organization')}/{req['name']}"})
            if self.path == "/api/validate-yaml":
                return self._json({"warnings": []})
            if m := re.fullmatch(r"/api/models/(.+)/preupload/(.+)", self.path):
                files = json.loads(body)["files"]  # everything as a regular file: no LFS or Xet transfer here
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                             for f in files]})
            if m := re.fullmatch(r"/api/models/(.+)/commit/(.+)", self.path):
                return self._json({"commitUrl": f"{base}/{m[1]}/commit/{COMMIT}", "commitOid": COMMIT,
                                   "pullRequestUrl": None})
            if m := re.fullmatch(r"/(datasets|models|spaces)/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path):
                content = hub.files.get((f"{m[1]}/{m[2]}", m[4]))
                if content is not None:
                    etag = hashlib.sha1(content).hexdigest()
                    return self._reply(200, content, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'},
                                       "application/octet-stream")
                return self._reply(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})
            return self._reply(404, b'{"error": "not here"}')

        do_GET = do_POST = do_HEAD = do_PUT = _any

    return Handler


@contextmanager
def fake_hub() -> Iterator[FakeHub]:
    """A started :class:`FakeHub` on a free loopback port; stopped on exit."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
