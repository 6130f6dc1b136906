"""Downloads of zipped collections: verified, resumable, never half-written (against a local HTTP server)."""
from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from inpars_ray.errors import CollectionError, DownloadError
from inpars_ray.io import catalog
from tests.conftest import BUNDLED


def make_zip(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(BUNDLED.rglob("*")):
            if path.is_file():
                zf.write(path, f"{name}/{path.relative_to(BUNDLED)}")
    return buf.getvalue()


class Server:
    """Serves one blob with HTTP Range support; can cut the first response short or serve corrupt bytes."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.cut_first_at: int | None = None
        self.requests: list[str | None] = []  # the Range header of each request
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = outer.blob[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.blob) - 1}/{len(outer.blob)}")
                self.end_headers()
                if outer.cut_first_at is not None and len(outer.requests) == 1:
                    self.wfile.write(body[: outer.cut_first_at])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-body
                    return
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def blob() -> bytes:
    return make_zip("tiny")


def source(url: str, blob: bytes) -> catalog.ZipSource:
    return catalog.ZipSource(name="tiny", url=f"{url}/tiny.zip", md5=hashlib.md5(blob).hexdigest())


def test_download_verifies_unpacks_and_is_reused(tmp_path: Path, blob: bytes):
    with Server(blob) as server:
        root = catalog.download(source(server.url, blob), tmp_path)
        assert (root / "corpus.jsonl").read_bytes() == (BUNDLED / "corpus.jsonl").read_bytes()
        assert (root / "qrels" / "test.tsv").exists()
        assert catalog.download(source(server.url, blob), tmp_path) == root
        assert len(server.requests) == 1  # the verified copy is reused, not fetched again
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".tiny.*"))


def test_corrupted_download_is_rejected_and_nothing_is_left(tmp_path: Path, blob: bytes):
    corrupt = bytearray(blob)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with Server(bytes(corrupt)) as server, pytest.raises(DownloadError, match="checksum mismatch"):
        catalog.download(source(server.url, blob), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_a_range_request(tmp_path: Path, blob: bytes):
    with Server(blob) as server:
        server.cut_first_at = len(blob) // 3
        with pytest.raises(DownloadError, match="rerun to resume"):
            catalog.download(source(server.url, blob), tmp_path)
        part = tmp_path / "tiny.zip.part"
        assert part.stat().st_size == len(blob) // 3
        assert not (tmp_path / "tiny").exists()  # nothing half-unpacked under the final name
        root = catalog.download(source(server.url, blob), tmp_path)
        assert server.requests == [None, f"bytes={len(blob) // 3}-"]
    assert (root / "corpus.jsonl").read_bytes() == (BUNDLED / "corpus.jsonl").read_bytes()
    assert not part.exists()


def test_beir_spec_goes_through_the_declared_checksum(tmp_path: Path, blob: bytes, monkeypatch):
    with Server(blob) as server:
        monkeypatch.setenv("INPARS_RAY_BEIR_URL", server.url)
        # the server does not hold the real SciFact zip: the published md5 must reject it
        with pytest.raises(DownloadError, match="5f7d1de60b170fc8027bb7898e2efca1"):
            catalog.resolve("beir/scifact", cache_dir=tmp_path)
        assert server.requests == [None]


def test_unknown_specs_are_clear_errors(tmp_path: Path):
    with pytest.raises(CollectionError, match="unknown BEIR dataset 'nope'"):
        catalog.resolve("beir/nope", cache_dir=tmp_path)
    with pytest.raises(CollectionError, match="neither a folder"):
        catalog.resolve(str(tmp_path / "missing"))
