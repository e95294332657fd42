"""``tracerl serve``: the store over HTTP, OpenTelemetry (OTLP/HTTP) ingest, and the gateway's front door.

* :mod:`tracerl.server.app` — :func:`create_app` builds the ASGI app (auth, size limits, JSON errors,
  background lease expiry) around a :class:`~tracerl.store.Store`;
* :mod:`tracerl.server.api` — the REST routes under ``/api/v1`` for the whole store contract;
* :mod:`tracerl.server.calls` — store calls off the event loop (threads per lane);
* :mod:`tracerl.server.reads` — bulk reads (big query pages, traces) in a child process of their own;
* :mod:`tracerl.server.otlp` — ``POST /v1/traces`` (protobuf and JSON) into store spans;
* :mod:`tracerl.server.run` — the ``tracerl serve`` command;
* :mod:`tracerl.server.testing` — start a real server subprocess for tests.

Importing this package is light; FastAPI loads only when :mod:`tracerl.server.app` does.
"""
