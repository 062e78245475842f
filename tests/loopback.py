"""A loopback stand-in for the PAD server: registry CSVs, images and the API v2, with faults.

Tests start it on 127.0.0.1:0 in a thread. It serves a dataset directory (as written
by `synthetic.write_dataset`) and a PAD API v2 view of the same cards. Faults are
deterministic per (path, attempt): a seeded RNG decides whether the n-th GET of a path
gets a 500, a connection reset, a stalled response, a truncated body (reset mid-body), a
429 with `Retry-After`, or a short body (fewer bytes than Content-Length, then a clean
close), so a test run is reproducible and every GET is counted per path.

Files are served as a static web server serves them (nginx's defaults): `Last-Modified` from the file's
mtime and a strong `ETag` of mtime and size, on GET and HEAD (HEADs counted apart); `validators=False`
serves them bare, as a server that gives neither.
"""
from __future__ import annotations

import csv
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

FAULT_KINDS = ("500", "reset", "slow", "truncate")
MORE_FAULT_KINDS = ("429", "short")  # 429 carries Retry-After; short = a body cut short, closed cleanly
ALL_FAULT_KINDS = FAULT_KINDS + MORE_FAULT_KINDS


@dataclass
class Faults:
    rate: float = 0.0  # share of (path, attempt) pairs that get a fault
    kinds: tuple[str, ...] = FAULT_KINDS
    faulty_attempts: int = 3  # attempts after this many are served cleanly, so retries can win
    seed: int = 0
    stall_seconds: float = 1.5  # "slow": longer than the client's read timeout in tests
    always: dict[str, str] = field(default_factory=dict)  # path → fault on every attempt ("500", "404", …)
    redirects: dict[str, str] = field(default_factory=dict)  # path → Location
    bodies: dict[str, bytes] = field(default_factory=dict)  # path → bytes served instead of the file
    retry_after: str = "1"  # the Retry-After header of a "429" fault (seconds, or an HTTP date)

    def pick(self, path: str, attempt: int) -> str | None:
        if path in self.always:
            return self.always[path]
        rng = random.Random(f"{self.seed}:{path}:{attempt}")
        if attempt < self.faulty_attempts and rng.random() < self.rate:
            return rng.choice(self.kinds)
        return None


def client_read_timeout(faults: Faults) -> float:
    """The read timeout a test's client gets: shorter than a stall when the server may stall ("slow"), so
    those tests end in seconds; otherwise long, because a loopback server that answers can still take over
    half a second on this 2-core machine while the other test worker trains a model (CI of stop 43: a card
    that always gets a 500 was reported as timed out, its last attempt not answered within 0.5 s)."""
    stalls = "slow" in faults.always.values() or (faults.rate > 0 and "slow" in faults.kinds)
    return 0.5 if stalls else 10.0


class PadServer:
    def __init__(self, root: Path, faults: Faults | None = None, delay: float = 0.0, project: int = 1,
                 validators: bool = True):
        self.root = Path(root)
        self.validators = validators
        self.heads: Counter[str] = Counter()
        self.faults = faults or Faults()
        self.delay = delay  # per request, to mimic a remote server's latency
        self.project = project
        self.gets: Counter[str] = Counter()
        self.faults_served: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self) -> "PadServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def image_gets(self) -> int:
        return sum(n for path, n in self.gets.items() if path.startswith("/images/"))

    def count(self, path: str) -> int:
        with self._lock:
            attempt = self.gets[path]
            self.gets[path] += 1
            return attempt

    def cards(self) -> list[dict]:
        """PAD API v2 card records for every registry row (processed_file_location = the image path)."""
        cards = []
        for registry in sorted(self.root.glob("metadata_*.csv")):
            with open(registry, newline="") as handle:
                for row in csv.DictReader(handle):
                    cards.append({
                        "id": int(row["id"]), "sample_name": row["sample_name"], "sample_id": int(row["sample_id"]),
                        "quantity": int(row["quantity"]), "camera_type_1": row["camera_type_1"],
                        "processed_file_location": "/" + row["url"], "project": self.project,
                    })
        return sorted(cards, key=lambda card: card["id"])


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # clients that give up mid-response (timeouts in tests) are expected here


def _handler(server: PadServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def finish(self) -> None:
            try:
                super().finish()
            except OSError:
                pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            parsed = urlparse(self.path)
            key = self.path if parsed.path.startswith("/api/") else parsed.path
            attempt = server.count(key)
            if server.delay:
                time.sleep(server.delay)
            if key in server.faults.redirects:
                return self._send(302, b"", {"Location": server.faults.redirects[key]})
            body, status = self._body(parsed)
            validators = self._validators(parsed) if status == 200 else {}
            fault = server.faults.pick(key, attempt) if status == 200 else None
            if fault:
                server.faults_served[fault] += 1
            if fault == "429":
                return self._send(429, b"slow down\n", {"Retry-After": server.faults.retry_after})
            if fault and fault.isdigit():
                return self._send(int(fault), b"fault\n")
            if fault == "reset":
                return self._reset()
            if fault == "slow":
                time.sleep(server.faults.stall_seconds)
            if fault == "truncate":
                self._send_headers(200, len(body))
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                return self._reset()
            if fault == "short":  # what a proxy that gives up does: half the body, then an orderly close
                self._send_headers(200, len(body))
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            self._send(status, body, validators)

        def do_HEAD(self) -> None:  # noqa: N802
            parsed = urlparse(self.path)
            with server._lock:
                server.heads[parsed.path] += 1
            body, status = self._body(parsed)
            self._send_headers(status, len(body), self._validators(parsed) if status == 200 else {})

        def _validators(self, parsed) -> dict[str, str]:
            path = (server.root / parsed.path.lstrip("/")).resolve()
            if not server.validators or parsed.path.startswith("/api/") or not path.is_file():
                return {}
            stat = path.stat()
            return {"Last-Modified": formatdate(stat.st_mtime, usegmt=True),
                    "ETag": f'"{int(stat.st_mtime):x}-{stat.st_size:x}"'}

        def _body(self, parsed) -> tuple[bytes, int]:
            if parsed.path in server.faults.bodies:
                return server.faults.bodies[parsed.path], 200
            if parsed.path.startswith("/api/v2/"):
                return self._api(parsed)
            path = (server.root / parsed.path.lstrip("/")).resolve()
            if server.root.resolve() not in path.parents or not path.is_file():
                return b"not found\n", 404
            return path.read_bytes(), 200

        def _api(self, parsed) -> tuple[bytes, int]:
            query = parse_qs(parsed.query)
            skip, limit = int(query.get("skip", ["0"])[0]), int(query.get("limit", ["100"])[0])
            route = parsed.path.removeprefix("/api/v2/")
            if route not in ("cards", f"projects/{server.project}/cards"):
                return b'{"detail": "Not Found"}', 404
            return json.dumps(server.cards()[skip : skip + limit]).encode(), 200

        def _send_headers(self, status: int, length: int, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()

        def _send(self, status: int, body: bytes, extra: dict | None = None) -> None:
            self._send_headers(status, len(body), extra)
            self.wfile.write(body)

        def _reset(self) -> None:
            # SO_LINGER 0 turns close() into a TCP reset, as a crashing server or proxy would.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

    return Handler
