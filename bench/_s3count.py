"""An S3 endpoint on loopback (moto) that counts the requests it serves, by kind.

What a push to object storage costs is requests and bytes, not the seconds a loopback server
takes; P12 pushes every layer through this and reports both, so docs/scaling.md can say what a
push of N items sends to a real S3 bucket.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from moto.moto_server.threaded_moto_server import MotoRequestHandler, ThreadedMotoServer
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from tests.servers import S3Endpoint


@dataclass
class RequestCount:
    by_kind: Counter = field(default_factory=Counter)  # "PUT object", "GET list", "HEAD object", …
    bytes_in: int = 0  # request bodies received (what an upload sends)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> tuple[Counter, int]:
        with self.lock:
            return Counter(self.by_kind), self.bytes_in


def request_kind(environ: dict) -> str:
    """`METHOD target`: the target is `list` for a bucket listing, `multipart` for the parts of a
    multipart upload, `object` for one object."""
    method, path, query = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", "")
    if "uploadId" in query or "uploads" in query:
        return f"{method} multipart"
    if path.strip("/").count("/") == 0:  # /bucket or /bucket/?list-type=2…
        return f"{method} list"
    return f"{method} object"


class _Counting:
    def __init__(self, app, count: RequestCount):
        self.app, self.count = app, count

    def __call__(self, environ, start_response):
        kind = request_kind(environ)
        with self.count.lock:
            self.count.by_kind[kind] += 1
            self.count.bytes_in += int(environ.get("CONTENT_LENGTH") or 0)
        return self.app(environ, start_response)


class CountingMotoServer(ThreadedMotoServer):
    def __init__(self, count: RequestCount):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.count = count

    def _server_entry(self) -> None:  # ThreadedMotoServer's own, with the counting middleware around the app
        app = _Counting(DomainDispatcherApplication(create_backend_app), self.count)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


@contextmanager
def counting_s3(bucket: str = "evalstack") -> Iterator[tuple[S3Endpoint, RequestCount]]:
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request would bury the figures
    count = RequestCount()
    server = CountingMotoServer(count)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = S3Endpoint(url=f"http://{host}:{port}", bucket=bucket)
        boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1", aws_access_key_id=endpoint.key_id,
                     aws_secret_access_key=endpoint.secret).create_bucket(Bucket=bucket)
        yield endpoint, count
    finally:
        server.stop()


def delta(before: tuple[Counter, int], after: tuple[Counter, int]) -> tuple[dict[str, int], int]:
    kinds = after[0] - before[0]
    return dict(sorted(kinds.items())), after[1] - before[1]


def kinds_text(kinds: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in kinds.items()) or "none"


def describe(kinds: dict[str, int], sent: int) -> str:
    return f"{sum(kinds.values())} requests ({kinds_text(kinds)}), {sent / 1e6:.0f} MB sent"
