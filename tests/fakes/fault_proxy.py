"""A fault-injecting HTTP proxy for loopback tests of remote backends.

It sits in front of a real server (the tests use a vLLM OpenAI-compatible server) and, for requests to
chosen paths, fails a seeded fraction of them *before* they reach the upstream server: a 429 with
``Retry-After``, a 500, or a hang that outlasts the client's timeout and then drops the connection.
Every other request is forwarded unchanged.

The decision for a request depends only on ``(seed, prompt, attempt number of that prompt)``, never on
arrival order, so a run is reproducible under any client concurrency. Because faults happen before
forwarding, a correct client causes exactly one successful upstream request per prompt; the proxy counts
them (``upstream_ok``) so a test can check it.
"""
from __future__ import annotations

import collections
import hashlib
import http.client
import http.server
import json
import random
import threading
import urllib.parse

FAULT_KINDS = ("429", "500", "hang")


def fault_for(seed: int, fail_rate: float, kinds: tuple[str, ...], prompt: str, attempt: int) -> str | None:
    """The fault injected into ``attempt`` (0-based) of ``prompt`` under ``seed``, or ``None``."""
    rng = random.Random(hashlib.sha256(f"{seed}\0{attempt}\0{prompt}".encode()).digest())
    if rng.random() >= fail_rate:
        return None
    return rng.choice(kinds)


class FaultProxy:
    """Loopback proxy to ``upstream`` (``http://host:port``) that fails ``fail_rate`` of the requests.

    Args:
        upstream: root URL of the real server.
        fail_rate: probability that one attempt at a faulty path fails.
        seed: seed of the fault decisions.
        hang_s: how long a "hang" holds the connection before dropping it (make it exceed the client's
            timeout); ended early by :meth:`stop`.
        fault_paths: request paths subject to faults; other paths are always forwarded.
        kinds: fault kinds to draw from (``"429"``, ``"500"``, ``"hang"``).
        retry_after_ms: value of the ``retry-after-ms`` header sent with a 429 (``Retry-After`` carries
            the same wait rounded up to whole seconds, as the HTTP standard writes it).
    """

    def __init__(
        self,
        upstream: str,
        fail_rate: float = 0.3,
        seed: int = 0,
        hang_s: float = 3.0,
        fault_paths: tuple[str, ...] = ("/v1/completions",),
        kinds: tuple[str, ...] = FAULT_KINDS,
        retry_after_ms: int = 100,
    ) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.fail_rate = fail_rate
        self.seed = seed
        self.hang_s = hang_s
        self.fault_paths = fault_paths
        self.kinds = kinds
        self.retry_after_ms = retry_after_ms
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        #: attempts seen per prompt (faulty paths only)
        self.attempts: collections.Counter[str] = collections.Counter()
        #: injected faults by kind
        self.faults: collections.Counter[str] = collections.Counter()
        #: upstream answers with status 200 per prompt (faulty paths only)
        self.upstream_ok: collections.Counter[str] = collections.Counter()
        #: requests forwarded, by path
        self.forwarded: collections.Counter[str] = collections.Counter()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Root URL of the proxy (append ``/v1`` for an OpenAI client)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decide(self, prompt: str, attempt: int) -> str | None:
        """The fault for ``attempt`` (0-based) of ``prompt``, or ``None`` to forward it."""
        return fault_for(self.seed, self.fail_rate, self.kinds, prompt, attempt)

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                return

            def do_GET(self) -> None:
                proxy._forward(self, b"", None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urllib.parse.urlsplit(self.path).path
                if path not in proxy.fault_paths:
                    proxy._forward(self, body, None)
                    return
                try:
                    prompt = str(json.loads(body).get("prompt"))
                except (ValueError, AttributeError):
                    prompt = body.decode(errors="replace")
                with proxy._lock:
                    attempt = proxy.attempts[prompt]
                    proxy.attempts[prompt] += 1
                    fault = proxy.decide(prompt, attempt)
                    if fault:
                        proxy.faults[fault] += 1
                if fault == "429":
                    retry_s = -(-proxy.retry_after_ms // 1000)
                    proxy._reply(self, 429, b'{"error": {"message": "rate limited (injected)"}}',
                                 {"retry-after-ms": str(proxy.retry_after_ms), "Retry-After": str(retry_s)})
                elif fault == "500":
                    proxy._reply(self, 500, b'{"error": {"message": "internal error (injected)"}}', {})
                elif fault == "hang":
                    proxy._stopping.wait(proxy.hang_s)
                    self.close_connection = True  # drop it without an answer
                else:
                    proxy._forward(self, body, prompt)

        return Handler

    @staticmethod
    def _reply(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
               headers: dict[str, str]) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    def _forward(self, handler: http.server.BaseHTTPRequestHandler, body: bytes, prompt: str | None) -> None:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        with self._lock:
            self.forwarded[urllib.parse.urlsplit(handler.path).path] += 1
            if prompt is not None and resp.status == 200:
                self.upstream_ok[prompt] += 1
        handler.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


class EchoCompletionsServer:
    """A small deterministic OpenAI-style completions endpoint, for fast tests without vLLM.

    ``POST /v1/completions`` answers with a made-up completion derived from the prompt: the tokens
    ``["Q", "<n>", " about", " <last word of prompt>", "\\n", "tail"]`` with log-probs
    ``-0.1, -0.2, ...``; with ``stop=["\\n"]`` the text ends before the newline but, like vLLM, the
    newline-carrying token is still reported in ``logprobs``. ``POST /tokenize`` / ``/detokenize`` use
    one token per UTF-8 byte. A completion request whose ``Authorization`` header is not ``Bearer <api_key>``
    gets a 401 whose message quotes the key it received (as some providers do), so tests can check redaction.
    """

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.requests: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> EchoCompletionsServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="echo-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> EchoCompletionsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def completion_for(prompt: str) -> tuple[list[str], list[float]]:
        """The tokens and log-probs this server generates for ``prompt`` (before any stop)."""
        words = prompt.split()
        tokens = ["Q", str(len(prompt)), " about", f" {words[-1] if words else 'nothing'}", "\n", "tail"]
        return tokens, [-0.1 * (i + 1) for i in range(len(tokens))]

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                path = urllib.parse.urlsplit(self.path).path
                with server._lock:
                    server.requests[path] += 1
                auth = self.headers.get("Authorization", "")
                if path == "/v1/completions" and server.api_key is not None and auth != f"Bearer {server.api_key}":
                    msg = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"
                    FaultProxy._reply(self, 401, json.dumps({"error": {"message": msg}}).encode(), {})
                    return
                if path == "/tokenize":
                    ids = list(str(body["prompt"]).encode())
                    out = {"tokens": ids, "count": len(ids), "max_model_len": 4096}
                elif path == "/detokenize":
                    out = {"prompt": bytes(body["tokens"]).decode(errors="replace")}
                elif path == "/v1/completions":
                    out = server._complete(body)
                else:
                    FaultProxy._reply(self, 404, b'{"error": {"message": "not found"}}', {})
                    return
                FaultProxy._reply(self, 200, json.dumps(out).encode(), {})

        return Handler

    def _complete(self, body: dict) -> dict:
        prompt = str(body["prompt"])
        tokens, logprobs = self.completion_for(prompt)
        tokens = tokens[: int(body.get("max_tokens") or len(tokens))]
        logprobs = logprobs[: len(tokens)]
        text = "".join(tokens)
        stops = body.get("stop") or []
        for i, tok in enumerate(tokens):
            if any(s in tok for s in stops):
                text = "".join(tokens[:i]) + tok.split(stops[0])[0]
                tokens, logprobs = tokens[: i + 1], logprobs[: i + 1]
                break
        return {
            "id": "cmpl-echo",
            "object": "text_completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "finish_reason": "stop",
                    "logprobs": {
                        "tokens": tokens,
                        "token_logprobs": logprobs,
                        "top_logprobs": [{t: lp} for t, lp in zip(tokens, logprobs, strict=True)],
                        "text_offset": [0] * len(tokens),
                    },
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt.encode()),
                "completion_tokens": len(tokens),
                "total_tokens": len(prompt.encode()) + len(tokens),
            },
        }
