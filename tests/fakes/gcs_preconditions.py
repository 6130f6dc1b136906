"""A loopback proxy in front of gcp-storage-emulator that enforces Cloud Storage's generation preconditions.

gcp-storage-emulator (2026.7) ignores ``ifGenerationMatch`` and its kin: a create-only upload
(``ifGenerationMatch=0``) of an object that exists succeeds and replaces it, and a delete conditioned on a
generation deletes whatever is there. Cloud Storage checks the precondition and applies the write as one
atomic step, and answers 412 when it does not hold. This proxy forwards every request to the emulator
unchanged, and in its answers puts its own address for the emulator's in the links the emulator writes
(``mediaLink``, a resumable session's ``Location``), so clients keep going through it even for objects written
straight to the emulator. For the writes that carry a precondition it looks up the object's current
generation at the emulator and forwards the write only if the precondition holds, both under one lock per
object, so check and write are one step as on Cloud Storage:

* uploads, ``POST /upload/storage/v1/b/<bucket>/o``: ``uploadType=media`` (name in the query),
  ``multipart`` (name in the JSON metadata part: what google-cloud-storage sends for data up to 8 MiB, as
  ``Blob.upload_from_string``) and ``resumable`` (checked when the session is opened and again, atomically,
  on the request that completes it, whose precondition is the one given when the session was opened);
* deletes, ``DELETE /storage/v1/b/<bucket>/o/<name>`` (of an object that is not there: forwarded, and the
  emulator answers 404 as Cloud Storage does).

The preconditions are ``ifGenerationMatch``, ``ifGenerationNotMatch``, ``ifMetagenerationMatch`` and
``ifMetagenerationNotMatch``, read as Cloud Storage does (generation 0 means "no live object"); a failed one
is answered with 412 and Cloud Storage's JSON error body (reason ``conditionNotMet``), which
google-cloud-storage raises as ``google.api_core.exceptions.PreconditionFailed``.

For tests that need an exact interleaving it also offers

* :meth:`GcsPreconditionProxy.hold`: the next N requests of a kind on one object wait until all N have
  arrived, then go on together (N metadata GETs: forces N clients past a "does it exist?" check at the same
  moment; N downloads: makes N clients read the same generation before any of them acts on it);
* :meth:`GcsPreconditionProxy.inject`: the next requests of a kind on one object get a status without
  reaching the emulator (a 503 from the front end), or are carried out with their answer lost (the
  connection closes: the client cannot tell whether the write happened, and retries).

A client that uses pyarrow's ``GcsFileSystem`` must run in another process than the proxy: pyarrow holds the
GIL while it reads an object, so the proxy's threads cannot answer it. google-cloud-storage clients may share
the process.

It records what it answered (:attr:`~GcsPreconditionProxy.answers`, :attr:`~GcsPreconditionProxy.refused`).
The test starts it (:meth:`~GcsPreconditionProxy.start` or ``with``) on a free loopback port, in a thread of
its own process, and stops it with :meth:`~GcsPreconditionProxy.stop`, which ends that thread.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import http.server
import json
import threading
import urllib.parse
from typing import Self

#: request kinds the proxy tells apart (everything else is ``"other"``, forwarded untouched)
KINDS = ("upload", "delete", "metadata", "download", "other")

PRECONDITIONS = ("ifGenerationMatch", "ifGenerationNotMatch", "ifMetagenerationMatch", "ifMetagenerationNotMatch")

#: headers of one hop only: never forwarded (Content-Length is set again for the body actually sent)
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "content-length"}


def precondition_holds(params: dict[str, str], current: tuple[int, int] | None) -> bool:
    """Do the preconditions in ``params`` hold for an object whose ``(generation, metageneration)`` is
    ``current`` (None: no live object)? Cloud Storage's reading: ``ifGenerationMatch=0`` holds only when
    there is no live object, ``ifGenerationNotMatch=0`` only when there is one."""
    generation, metageneration = current if current is not None else (0, None)
    if "ifGenerationMatch" in params and int(params["ifGenerationMatch"]) != generation:
        return False
    if "ifGenerationNotMatch" in params and int(params["ifGenerationNotMatch"]) == generation:
        return False
    if "ifMetagenerationMatch" in params and (
            metageneration is None or int(params["ifMetagenerationMatch"]) != metageneration):
        return False
    return not ("ifMetagenerationNotMatch" in params and metageneration is not None
                and int(params["ifMetagenerationNotMatch"]) == metageneration)


def precondition_failed_body() -> bytes:
    """The JSON error body Cloud Storage sends with a 412."""
    message = "At least one of the pre-conditions you specified did not hold."
    return json.dumps({"error": {"code": 412, "message": message, "errors": [
        {"message": message, "domain": "global", "reason": "conditionNotMet", "locationType": "header",
         "location": "If-Match"}]}}).encode()


@dataclasses.dataclass
class Request:
    """One request as the proxy understands it."""

    method: str
    target: str  #: path and query, as sent
    headers: list[tuple[str, str]]
    body: bytes
    kind: str = "other"
    bucket: str = ""
    name: str = ""  #: the object's name (unquoted); "" when the request is not about one object
    params: dict[str, str] = dataclasses.field(default_factory=dict)  #: the query, one value per key

    @property
    def conditions(self) -> dict[str, str]:
        return {k: v for k, v in self.params.items() if k in PRECONDITIONS}


def _multipart_metadata(content_type: str, body: bytes) -> dict:
    """The JSON metadata part (the first) of a ``multipart/related`` upload body; {} when there is none."""
    boundary = ""
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return {}
    parts = body.split(b"--" + boundary.encode())
    if len(parts) < 2:
        return {}
    _, _, payload = parts[1].partition(b"\r\n\r\n")
    try:
        meta = json.loads(payload.strip() or b"{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def classify(req: Request) -> Request:
    """Fill in ``kind``, ``bucket``, ``name`` and ``params`` of ``req`` from its method, path, query and body."""
    split = urllib.parse.urlsplit(req.target)
    req.params = {k: v[-1] for k, v in urllib.parse.parse_qs(split.query, keep_blank_values=True).items()}
    path = split.path
    headers = {k.lower(): v for k, v in req.headers}
    for prefix, kind in (("/upload/storage/v1/b/", "upload"), ("/download/storage/v1/b/", "download"),
                         ("/storage/v1/b/", "")):
        if not path.startswith(prefix):
            continue
        bucket, _, rest = path[len(prefix):].partition("/")
        req.bucket = urllib.parse.unquote(bucket)
        if kind == "upload":
            if rest != "o" or req.method not in ("POST", "PUT"):
                return req
            req.kind = "upload"
            req.name = req.params.get("name", "")
            upload_type = req.params.get("uploadType", "")
            if not req.name and upload_type == "multipart":
                req.name = str(_multipart_metadata(headers.get("content-type", ""), req.body).get("name", ""))
            elif not req.name and upload_type == "resumable" and "upload_id" not in req.params and req.body:
                try:
                    req.name = str(json.loads(req.body).get("name", ""))
                except (ValueError, AttributeError):
                    pass
            return req
        if not rest.startswith("o/") or len(rest) == 2:
            return req
        name = urllib.parse.unquote(rest[2:])
        if kind == "download" and req.method == "GET":
            req.kind, req.name = "download", name
        elif kind == "" and req.method == "DELETE":
            req.kind, req.name = "delete", name
        elif kind == "" and req.method == "GET":
            req.kind, req.name = "metadata", name
        return req
    return req


def _completes_resumable(req: Request) -> bool:
    """Does this request of a resumable session carry its last bytes (``Content-Range: bytes a-b/total``
    with ``b + 1 == total``, or ``bytes */total``)?"""
    content_range = {k.lower(): v for k, v in req.headers}.get("content-range", "")
    unit, _, spec = content_range.partition(" ")
    span, _, total = spec.partition("/")
    if unit != "bytes" or not total.isdigit():
        return False
    if span == "*":
        return True
    _, _, end = span.partition("-")
    return end.isdigit() and int(end) + 1 == int(total)


class GcsPreconditionProxy:
    """Loopback proxy to ``upstream`` (the emulator's ``http://host:port``) that enforces preconditions.

    Point ``STORAGE_EMULATOR_HOST`` of a client (this process or another) at :attr:`url`.

    Attributes:
        answers: ``(kind, name, status)`` of every upload, delete, metadata GET and download answered, in
            the order the answers were decided.
        refused: 412s answered, per ``(kind, name)``.
        held: requests that waited at a barrier and went on when all had arrived, per ``(kind, name)``.
        barrier_timeouts: those that waited in vain (the barrier timed out; they went on alone).
    """

    def __init__(self, upstream: str, timeout_s: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname or "127.0.0.1"
        self.upstream_port = parsed.port or 80
        self.timeout_s = timeout_s
        self.answers: list[tuple[str, str, int]] = []
        self.refused: collections.Counter[tuple[str, str]] = collections.Counter()
        self.held: collections.Counter[tuple[str, str]] = collections.Counter()
        self.barrier_timeouts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._state = threading.Lock()  # guards everything below and the counters above
        self._object_locks: dict[tuple[str, str], threading.Lock] = {}
        self._barriers: dict[tuple[str, str], list] = {}  # (kind, name) -> [barrier, places left, timeout]
        self._faults: dict[tuple[str, str], list] = {}  # (kind, name) -> [status or "drop", times left]
        self._sessions: dict[str, tuple[str, str, dict[str, str]]] = {}  # upload_id -> bucket, name, conditions
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, name="gcs-preconditions", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._state:
            for barrier, _, _ in self._barriers.values():
                barrier.abort()  # no handler thread stays waiting
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- hooks for tests ----------------------------------------------------------------------------------

    def hold(self, kind: str, name: str, parties: int, timeout_s: float = 60.0) -> None:
        """Make the next ``parties`` requests of ``kind`` (see :data:`KINDS`) on object ``name`` (any bucket)
        wait until all of them have arrived, then go on together; later ones are not held. One waiting longer
        than ``timeout_s`` goes on alone and is counted in :attr:`barrier_timeouts`."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
        with self._state:
            self._barriers[(kind, name)] = [threading.Barrier(parties), parties, timeout_s]

    def inject(self, kind: str, name: str, status: int | None = None, drop_response: bool = False,
               times: int = 1) -> None:
        """Fault the next ``times`` requests of ``kind`` (see :data:`KINDS`) on object ``name``: answer
        ``status`` without forwarding, or (``drop_response``) carry the request out and close the connection
        instead of answering."""
        if (status is None) == (not drop_response):
            raise ValueError("give one of status and drop_response")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
        with self._state:
            self._faults[(kind, name)] = ["drop" if drop_response else int(status), times]

    def statuses(self, kind: str, name: str) -> list[int]:
        """The statuses answered to requests of ``kind`` on ``name``, in order."""
        with self._state:
            return [s for k, n, s in self.answers if k == kind and n == name]

    # -- the proxy ----------------------------------------------------------------------------------------

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
                return

            def _any(self) -> None:
                proxy._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

        return Handler

    @staticmethod
    def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()  # the CRLF after each chunk
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        req = classify(Request(handler.command, handler.path, list(handler.headers.items()),
                               self._read_body(handler)))
        if req.kind == "upload" and "upload_id" in req.params:  # a later request of a resumable session
            with self._state:
                session = self._sessions.get(req.params["upload_id"])
            if session is not None:
                req.bucket, req.name, conditions = session
                req.params = {**{k: v for k, v in req.params.items() if k not in PRECONDITIONS}, **conditions}
                if not _completes_resumable(req):
                    req.params = {k: v for k, v in req.params.items() if k not in PRECONDITIONS}
        fault = self._take_fault(req)
        if isinstance(fault, int):
            self._record(req, fault)
            self._reply(handler, fault, json.dumps({"error": {"code": fault, "message": "injected"}}).encode())
            return
        self._maybe_hold(req)
        if req.kind in ("upload", "delete") and req.conditions and req.name:
            with self._object_lock(req.bucket, req.name):  # check and write as one step
                try:
                    current = self._generation(req.bucket, req.name)
                except (OSError, RuntimeError, ValueError, KeyError):
                    current = "unknown"
                if current == "unknown":  # the emulator did not say: a transient error, the client retries
                    status, headers, data = 503, [("Content-Type", "application/json")], b'{"error": {"code": 503}}'
                elif req.kind == "delete" and current is None:
                    status, headers, data = self._forward(req)  # nothing to delete: the emulator says 404
                elif not precondition_holds(req.conditions, current):
                    status, headers, data = 412, [("Content-Type", "application/json")], precondition_failed_body()
                    with self._state:
                        self.refused[(req.kind, req.name)] += 1
                else:
                    status, headers, data = self._forward(req)
                self._record(req, status)
        else:
            status, headers, data = self._forward(req)
            if req.kind != "other":
                self._record(req, status)
        self._remember_session(req, status, headers)
        if fault == "drop":
            handler.close_connection = True  # done, but the client never hears of it
            return
        self._reply(handler, status, data, headers)

    def _take_fault(self, req: Request) -> int | str | None:
        with self._state:
            fault = self._faults.get((req.kind, req.name))
            if not fault or fault[1] <= 0:
                return None
            fault[1] -= 1
            return fault[0]

    def _maybe_hold(self, req: Request) -> None:
        key = (req.kind, req.name)
        with self._state:
            entry = self._barriers.get(key)
            if entry is None or entry[1] <= 0:
                return
            entry[1] -= 1
            barrier, _, timeout_s = entry
        try:
            barrier.wait(timeout_s)
        except threading.BrokenBarrierError:
            with self._state:
                self.barrier_timeouts[key] += 1
            return
        with self._state:
            self.held[key] += 1

    def _object_lock(self, bucket: str, name: str) -> threading.Lock:
        with self._state:
            return self._object_locks.setdefault((bucket, name), threading.Lock())

    def _record(self, req: Request, status: int) -> None:
        with self._state:
            self.answers.append((req.kind, req.name, status))

    def _remember_session(self, req: Request, status: int, headers: list[tuple[str, str]]) -> None:
        """Keep the preconditions of a resumable session opened now, for the request that completes it."""
        if not (req.kind == "upload" and req.params.get("uploadType") == "resumable" and "upload_id" not in
                req.params and 200 <= status < 300):
            return
        location = {k.lower(): v for k, v in headers}.get("location", "")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        if "upload_id" in query:
            with self._state:
                self._sessions[query["upload_id"][-1]] = (req.bucket, req.name, req.conditions)

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=self.timeout_s)

    def _generation(self, bucket: str, name: str) -> tuple[int, int] | None:
        """``(generation, metageneration)`` of the live object at the emulator, or None when there is none."""
        conn = self._connection()
        try:
            conn.request("GET", f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
                                f"{urllib.parse.quote(name, safe='')}")
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RuntimeError(f"the emulator answered {resp.status} to a metadata GET of {bucket}/{name}")
        meta = json.loads(data)
        return int(meta["generation"]), int(meta.get("metageneration") or 1)

    def _forward(self, req: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = self._connection()
        try:
            headers = {k: v for k, v in req.headers if k.lower() not in _HOP_BY_HOP}
            body = req.body if req.body or req.method in ("POST", "PUT", "PATCH") else None
            conn.request(req.method, req.target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        upstream, here = f"http://{self.upstream_host}:{self.upstream_port}", self.url
        kept = [(k, v.replace(upstream, here) if k.lower() == "location" else v) for k, v in resp.getheaders()
                if k.lower() not in _HOP_BY_HOP | {"server", "date"}]
        if "json" in (resp.getheader("Content-Type") or ""):  # metadata: its links lead back here
            data = data.replace(upstream.encode(), here.encode())
        return resp.status, kept, data

    @staticmethod
    def _reply(handler: http.server.BaseHTTPRequestHandler, status: int, body: bytes,
               headers: list[tuple[str, str]] | None = None) -> None:
        handler.send_response(status)
        names = set()
        for k, v in headers if headers is not None else [("Content-Type", "application/json")]:
            handler.send_header(k, v)
            names.add(k.lower())
        if "content-type" not in names and body:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up: nobody to tell
                handler.wfile.write(body)
