"""Real servers on 127.0.0.1 for the remote-shard tests: an HTTP server that honours ``Range``
(with injectable faults) and moto's standalone S3 server."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")

# short retries for every test that reads a URL (the reader takes them from the environment)
FAST_RETRIES = {
    "HALOSCOPE_REMOTE_RETRIES": "3",
    "HALOSCOPE_REMOTE_BACKOFF_S": "0.05",
    "HALOSCOPE_REMOTE_TIMEOUT_S": "10",
}


@dataclass
class Faults:
    """What the HTTP server does wrong, per request path (``/train/shard-000000.tar``)."""

    cut: set[str] = field(default_factory=set)
    """Paths whose bodies stop halfway (the full Content-Length is announced)."""
    fail_first: dict[str, int] = field(default_factory=dict)
    """Path -> number of first GETs answered 503."""
    delay_s: float = 0.0
    """Seconds every GET waits before answering (a slow server)."""
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    """Every request: (method, path, Range header)."""


class RangeHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus single ``Range: bytes=a-b`` requests and faults."""

    faults: Faults

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet tests
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self.faults.requests.append(("HEAD", self.path, None))
        super().do_HEAD()

    def do_GET(self) -> None:  # noqa: N802
        rng = self.headers.get("Range")
        self.faults.requests.append(("GET", self.path, rng))
        time.sleep(self.faults.delay_s)
        left = self.faults.fail_first.get(self.path, 0)
        if left:
            self.faults.fail_first[self.path] = left - 1
            self.send_error(503, "try again")
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        start, stop = 0, len(data)
        match = _RANGE.match(rng or "")
        if match:
            start = int(match.group(1))
            stop = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
        body = data[start:stop]
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(len(body)))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.end_headers()
        if self.path in self.faults.cut:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)


@contextlib.contextmanager
def http_server(root: Path, faults: Faults | None = None) -> Iterator[tuple[str, Faults]]:
    """Serve ``root`` on 127.0.0.1 (a free port) in a thread; yields (base URL, faults)."""
    faults = faults or Faults()
    handler = type("Handler", (RangeHandler,), {"faults": faults})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto's standalone S3 server on 127.0.0.1; yields the environment that points boto3 at
    it (also set in ``os.environ`` while it runs)."""
    # NOTE: moto (a test extra, slow to import) only for the S3 tests, not the HTTP ones.
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def upload_tree(root: Path, bucket: str, prefix: str = "") -> None:
    """Create ``bucket`` and upload every file under ``root`` to ``prefix/<relative path>``."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = "/".join(p for p in (prefix, path.relative_to(root).as_posix()) if p)
            s3.upload_file(str(path), bucket, key)
