"""``tracerl runner``: run agent worker processes against a store until stopped.

    tracerl runner --agent my_agents:sql_agent --store sqlite:///runs/sql.db --gateway http://127.0.0.1:8000 -n 4
    TRACERL_TOKEN=... tracerl runner --agent my_agents:sql_agent --store http://trainer:8765 \
        --gateway http://trainer:8765 -n 4      # a `tracerl serve --token ...` on another machine
    tracerl runner --config runner.toml        # the same settings from a file (tracerl.runner.config_file)
    tracerl runner --ray HEAD:6379 --actors 8 -n 4 ...   # 8 Ray actors of 4 workers (tracerl.runner.ray_pool)

The token (``--token``, default ``$TRACERL_TOKEN``; prefer the variable, which ``ps`` does not show) goes to
the HTTP store and, unless ``--api-key`` is given, to the agents as their API key for the gateway, which the
same server guards. It is never printed.

The agent module is imported from the current directory (or ``--app-dir``) and the Python path. SIGTERM or
Ctrl-C stops claiming and gives running rollouts ``--grace`` seconds to finish; the rest are ended as
failed and requeued (see :mod:`tracerl.runner.pool`). A second Ctrl-C ends them at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from tracerl.errors import ConfigError
from tracerl.runner.config_file import load_runner_file
from tracerl.runner.pool import DEFAULT_GRACE_S, DEFAULT_LEASE_S, DEFAULT_TIMEOUT_S, Runner
from tracerl.runner.ray_pool import RayRunners


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="read settings from the [runner] table of this TOML file (options given here win)")
    parser.add_argument("--agent", metavar="MODULE:FUNCTION", help="the agent to run (here or in --config)")
    parser.add_argument(
        "--store", metavar="URL", help="store URL: sqlite:///…, postgresql://…, http://… (here or in --config)"
    )
    parser.add_argument("--gateway", metavar="URL", default=None, help="gateway URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("-n", "--workers", type=int, default=1, help="rollouts to run in parallel (default 1)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S", help="per-rollout time limit in seconds"
    )
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE_S, metavar="S", help="lease length in seconds")
    parser.add_argument(
        "--grace", type=float, default=DEFAULT_GRACE_S, metavar="S", help="seconds running rollouts get on SIGTERM"
    )
    parser.add_argument(
        "--prefetch", type=int, default=None, metavar="N",
        help="claims held ahead for busy workers, taken in batches (default: -n; 0: claim only when a worker is free)",
    )  # fmt: skip
    parser.add_argument("--mode", action="append", choices=["train", "val", "test"], help="only claim these modes")
    parser.add_argument("--model", default="default", help="model name the agent is given (default 'default')")
    parser.add_argument(
        "--token", default=None, help="bearer token of a `tracerl serve --token` server (default: $TRACERL_TOKEN)"
    )
    parser.add_argument(
        "--api-key", default=None, help="API key the agent is given (default: the token if set, else 'tracerl')"
    )
    parser.add_argument("--temperature", type=float, default=None, help="default sampling temperature")
    parser.add_argument("--max-tokens", type=int, default=None, help="default max_tokens")
    parser.add_argument("--app-dir", default=".", help="directory to import the agent module from (default: .)")
    ray = parser.add_argument_group("Ray (pip install 'tracerl[ray]')")
    ray.add_argument("--ray", metavar="ADDRESS", default=None,
                     help="run the workers as Ray actors on this cluster (auto, HOST:PORT, ray://HOST:10001)")
    ray.add_argument("--actors", type=int, default=1, help="Ray actors to start, each with -n workers (default 1)")
    ray.add_argument("--actor-cpus", type=float, default=None, help="CPUs Ray reserves per actor (default: -n)")
    ray.add_argument("--ray-working-dir", default=None, metavar="DIR",
                     help="folder Ray ships to every actor and puts on its path (the agent's code)")


def with_config_file(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the values of ``--config FILE`` filled in wherever the command line left the default."""
    if args.config:
        defaults = argparse.ArgumentParser()
        add_arguments(defaults)
        default = vars(defaults.parse_args([]))
        for key, value in load_runner_file(args.config).items():
            if getattr(args, key) == default[key]:
                setattr(args, key, value)
    missing = [f"--{k}" for k in ("agent", "store") if not getattr(args, k)]
    if missing:
        raise ConfigError(f"tracerl runner needs {' and '.join(missing)} (on the command line or in --config FILE)")
    return args


def main(args: argparse.Namespace) -> int:
    args = with_config_file(args)
    if args.store.lower().startswith("memory://"):
        raise ConfigError(
            "a memory:// store lives inside one process, so a separate runner cannot share it; "
            "use sqlite:///path.db, postgresql://... or http://host:port (a running `tracerl serve`)"
        )
    token = args.token or os.environ.get("TRACERL_TOKEN") or None
    if token:
        os.environ["TRACERL_TOKEN"] = token  # HttpStore (here and in anything it starts) reads it from there
    sys.path.insert(0, str(Path(args.app_dir).resolve()))
    sampling = {k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens)) if v is not None}
    options = dict(
        timeout_s=args.timeout, lease_s=args.lease, modes=args.mode, model=args.model,
        api_key=args.api_key or token or "tracerl", sampling=sampling, grace_s=args.grace, prefetch=args.prefetch,
    )  # fmt: skip
    runner: Runner | RayRunners
    if args.ray:
        runner = RayRunners(
            args.agent, args.store, args.gateway, address=args.ray, actors=args.actors,
            workers_per_actor=args.workers, num_cpus=args.actor_cpus, working_dir=args.ray_working_dir,
            token=token, **options,
        )  # fmt: skip
    else:
        runner = Runner(args.agent, args.store, args.gateway, n_workers=args.workers, **options)
    stop = threading.Event()
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:  # a second Ctrl-C/SIGTERM: do not wait for the grace period
            runner.abort()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.start()
    if args.ray:  # connecting to Ray may install its own handlers: ours decide how runners stop
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    where = f" in {args.actors} Ray actor(s) on {args.ray}" if args.ray else ""
    print(f"tracerl runner: {args.workers} worker(s){where} running {args.agent} against {args.store}",
          file=sys.stderr, flush=True)  # fmt: skip
    while not stop.wait(0.5) and runner.alive:
        pass
    runner.stop_claiming()
    print(
        f"tracerl runner: stopping; no new claims, running rollouts get {args.grace:g}s to finish",
        file=sys.stderr,
        flush=True,
    )
    stats = runner.stop()
    print(
        f"tracerl runner stopped: {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.timeout} timed out, {stats.lost} lost",
        file=sys.stderr,
    )
    return 1 if runner.errors else 0
