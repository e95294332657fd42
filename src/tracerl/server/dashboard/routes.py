"""The dashboard's HTTP routes: three static files and a small read-only JSON API.

* ``GET /`` — the page (``static/index.html``), ``GET /ui/app.js`` and ``/ui/style.css``. These hold no
  data and are served without a token (:data:`PUBLIC_PATHS`), so a browser can load them by navigation;
* ``GET /dash/api/...`` — everything the page shows, behind the server's bearer token like the store API.
  The page asks for the token in a form, keeps it in ``sessionStorage`` of that tab and sends it as
  ``Authorization: Bearer`` on each ``fetch``: it never appears in a URL (nor, therefore, in any access
  log, browser history or ``Referer``), and a wrong one gets the same 401 as the API.

Live updates poll (every few seconds, only while the tab is visible) rather than use server-sent events:
``EventSource`` cannot send an ``Authorization`` header, so SSE would need the token in the URL or a cookie
— polling keeps the one auth path, and a page of 50 rows costs a few milliseconds to refresh.

JSON API (all ``GET``)::

    /dash/api/summary                          rollout counts by status × mode, resource names, runs
    /dash/api/rollouts?status=&mode=&group=&version=&sort=&dir=&offset=&limit=
    /dash/api/rollouts/{id}?returns=&gamma=&advantage=     attempts, span tree, credit per call
    /dash/api/runs/{path}                      a run's metrics.jsonl records
    /dash/api/resources/{name}                 versions with diffs
"""

from __future__ import annotations

from importlib import resources as package_files
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracerl.errors import InvalidInput
from tracerl.server.calls import Calls
from tracerl.server.dashboard import reader
from tracerl.store.base import Store
from tracerl.store.wire import dumps

ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/ui/style.css": ("style.css", "text/css; charset=utf-8")}
PUBLIC_PATHS = frozenset(ASSETS)
"""Paths served without a token: the page's code, never data."""


def _asset(name: str) -> bytes:
    return package_files.files("tracerl.server.dashboard").joinpath("static", name).read_bytes()


def routes(store: Store, *, runs_dir: str | Path | None = None, tokenizer: Any = None) -> list[Route]:
    """The dashboard's routes over ``store``; ``runs_dir`` holds run folders (``metrics.jsonl``);
    ``tokenizer`` (optional, a transformers tokenizer) turns response token ids into text for the heat strip."""
    call = Calls(store)  # store reads off the event loop; file reads (runs) go to worker threads
    runs = Path(runs_dir) if runs_dir is not None else None
    cache = {path: _asset(name) for path, (name, _) in ASSETS.items()}

    async def asset(request: Request) -> Response:
        path = request.url.path
        return Response(cache[path], media_type=ASSETS[path][1], headers={"cache-control": "no-cache"})

    async def summary(_: Request) -> Response:
        counts = await call(reader.rollout_counts, store)
        names = await call(reader.resource_names, store)
        found = await anyio.to_thread.run_sync(reader.find_runs, runs)
        return _json({"store": store.url, "counts": counts, "resources": names, "runs": found})

    async def table(request: Request) -> Response:
        q = reader.TableQuery.from_params(dict(request.query_params))
        return _json(await call(reader.rollout_table, store, q))

    async def rollout(request: Request) -> Response:
        p = request.query_params
        mode = await anyio.to_thread.run_sync(reader.run_credit_mode, runs)
        try:
            gamma = float(p.get("gamma") or mode["gamma"])
        except ValueError:
            raise InvalidInput(f"gamma={p.get('gamma')!r} is not a number") from None
        chosen = any(p.get(k) for k in ("returns", "gamma", "advantage"))
        detail = await call(
            reader.rollout_detail, store, request.path_params["rollout_id"],
            returns=p.get("returns") or mode["returns"], gamma=gamma, advantage=p.get("advantage") or mode["advantage"],
            tokenizer=tokenizer,
        )
        detail["credit"]["mode"]["source"] = "chosen on this page" if chosen else mode["source"]
        return _json(detail)

    async def run(request: Request) -> Response:
        return _json(await anyio.to_thread.run_sync(reader.run_metrics, runs, request.path_params["path"]))

    async def resource(request: Request) -> Response:
        return _json(await call(reader.resource_history, store, request.path_params["name"]))

    return [
        *(Route(path, asset, methods=["GET"], include_in_schema=False) for path in ASSETS),
        Route("/dash/api/summary", summary, methods=["GET"], include_in_schema=False),
        Route("/dash/api/rollouts", table, methods=["GET"], include_in_schema=False),
        Route("/dash/api/rollouts/{rollout_id:path}", rollout, methods=["GET"], include_in_schema=False),
        Route("/dash/api/runs/{path:path}", run, methods=["GET"], include_in_schema=False),
        Route("/dash/api/resources/{name:path}", resource, methods=["GET"], include_in_schema=False),
    ]


def _json(value: Any) -> Response:
    return Response(dumps(value), media_type="application/json", headers={"cache-control": "no-store"})
