"""HTTP store backend (``http://host:port``): the store contract spoken to a running ``tracerl serve``.

    store = tracerl.connect("http://127.0.0.1:8765", token="...")   # or HttpStore(url, token=...)
    store = tracerl.connect("http://127.0.0.1:8765")                # token from $TRACERL_TOKEN, if set

Built for throughput (target: ≥ 800 full rollout lifecycles/s on 2 cores, ~3 requests each):

* one keep-alive connection per thread, speaking a minimal HTTP/1.1 over a raw socket: the request goes
  out in one ``sendall`` (headers and body together, ``TCP_NODELAY``, so Nagle's algorithm and delayed
  ACKs never add 40 ms), and the response is parsed from a buffered reader without the ``email`` header
  machinery that makes :mod:`http.client` slow;
* compact bodies (:mod:`tracerl.store.wire`: orjson, token ids packed as base64 int32).

Errors come back as ``{"error": {"type", "message"}}`` and are re-raised as the same :mod:`tracerl.errors`
class, so callers cannot tell this backend from an in-process one. A server that cannot be reached is
:class:`StoreUnavailable`. Idempotent calls (reads, heartbeats, span writes, experiment binding, enqueue
with idempotency keys) are retried on connection errors with exponential backoff (0.1 s doubling to 2 s,
``retries`` times); any call is retried once when a *reused* keep-alive connection turns out to have been
closed by the server before a byte of the answer came (the server closed it while idle: nothing ran).
Long waits (``claim(wait_s=...)``, ``wait``) are split into requests of at most 30 s.

Whatever the other end sends, the caller gets a :mod:`tracerl.errors` class: a response that is not valid
HTTP (a garbage status line, a bad ``Content-Length`` or chunk size, headers past :data:`MAX_HEADERS`
lines of :data:`MAX_LINE` bytes) or whose 2xx body is not JSON is :class:`StoreUnavailable` naming the
fault, and so is a body over ``max_response_bytes`` (default :data:`DEFAULT_MAX_RESPONSE_BYTES`), which is
refused before it is read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, BinaryIO, cast
from urllib.parse import quote, urlencode, urlsplit

from tracerl.errors import ConfigError, InvalidInput, StoreUnavailable
from tracerl.store.base import (
    DEFAULT_LEASE_S,
    Store,
    validate_id,
    validate_ids,
    validate_json_depth,
    validate_lease,
    validate_resource_name,
    validate_resource_value,
    validate_reward,
    validate_span,
    validate_trace_ids,
    validate_version,
)
from tracerl.store.wire import dumps, error_from_response, loads, span_from_wire, span_to_wire, trace_from_wire
from tracerl.types import (
    Attempt,
    AttemptStatus,
    Claim,
    Mode,
    Page,
    Resource,
    Rollout,
    RolloutQuery,
    RolloutSpec,
    RolloutTrace,
    Span,
)

logger = logging.getLogger(__name__)

_SPEC_FIELDS = [f.name for f in dataclasses.fields(RolloutSpec)]
MAX_WAIT_PER_REQUEST_S = 30.0  # the server caps long polls at this; longer waits loop
MAX_LINE = 65536  # the longest status or header line read
MAX_HEADERS = 100  # the most response header lines read
DEFAULT_MAX_RESPONSE_BYTES = 1 << 30  # 1 GiB: far above any page of rollouts or spans the server sends


class _Stale(ConnectionError):
    """The server closed a kept-alive connection before answering (the request was not processed)."""


class _Malformed(Exception):
    """The response is not valid HTTP/1.1 (the connection cannot be trusted any more)."""


class _TooLarge(Exception):
    """The response body is larger than the client accepts."""


class _Connection:
    """One persistent HTTP/1.1 connection (not thread-safe; :class:`HttpStore` keeps one per thread)."""

    def __init__(self, host: str, port: int, *, https: bool, timeout: float, max_body: int) -> None:
        self.host, self.port, self.https, self.timeout, self.max_body = host, port, https, timeout, max_body
        self.sock: socket.socket | None = None
        self.rfile: BinaryIO | None = None
        self.used = False  # has a request completed on this socket (so the server may have closed it idle)

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.https:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock, self.rfile, self.used = sock, sock.makefile("rb"), False

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if self.rfile is not None:
            self.rfile.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.rfile = None

    def request(self, head: bytes, body: bytes, timeout: float) -> tuple[int, bytes, bool]:
        """Send ``head`` (request line and headers, without the final blank line) and ``body``; return
        ``(status, response body, server will close)``. A malformed or oversized response closes the
        connection and raises :class:`_Malformed` or :class:`_TooLarge`."""
        if self.sock is None:
            self._connect()
        assert self.sock is not None and self.rfile is not None
        reused = self.used
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(b"%s\r\nContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
            line = self.rfile.readline(MAX_LINE)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.close()
            raise (_Stale(str(e)) if reused else e) from None
        if not line:
            self.close()
            raise _Stale("server closed the connection") if reused else ConnectionError("server closed the connection")
        try:
            return self._response(line)
        except (_Malformed, _TooLarge):
            self.close()
            raise

    def _response(self, line: bytes) -> tuple[int, bytes, bool]:
        """Parse the rest of the response whose status line is ``line``."""
        assert self.rfile is not None
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
            raise _Malformed(f"status line {line[:100]!r} is not HTTP/1.x")
        status = int(parts[1])
        length: int | None = None
        chunked = close = False
        for _ in range(MAX_HEADERS + 1):
            h = self._line("header")
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = _size(value.strip(), 10, "Content-Length")
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        else:
            raise _Malformed(f"more than {MAX_HEADERS} header lines")
        if chunked:
            data = self._read_chunked()
        elif length is not None:
            self._check_size(length)
            data = self.rfile.read(length)
            if len(data) != length:
                self.close()
                raise ConnectionError("server closed the connection in the middle of a response")
        else:
            data, close = self.rfile.read(self.max_body + 1), True
            self._check_size(len(data), at_least=True)
        self.used = True
        if close:
            self.close()
        return status, data, close

    def _line(self, what: str) -> bytes:
        assert self.rfile is not None
        line = self.rfile.readline(MAX_LINE)
        if len(line) == MAX_LINE and not line.endswith(b"\n"):
            raise _Malformed(f"a {what} line is longer than {MAX_LINE} bytes")
        return line

    def _check_size(self, size: int, *, at_least: bool = False) -> None:
        if size > self.max_body:
            raise _TooLarge(f"a body of {'at least ' if at_least else ''}{size} bytes")

    def _read_chunked(self) -> bytes:
        assert self.rfile is not None
        parts: list[bytes] = []
        total = 0
        while True:
            line = self._line("chunk size")
            if not line:
                raise ConnectionError("server closed the connection in the middle of a response")
            size = _size(line.split(b";", 1)[0].strip(), 16, "chunk size")
            if size == 0:
                while self._line("trailer") not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            self._check_size(total, at_least=True)
            part = self.rfile.read(size)
            if len(part) != size:
                raise ConnectionError("server closed the connection in the middle of a response")
            parts.append(part)
            if self._line("chunk end") not in (b"\r\n", b"\n"):
                raise _Malformed("a chunk is longer than its declared size")


def _size(text: bytes, base: int, what: str) -> int:
    """A non-negative integer header value (``Content-Length``, chunk size); :class:`_Malformed` if not."""
    digits = b"0123456789abcdefABCDEF" if base == 16 else b"0123456789"
    if not text or len(text) > 18 or text.strip(digits):
        raise _Malformed(f"{what} {text[:40]!r} is not a {'hexadecimal' if base == 16 else 'decimal'} number")
    return int(text, base)


class HttpStore(Store):
    """The store contract over HTTP against ``tracerl serve`` (see the module docstring).

    ``url`` is ``http://host:port`` (optionally with a path prefix); ``token`` is the server's bearer
    token (default: the ``TRACERL_TOKEN`` environment variable, as ``tracerl serve`` reads it; it is sent
    only in the ``Authorization`` header, never logged or shown); ``timeout`` bounds each request in
    seconds (long polls add their wait on top); ``retries`` is how many times an idempotent call is retried
    on connection errors.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 5,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"HTTP store URL {url!r} must look like http://host:port")
        self.url = url.rstrip("/")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        self._target = (parts.hostname, port, https)
        self._prefix = parts.path.rstrip("/") + "/api/v1"
        host_header = f"{parts.hostname}:{port}" if ":" not in parts.hostname else f"[{parts.hostname}]:{port}"
        headers = f"Host: {host_header}\r\nContent-Type: application/json\r\nAccept: application/json"
        if token is None:
            token = os.environ.get("TRACERL_TOKEN") or None
        if token:
            headers += f"\r\nAuthorization: Bearer {token}"
        self._headers = headers.encode("latin-1")
        self.timeout = timeout
        self.retries = retries
        limit = cast(object, max_response_bytes)  # callers may pass anything
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"max_response_bytes must be a positive integer, got {max_response_bytes!r}")
        self.max_response_bytes = max_response_bytes
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()  # a dead thread's connection is dropped
        self._all_lock = threading.Lock()
        self._pid = os.getpid()

    # -- transport ---------------------------------------------------------------------------------
    def _connection(self) -> _Connection:
        if self._pid != os.getpid():  # forked: never share the parent's sockets
            self._pid, self._local, self._all = os.getpid(), threading.local(), weakref.WeakSet()
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            host, port, https = self._target
            conn = self._local.conn = _Connection(
                host, port, https=https, timeout=self.timeout, max_body=self.max_response_bytes
            )
            with self._all_lock:
                self._all.add(conn)
        return conn

    def _call(self, method: str, path: str, body: Any = None, *, idempotent: bool, wait_s: float = 0.0) -> Any:
        """Send one request and return its parsed JSON; errors become :mod:`tracerl.errors` classes."""
        try:
            payload = b"" if body is None else dumps(body)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"request is not JSON-serialisable: {e}") from None
        head = b"%s %s HTTP/1.1\r\n%s" % (method.encode(), (self._prefix + path).encode(), self._headers)
        retries_left = self.retries if idempotent else 0
        stale_retry = True
        delay = 0.1
        timeout = self.timeout + wait_s
        while True:
            conn = self._connection()
            try:
                status, data, _ = conn.request(head, payload, timeout)
            except _Stale:
                if stale_retry:  # the server had closed this idle connection: nothing was processed
                    stale_retry = False
                    continue
                error: OSError = ConnectionError("server closed the connection")
            except TimeoutError:
                conn.close()
                raise StoreUnavailable(
                    f"store server {self.url} did not answer {method} {path} within {timeout:.0f} s"
                ) from None
            except OSError as e:
                conn.close()
                error = e
            except _Malformed as e:
                raise StoreUnavailable(
                    f"the server at {self.url} sent a malformed HTTP response to {method} {path} ({e}); "
                    "check that the URL points at `tracerl serve` (and any proxy in between speaks HTTP/1.1)"
                ) from None
            except _TooLarge as e:
                raise StoreUnavailable(
                    f"the response of {self.url} to {method} {path} is over this client's limit of "
                    f"{self.max_response_bytes} bytes ({e}); ask for less (a smaller query limit, spans of one "
                    "attempt) or raise HttpStore(max_response_bytes=...)"
                ) from None
            else:
                if status >= 400:
                    raise error_from_response(status, data)
                try:
                    return loads(data) if data else None
                except ValueError as e:
                    raise StoreUnavailable(
                        f"the server at {self.url} answered {method} {path} with HTTP {status} but a body that is "
                        f"not JSON ({e}: {data[:100]!r}); check that the URL points at `tracerl serve`"
                    ) from None
            if retries_left <= 0:
                raise StoreUnavailable(
                    f"cannot reach the store server at {self.url} ({type(error).__name__}: {error}); "
                    "is `tracerl serve` running there? Start it or check the URL"
                )
            retries_left -= 1
            logger.debug("retrying %s %s in %.1f s after %r", method, path, delay, error)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- rollouts ----------------------------------------------------------------------------------
    def enqueue(self, specs: Sequence[RolloutSpec]) -> list[Rollout]:
        body = {"specs": [_spec_json(s) for s in specs]}
        keyed = all(s.idempotency_key for s in specs)
        out = self._call("POST", "/rollouts", body, idempotent=keyed)
        return [Rollout.from_json(r) for r in out["rollouts"]]

    def claim(
        self,
        worker_id: str,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        modes: Sequence[Mode] | None = None,
        wait_s: float = 0.0,
    ) -> Claim | None:
        lease_s = validate_lease(lease_s)
        validate_id(worker_id, "worker_id")
        try:
            mode_values = [Mode(m).value for m in modes] if modes else None
        except ValueError:
            raise InvalidInput(f"modes {modes!r} must be among {[m.value for m in Mode]}") from None
        deadline = time.monotonic() + _seconds(wait_s, "wait_s")
        while True:
            chunk = min(max(0.0, deadline - time.monotonic()), MAX_WAIT_PER_REQUEST_S)
            body = {"worker_id": worker_id, "lease_s": lease_s, "modes": mode_values, "wait_s": chunk}
            out = self._call("POST", "/claims", body, idempotent=False, wait_s=chunk)
            if out["claim"] is not None:
                return Claim.from_json(out["claim"])
            if deadline - time.monotonic() <= 0:
                return None

    def heartbeat(self, attempt_id: str, *, lease_s: float = DEFAULT_LEASE_S) -> Attempt:
        lease_s = validate_lease(lease_s)
        path = f"/attempts/{_seg(attempt_id, 'attempt_id')}/heartbeat"
        out = self._call("POST", path, {"lease_s": lease_s}, idempotent=True)
        return Attempt.from_json(out)

    def finish(
        self,
        attempt_id: str,
        status: AttemptStatus,
        *,
        reward: float | None = None,
        error: str | None = None,
    ) -> Rollout:
        reward = validate_reward(reward)
        value = status.value if isinstance(cast(object, status), AttemptStatus) else status  # or its str value
        body = {"status": value, "reward": reward, "error": error}
        out = self._call("POST", f"/attempts/{_seg(attempt_id, 'attempt_id')}/finish", body, idempotent=False)
        return Rollout.from_json(out)

    def release(self, attempt_id: str) -> Rollout:
        path = f"/attempts/{_seg(attempt_id, 'attempt_id')}/release"
        return Rollout.from_json(self._call("POST", path, idempotent=False))

    def cancel(self, rollout_id: str) -> Rollout:
        path = f"/rollouts/{_seg(rollout_id, 'rollout_id')}/cancel"
        return Rollout.from_json(self._call("POST", path, idempotent=False))

    def get_rollout(self, rollout_id: str) -> Rollout:
        return Rollout.from_json(self._call("GET", f"/rollouts/{_seg(rollout_id, 'rollout_id')}", idempotent=True))

    def get_attempts(self, rollout_id: str) -> list[Attempt]:
        out = self._call("GET", f"/rollouts/{_seg(rollout_id, 'rollout_id')}/attempts", idempotent=True)
        return [Attempt.from_json(a) for a in out["attempts"]]

    def query_rollouts(self, query: RolloutQuery) -> Page:
        try:
            body = query.to_json()
        except ValueError as e:
            raise InvalidInput(f"invalid rollout query: {e}") from None
        out = self._call("POST", "/rollouts/query", body, idempotent=True)
        items = [Rollout.from_json(r) for r in out["items"]]
        return Page(items=items, total=out["total"], offset=out["offset"], limit=out["limit"])

    def wait(self, rollout_ids: Sequence[str], *, timeout_s: float) -> list[Rollout]:
        ids = validate_ids(rollout_ids, "rollout_ids")
        deadline = time.monotonic() + _seconds(timeout_s, "timeout_s")
        while True:
            chunk = min(max(0.0, deadline - time.monotonic()), MAX_WAIT_PER_REQUEST_S)
            out = self._call("POST", "/rollouts/wait", {"rollout_ids": ids, "timeout_s": chunk}, idempotent=True,
                             wait_s=chunk)  # fmt: skip
            done = [Rollout.from_json(r) for r in out["rollouts"]]
            if len(done) == len(ids) or deadline - time.monotonic() <= 0:
                return done

    def expire_leases(self, now: float | None = None) -> list[Attempt]:
        """Expire leases that ran out by the server's clock; ``now`` is refused (a client cannot move it)."""
        if now is not None:
            raise InvalidInput(
                f"expire_leases(now={now!r}) is not possible over HTTP: the server expires leases by its own "
                "clock; call expire_leases() without now"
            )
        out = self._call("POST", "/leases/expire", None, idempotent=True)
        return [Attempt.from_json(a) for a in out["attempts"]]

    # -- spans -------------------------------------------------------------------------------------
    def add_spans(self, spans: Sequence[Span]) -> int:
        body = {"spans": [span_to_wire(validate_span(s)) for s in spans]}
        return int(self._call("POST", "/spans", body, idempotent=True)["added"])

    def get_spans(self, *, rollout_id: str | None = None, attempt_id: str | None = None) -> list[Span]:
        if (rollout_id is None) == (attempt_id is None):
            raise InvalidInput("get_spans needs exactly one of rollout_id or attempt_id")
        validate_id(rollout_id or attempt_id or "", "rollout_id" if rollout_id is not None else "attempt_id")
        params = {"encoding": "packed"}
        if rollout_id is not None:
            params["rollout_id"] = rollout_id
        if attempt_id is not None:
            params["attempt_id"] = attempt_id
        out = self._call("GET", f"/spans?{urlencode(params)}", idempotent=True)
        return [span_from_wire(s) for s in out["spans"]]

    def get_traces(self, rollout_ids: Sequence[str]) -> list[RolloutTrace]:
        ids = validate_trace_ids(rollout_ids)
        if not ids:
            return []
        out = self._call("POST", "/rollouts/traces", {"rollout_ids": ids, "encoding": "packed"}, idempotent=True)
        return [trace_from_wire(t) for t in out["traces"]]

    # -- resources ---------------------------------------------------------------------------------
    def put_resource(self, name: str, value: dict[str, Any]) -> Resource:
        validate_resource_name(name)
        validate_resource_value(value)
        out = self._call("PUT", f"/resources/{quote(name, safe='')}", {"value": value}, idempotent=False)
        return Resource.from_json(out)

    def get_resource(self, name: str, version: int | None = None) -> Resource:
        validate_resource_name(name)
        validate_version(version)
        query = "" if version is None else f"?version={version}"
        return Resource.from_json(self._call("GET", f"/resources/{quote(name, safe='')}{query}", idempotent=True))

    # -- experiment binding ------------------------------------------------------------------------
    def bind_experiment(self, name: str) -> None:
        validate_id(name, "experiment name")
        self._call("POST", "/experiment", {"name": name}, idempotent=True)

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = list(self._all), weakref.WeakSet()
        for conn in conns:
            conn.close()
        self._local = threading.local()


def _seg(value: str, what: str) -> str:
    """One URL path segment (ids are opaque strings)."""
    return quote(validate_id(value, what), safe="")


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidInput(f"{name} must be a number of seconds, got {value!r}")
    return max(0.0, float(value))


def _spec_json(spec: object) -> dict[str, Any]:
    if not isinstance(spec, RolloutSpec):
        raise InvalidInput(f"expected a RolloutSpec, got {type(spec).__name__}")
    validate_json_depth(spec.task, "rollout task")  # deeper than this cannot even be serialised
    validate_json_depth(spec.metadata, "rollout metadata")
    d = {k: getattr(spec, k) for k in _SPEC_FIELDS}  # the server checks and names bad fields
    d["mode"] = spec.mode.value if isinstance(cast(object, spec.mode), Mode) else spec.mode  # or its str value
    return d
