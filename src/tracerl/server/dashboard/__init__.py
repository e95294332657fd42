"""The dashboard of ``tracerl serve``: runs, rollouts, one rollout's calls and credit, charts, resources.

Served at ``/`` by the same app as the store API (:func:`tracerl.server.app.create_app`), offline: the page
is three files shipped in the package (``static/``: HTML, ~400 lines of plain JavaScript, CSS; no framework,
no CDN, no build step — nothing to rebuild or to go stale, and a reviewer reads what runs), drawing its charts
as SVG. The data comes from a read-only JSON API behind the server's token (:mod:`.routes`), read from the
store and the runs folder by :mod:`.reader`.

    tracerl serve --store sqlite:///runs/x.db --runs runs/        # then open http://127.0.0.1:8765/
"""
