"""``tracerl serve``: run the store server (REST API, OTLP ingest; the gateway joins when a model is given).

    tracerl serve                                   # sqlite:///.tracerl/store.db on http://127.0.0.1:8765
    tracerl serve --store postgresql://localhost/db --host 0.0.0.0 --token "$SECRET"

Safety rails: binding anything but a loopback address without a token is refused (the API can enqueue,
cancel and read every rollout); the token may come from ``TRACERL_TOKEN`` instead of the command line so
it does not show in ``ps``. The port is bound before the app starts, so a port in use is one clear error
line naming the port, not a traceback.

:func:`build_app` is the hook the gateway plugs into: it builds the app for a store URL with an optional
gateway router. ``--model NAME`` serves a trainable model (``tiny-random``, ``smollm2-135m`` or an HF folder)
token-in/token-out at ``/r/{rollout}/{attempt}/v1``; ``--upstream URL`` forwards to any OpenAI-compatible
endpoint instead (frozen: judges, evaluation).

    tracerl serve --runs runs/                      # dashboard at http://127.0.0.1:8765/: charts runs/*/metrics.jsonl
    tracerl serve --model smollm2-135m              # store + gateway; agents use base_url .../r/{r}/{a}/v1
    tracerl serve --upstream http://127.0.0.1:8000/v1 --upstream-model my-model
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tracerl.errors import ConfigError
from tracerl.store import Store, connect

if TYPE_CHECKING:
    from fastapi import APIRouter
    from starlette.applications import Starlette

logger = logging.getLogger(__name__)

DEFAULT_STORE = "sqlite:///.tracerl/store.db"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
KEEP_ALIVE_S = 120  # idle keep-alive connections live this long (clients reconnect after idle)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"store URL to serve (default: {DEFAULT_STORE})")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0 = any free)")
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token clients must send (default: $TRACERL_TOKEN); required for non-loopback hosts",
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=8.0, help="largest request body accepted, in MiB (default: 8)"
    )
    gw = parser.add_mutually_exclusive_group()
    gw.add_argument("--model", help="serve this model through the gateway (tiny-random, smollm2-135m, or a folder)")
    gw.add_argument("--upstream", help="serve the gateway by forwarding to this OpenAI-compatible base URL")
    parser.add_argument("--upstream-model", help="model name to pass to --upstream (default: what clients send)")
    parser.add_argument("--upstream-key", default=None, help="API key for --upstream (default: $OPENAI_API_KEY)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="--model: requests batched together (default 8)")
    parser.add_argument("--runs", default=None, help="dashboard: folder of run folders (metrics.jsonl) to chart")
    parser.add_argument(
        "--tokenizer", default=None, help="dashboard: HF tokenizer folder to show response tokens as text"
    )


def main(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("TRACERL_TOKEN") or None
    check_exposure(args.host, token)
    sock = bind(args.host, args.port)
    store = open_store(args.store)
    try:
        router = gateway_router(store, args)
        app = build_app(
            store, token=token, max_body_bytes=int(args.max_body_mb * 1024 * 1024), gateway_router=router,
            runs_dir=getattr(args, "runs", None), tokenizer=dashboard_tokenizer(getattr(args, "tokenizer", None)),
        )
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        # store.url, not args.store: backends redact passwords from it
        print(f"tracerl serve: listening on http://{shown}:{port} (store {store.url})", flush=True)
        print(f"tracerl serve: dashboard at http://{shown}:{port}/", flush=True)
        _run(app, sock)
    finally:
        store.close()
    return 0


def build_app(
    store: Store,
    *,
    token: str | None = None,
    max_body_bytes: int = 8 * 1024 * 1024,
    gateway_router: APIRouter | None = None,
    runs_dir: str | None = None,
    tokenizer: object = None,
) -> Starlette:
    """The ASGI app for ``store``; ``gateway_router`` (a FastAPI ``APIRouter``) adds the gateway's routes;
    ``runs_dir`` and ``tokenizer`` feed the dashboard."""
    from tracerl.server.app import create_app

    return create_app(
        store, token=token, max_body_bytes=max_body_bytes, gateway_router=gateway_router, runs_dir=runs_dir,
        tokenizer=tokenizer,
    )


def dashboard_tokenizer(folder: str | None) -> object:
    """The tokenizer in ``folder`` (offline), or ``None``; ``ConfigError`` naming the folder if it cannot load."""
    if not folder:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (ImportError, OSError, ValueError) as e:
        raise ConfigError(
            f"--tokenizer {folder!r}: cannot load a tokenizer from it ({e}); pass a folder holding "
            "tokenizer.json (a model folder), or leave --tokenizer out to show token ids"
        ) from None


def gateway_router(store: Store, args: argparse.Namespace) -> APIRouter | None:
    """The gateway's routes for ``--model`` or ``--upstream``; ``None`` when neither is given."""
    model = getattr(args, "model", None)
    upstream = getattr(args, "upstream", None)
    if not model and not upstream:
        return None
    from tracerl.gateway.app import build_gateway_router

    if model:
        from tracerl.engines import create_engine

        print(f"tracerl serve: loading {model} ...", flush=True)
        engine = create_engine(model, max_batch_size=args.max_batch_size)
        return build_gateway_router(store, engine, model_name=model)
    from tracerl.engines.openai import OpenAIUpstream

    key = args.upstream_key or os.environ.get("OPENAI_API_KEY")
    return build_gateway_router(store, OpenAIUpstream(str(upstream), api_key=key, model=args.upstream_model))


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to bind a non-loopback ``host`` without a token."""
    if token or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to bind {host!r} without a token: anyone who can reach it could read and change the store. "
        "Pass --token SECRET (or set TRACERL_TOKEN), or bind 127.0.0.1"
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``ConfigError`` naming the port and the fix if it is taken."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port number (0-65535)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # lets a restart reuse a TIME_WAIT port
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another tracerl serve?). Stop that process, "
                f"or pick another port with --port (e.g. --port {port + 1}, or --port 0 for any free port)"
            ) from None
        if e.errno == errno.EACCES:
            raise ConfigError(f"no permission to bind {host}:{port}; use a port ≥ 1024") from None
        raise ConfigError(f"cannot bind {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def open_store(url: str) -> Store:
    """Open ``url``, creating the parent folder of a sqlite file first."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return connect(url)


def _run(app: object, sock: socket.socket) -> None:
    import uvicorn

    from tracerl.server.limits import MAX_HEAD_BYTES, http_protocol

    loop = "uvloop" if _has("uvloop") else "asyncio"
    config = uvicorn.Config(
        app,  # pyright: ignore[reportArgumentType]
        loop=loop,
        http=http_protocol(),  # httptools with header limits (431), see tracerl.server.limits
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        access_log=False,
        log_level=logging.getLogger().getEffectiveLevel(),
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=10,
        proxy_headers=False,  # X-Forwarded-* are not trusted (and parsing them costs on every request)
        server_header=False,
        date_header=False,
        lifespan="on",
        log_config=None,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        print("tracerl serve: the server failed to start (see the log above)", file=sys.stderr)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
