"""The HTTP store's client against a server that misbehaves: every fault is a :mod:`tracerl.errors` class.

A tiny raw-socket server on loopback answers every request with one canned byte string (a malformed or
oversized HTTP response) and closes; the client must raise :class:`StoreUnavailable` naming the fault —
never a bare ``ValueError`` — and must not read an oversized body.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tracerl.errors import StoreUnavailable
from tracerl.store.http import HttpStore

pytestmark = pytest.mark.timeout(60)


@contextmanager
def canned_server(response: bytes) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a server answering each request with ``response``, then closing."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)  # the request (small: one recv is enough here)
                    conn.sendall(response)
                except OSError:
                    pass  # the client gave up reading: fine

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


MALFORMED = {
    "bad Content-Length": (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}", "Content-Length b'abc'"),
    "negative Content-Length": (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n{}", "Content-Length b'-5'"),
    "bad chunk size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", "chunk size"),
    "chunk longer than declared": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n", "longer than its declared"),
    "garbage status line": (b"HELLO THERE\r\n\r\n", "status line b'HELLO THERE"),
    "status not a number": (b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}", "not HTTP/1.x"),
    "endless header line": (b"HTTP/1.1 200 OK\r\nX-Junk: " + b"a" * 70_000 + b"\r\n\r\n", "longer than 65536"),
    "too many headers": (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", "more than 100 header"),
    "2xx body not JSON": (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n<html/>!!", "not JSON"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_response_is_store_unavailable_naming_the_fault(case: str) -> None:
    response, detail = MALFORMED[case]
    with canned_server(response) as url:
        store = HttpStore(url, retries=0)
        with pytest.raises(StoreUnavailable) as info:
            store.get_rollout("ro-1")
        store.close()
    message = str(info.value)
    assert detail in message, message
    assert url in message and "GET /rollouts/ro-1" in message


OVERSIZED = {
    "declared length": b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n{}",
    "chunks adding up": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"200\r\n" + b"x" * 512 + b"\r\n" + b"200\r\n" + b"x" * 512 + b"\r\n0\r\n\r\n",
    "read to close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"x" * 2000,
}  # fmt: skip


@pytest.mark.parametrize("case", list(OVERSIZED))
def test_response_over_the_size_bound_is_refused_with_a_clear_error(case: str) -> None:
    with canned_server(OVERSIZED[case]) as url:
        store = HttpStore(url, retries=0, max_response_bytes=1000)
        with pytest.raises(StoreUnavailable, match="over this client's limit of 1000 bytes") as info:
            store.get_rollout("ro-1")
        store.close()
    assert "max_response_bytes" in str(info.value)


def test_a_good_response_after_the_checks_still_parses() -> None:
    body = b'{"name": "prompt", "version": 2, "value": {"text": "hi"}, "created_at": 1.0}'
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with canned_server(chunked) as url:
        store = HttpStore(url, retries=0)
        resource = store.get_resource("prompt")
        store.close()
    assert resource.version == 2 and resource.value == {"text": "hi"}
