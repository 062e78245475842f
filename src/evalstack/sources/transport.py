"""Reading bytes from a source: file:// and http(s) with retries, timeouts, caps and no cross-host redirects.

Two retry layers, each for what it can see: urllib3's `Retry` (on the session)
repeats a request whose connection failed, whose headers timed out or were cut,
or that got a 5xx, with exponential backoff. A body that breaks *after* the
headers (a reset mid-stream, a truncated body, a stalled read, bytes whose md5
differs from the stated one) is invisible to it, so `Transport.get` repeats those
itself with the same budget and backoff.

A `429`/`503` with `Retry-After` is retried after the time the server asks for, capped at
`retry_after_max` seconds (a server asking for an hour must not stall a fetch for an hour;
after the cap the normal retry budget decides). Every request sent is counted, retries
included, so the progress line and the report say what the server saw.
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, TextIO
from urllib.parse import unquote, urljoin, urlparse

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NameResolutionError, NewConnectionError
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from evalstack.core.keys import md5_bytes
from evalstack.sources.registry import SourceError, check_scheme, read_capped

RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_REDIRECTS = 5
_CHUNK = 1 << 16


class SourceUnreachable(SourceError):
    """The source's host cannot be reached at all (offline, refused, unknown host)."""


class _Transient(Exception):
    """A failure worth another attempt (the body broke after the headers)."""


@dataclass(frozen=True)
class Validators:
    """What a server said about a URL's current bytes, from its response headers ("" when absent): what an HTTP
    cache revalidates with (RFC 9110 §8.8). fetch/revalidate.py compares them between fetches."""

    etag: str = ""  # strong only: a weak ETag ("W/…") promises equivalent content, not the same bytes
    last_modified: str = ""
    length: str = ""

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> "Validators":
        etag = headers.get("etag") or ""
        return cls("" if etag.startswith("W/") else etag, headers.get("last-modified") or "",
                   headers.get("content-length") or "")

    @property
    def usable(self) -> bool:
        return bool(self.etag or self.last_modified)

    def same_bytes_as(self, recorded: "Validators") -> bool:
        """Whether these validators say the URL still serves the bytes `recorded` came with."""
        if self.etag and recorded.etag:
            return self.etag == recorded.etag
        return bool(self.last_modified) and (self.last_modified, self.length) == (recorded.last_modified,
                                                                                    recorded.length)


@dataclass(frozen=True)
class TransportConfig:
    schemes: tuple[str, ...] = ("file", "http", "https")
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 5  # further attempts after the first one
    backoff: float = 0.5  # seconds; waits grow backoff, 2·backoff, 4·backoff, …
    max_bytes: int = 64 << 20  # per response, checked while streaming
    pool_size: int = 8
    retry_after_max: float = 60.0  # seconds: the longest `Retry-After` honoured as asked


class _CountingRetry(Retry):
    """urllib3's Retry that reports each retry it sends (so GET counts include retries) and caps
    the wait a `Retry-After` header asks for."""

    on_retry = None  # callable, set by Transport; carried over by `new()`
    retry_after_max: float = TransportConfig.retry_after_max

    def new(self, **kw):  # urllib3 makes a new Retry per attempt: keep the counter and the cap
        retry = super().new(**kw)
        retry.on_retry, retry.retry_after_max = self.on_retry, self.retry_after_max
        return retry

    def increment(self, *args, **kwargs):
        retry = super().increment(*args, **kwargs)  # raises when the budget is spent: nothing more is sent
        if self.on_retry is not None:
            self.on_retry()
        return retry

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.retry_after_max)


class Transport:
    """A requests.Session set up for one fetch; counts GETs and bytes for the report and progress."""

    def __init__(self, config: TransportConfig):
        self.config = config
        retry = _CountingRetry(
            total=config.retries, connect=config.retries, read=config.retries, status=config.retries,
            other=0, redirect=0, backoff_factor=config.backoff, status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}), raise_on_status=False,
            respect_retry_after_header=True,  # 429/503 Retry-After, capped at retry_after_max (see _CountingRetry)
        )
        retry.on_retry = lambda: self._count_retry(sent_by_urllib3=True)
        retry.retry_after_max = config.retry_after_max
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=max(config.pool_size, 4))
        self.session = requests.Session()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # HEADs revalidate (fetch/revalidate.py): one attempt each, since a failed one only costs a download
        # and a host that is down would otherwise cost every card urllib3's retries and backoff
        self._head_session = requests.Session()
        head_adapter = HTTPAdapter(max_retries=0, pool_connections=4, pool_maxsize=max(config.pool_size, 4))
        self._head_session.mount("http://", head_adapter)
        self._head_session.mount("https://", head_adapter)
        self._lock = threading.Lock()
        self.gets = 0  # requests sent, retries included
        self.retries = 0  # of which repeats (by urllib3, or here after a body broke off)
        self.heads = 0  # HEAD requests (revalidations), not in `gets`
        self.bytes = 0

    def close(self) -> None:
        self.session.close()
        self._head_session.close()

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, url: str, what: str, expect_md5: str = "") -> bytes:
        """The bytes at `url`; SourceError naming `what` and the cause when they cannot be had."""
        return self.get_validated(url, what, expect_md5)[0]

    def get_validated(self, url: str, what: str, expect_md5: str = "") -> tuple[bytes, Validators]:
        """`get`, with the validators of the response that gave the bytes (none for a file)."""
        check_scheme(url, self.config.schemes)
        if urlparse(url).scheme == "file":
            return self._check_md5(self._read_file(url, what), expect_md5, what, retry=False), Validators()
        last: _Transient | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._count_retry()
                time.sleep(min(self.config.backoff * 2 ** (attempt - 1), 30.0))
            try:
                data, validators = self._get_http(url, what)
                return self._check_md5(data, expect_md5, what, retry=True), validators
            except _Transient as error:
                last = error
        raise SourceError(f"{what}: {last} (gave up after {self.config.retries + 1} attempts)")

    def head(self, url: str, what: str) -> Validators | None:
        """The validators the server gives for `url` now: one HEAD, following redirects as `get` does (same
        scheme and host), not retried. None when the answer is no 2xx (a 405 from a server that routes no HEAD,
        a 429): that only costs a download. SourceUnreachable when the host cannot be reached."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            with self._lock:
                self.heads += 1
            try:
                response = self._head_session.head(current, allow_redirects=False, timeout=(
                    self.config.connect_timeout, self.config.read_timeout))
            except requests.ConnectionError as error:
                failure = _classify(error, url, what)
                if isinstance(failure, SourceUnreachable):
                    raise failure from None
                return None
            except requests.RequestException:
                return None
            with response:
                if not response.is_redirect:
                    return Validators.of(response.headers) if 200 <= response.status_code < 300 else None
                try:
                    current = _redirect_target(url, current, response.headers["location"], what)
                except SourceError:
                    return None
        return None

    @contextlib.contextmanager
    def open_text(self, url: str, what: str) -> Iterator[TextIO]:
        """A text file (a registry, a labels CSV) to read line by line. A local file is streamed, so a
        registry of millions of rows is never in memory at once; over HTTP the body is read whole first
        (its retries and md5-free checks are `get`'s), about 150 bytes per registry row."""
        check_scheme(url, self.config.schemes)
        if urlparse(url).scheme != "file":
            yield io.StringIO(self.get(url, what).decode("utf-8-sig"), newline="")
            return
        path = Path(unquote(urlparse(url).path))
        if not path.exists():
            raise SourceError(f"{what}: file not found: {path}")
        if not path.is_file():  # a device or FIFO (/dev/zero) never ends: only a regular file is streamed uncapped
            raise SourceError(f"{what}: {path} is not a regular file")
        try:
            handle = open(path, encoding="utf-8-sig", newline="")
        except OSError as error:
            raise SourceError(f"{what}: cannot read {path} ({error.strerror})") from None
        with handle:
            self._count(os.fstat(handle.fileno()).st_size)
            yield handle

    def _count(self, n_bytes: int, request: bool = False) -> None:
        with self._lock:
            self.bytes += n_bytes
            self.gets += int(request)

    def _count_retry(self, sent_by_urllib3: bool = False) -> None:
        """One more attempt at the same URL. urllib3 sends its retries inside one `session.get`,
        so those are counted as requests here too; a repeat of `get` is counted when it is sent."""
        with self._lock:
            self.retries += 1
            self.gets += int(sent_by_urllib3)

    def _read_file(self, url: str, what: str) -> bytes:
        # streamed under the cap: /dev/zero or a FIFO reports 0 bytes and never ends
        data = read_capped(Path(unquote(urlparse(url).path)), self.config.max_bytes, what)
        self._count(len(data))
        return data

    def _check_md5(self, data: bytes, expected: str, what: str, retry: bool) -> bytes:
        if expected and (actual := md5_bytes(data)) != expected:
            message = f"md5 {actual} differs from the source's {expected}"
            # Over HTTP a bad md5 may be a damaged transfer, so it is tried again; a file is what it is.
            if retry:
                raise _Transient(message)
            raise SourceError(f"{what}: {message}")
        return data

    def _get_http(self, url: str, what: str) -> tuple[bytes, Validators]:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            self._count(0, request=True)  # before sending: a request that fails was still sent
            try:
                response = self.session.get(
                    current, stream=True, allow_redirects=False,
                    timeout=(self.config.connect_timeout, self.config.read_timeout),
                )
            except requests.ConnectionError as error:
                raise _classify(error, url, what) from None
            except requests.RequestException as error:
                raise SourceError(f"{what}: {type(error).__name__}: {error}") from None
            with response:
                if response.is_redirect:
                    current = _redirect_target(url, current, response.headers["location"], what)
                    continue
                return self._read_body(response, current, what), Validators.of(response.headers)
        raise SourceError(f"{what}: more than {MAX_REDIRECTS} redirects from {url}")

    def _read_body(self, response: requests.Response, url: str, what: str) -> bytes:
        if response.status_code >= 400:
            retried = " (gave up after retries)" if response.status_code in RETRY_STATUSES else ""
            raise SourceError(f"{what}: HTTP {response.status_code} {response.reason} from {url}{retried}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.config.max_bytes:
            raise SourceError(f"{what}: {declared} bytes exceeds the size cap of {self.config.max_bytes}: {url}")
        chunks, total = [], 0
        try:
            for chunk in response.iter_content(_CHUNK):
                total += len(chunk)
                if total > self.config.max_bytes:
                    raise SourceError(f"{what}: more than {self.config.max_bytes} bytes (the size cap): {url}")
                chunks.append(chunk)
                self._count(len(chunk))
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError, requests.Timeout) as error:
            # urllib3 reads ahead in 64 KiB requests: a short body fails inside the read that would have
            # returned its bytes, so what arrived is in the exception, not yet in `total`
            arrived = max(total, _bytes_read(error))
            self._count(arrived - total)
            of = f" of {declared}" if declared and declared.isdigit() else ""
            raise _Transient(f"transfer broke off after {arrived}{of} bytes ({_cause(error)}) from {url}") from None
        return b"".join(chunks)


def _redirect_target(origin: str, current: str, location: str, what: str) -> str:
    """Follow a redirect only within the scheme and host the source named (checked at every hop)."""
    target = urljoin(current, location)
    want, got = urlparse(origin), urlparse(target)
    if (got.scheme, got.netloc) != (want.scheme, want.netloc):
        raise SourceError(f"{what}: refused a redirect from {origin} to another scheme or host: {target}")
    return target


def _classify(error: requests.ConnectionError, url: str, what: str) -> Exception:
    reason = error.args[0].reason if error.args and isinstance(error.args[0], MaxRetryError) else error.args[0] if error.args else error
    if isinstance(reason, (NewConnectionError, NameResolutionError, ConnectTimeoutError)):
        host = urlparse(url).netloc
        return SourceUnreachable(f"{what}: cannot reach {host} ({_cause(reason)}); is the source offline?")
    return SourceError(f"{what}: {_cause(error)} from {url} (gave up after retries)")


def _bytes_read(error: BaseException) -> int:
    """Bytes of the body read before it broke off, as urllib3's IncompleteRead states them (0 if none)."""
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen or not isinstance(current, BaseException):
            continue
        seen.add(id(current))
        partial = getattr(current, "partial", None)
        if isinstance(partial, int):
            return partial
        if isinstance(partial, bytes):  # http.client's IncompleteRead carries the bytes themselves
            return len(partial)
        pending.extend([*current.args, current.__cause__, current.__context__])
    return 0


def _cause(error: BaseException) -> str:
    text = str(error)
    for marker in ("Connection refused", "Connection reset", "Read timed out", "IncompleteRead", "timed out"):
        if marker in text:
            return marker
    return f"{type(error).__name__}: {text[:160]}"


def join(root: str, location: str) -> str:
    """`root` + a server path such as PAD's `processed_file_location`."""
    return urljoin(root if root.endswith("/") else root + "/", location.lstrip("/"))
