"""Limits on a request's head (request line and headers) for ``tracerl serve``, enforced in the HTTP parser.

uvicorn's httptools protocol buffers a header line of any length and any number of headers before the app
(and so the token check) runs: one connection sending a 256 MiB header line grew the server by 437 MiB.
:class:`LimitedHttpToolsProtocol` counts the bytes of each request head as they arrive and feeds the parser
no more than :data:`MAX_HEAD_BYTES` of it; a head that is larger, or that has more than
:data:`MAX_HEADERS` headers, is answered ``431 Request Header Fields Too Large`` (a JSON error, like every
other error of the server) and the connection is closed. Nothing is allocated beyond the limit and the
event loop never works on more than it, so other clients are not slowed down.

Without httptools, uvicorn's h11 parser is used with the same byte limit
(``h11_max_incomplete_event_size``); h11 has no header count limit of its own.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import Any

from tracerl.errors import InvalidInput
from tracerl.store.wire import error_body

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
"""Largest request line plus headers, in bytes (HTTP servers commonly allow 8-64 KiB)."""
MAX_HEADERS = 256
"""Most headers in one request."""


def http_protocol() -> type[asyncio.Protocol] | str:
    """What to pass as uvicorn's ``http``: the limited httptools protocol, or ``"h11"`` without httptools."""
    if importlib.util.find_spec("httptools") is None:
        return "h11"
    return _limited_httptools_protocol()


def head_too_large_response(why: str) -> bytes:
    """A complete ``431`` response (JSON error, ``Connection: close``) saying ``why`` and the fix."""
    body = error_body(
        InvalidInput(f"request header section refused: {why}; send fewer or smaller headers (a long URL counts)")
    )
    head = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    )
    return head + body


def _limited_httptools_protocol() -> type[asyncio.Protocol]:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class TooManyHeaders(Exception):
        """Raised from the parser callback to stop parsing at the header that is one too many."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with :data:`MAX_HEAD_BYTES` and :data:`MAX_HEADERS` enforced."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True
            self._head_bytes = 0
            self._header_count = 0

        def data_received(self, data: bytes) -> None:
            if self._in_head and self._head_bytes + len(data) > MAX_HEAD_BYTES:
                room = MAX_HEAD_BYTES - self._head_bytes
                self._head_bytes = MAX_HEAD_BYTES
                if not self._feed(data[:room]):
                    return
                if self._in_head:  # the head did not end within the limit
                    self._refuse(f"it is over {MAX_HEAD_BYTES} bytes")
                    return
                data = data[room:]
            elif self._in_head:
                self._head_bytes += len(data)
            self._feed(data)

        def _feed(self, data: bytes) -> bool:
            """``HttpToolsProtocol.data_received`` plus the 431 for too many headers; ``False`` if it closed."""
            self._unset_keepalive_if_required()
            parser = self.parser
            assert parser is not None
            try:
                parser.feed_data(data)
            except httptools.HttpParserCallbackError as e:
                if isinstance(e.__context__, TooManyHeaders):
                    self._refuse(f"it has more than {MAX_HEADERS} headers")
                else:
                    self._invalid()
                return False
            except httptools.HttpParserError:
                self._invalid()
                return False
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
            return not self.transport.is_closing()

        def _invalid(self) -> None:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)

        def _refuse(self, why: str) -> None:
            logger.warning("refused a request from %s: header section %s", self.client, why)
            self.transport.write(head_too_large_response(why))
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._header_count = 0

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > MAX_HEADERS:
                raise TooManyHeaders
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True  # the next request on this connection starts its own head
            self._head_bytes = 0

    return LimitedHttpToolsProtocol
