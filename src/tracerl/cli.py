"""The ``tracerl`` command line: one entry point, one subcommand per job.

Each subcommand lives in the module that owns the job and exposes ``add_arguments(parser)`` and
``main(args) -> int``; this file only wires them together, so ``tracerl --help`` stays fast (no torch,
transformers or FastAPI is imported until a subcommand runs).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tracerl.demo", "train a small agent on this CPU and show its held-out reward rise"),
    "serve": ("tracerl.server.run", "run the store server (REST API, OTLP ingest) and optionally the gateway"),
    "runner": ("tracerl.runner.cli", "run agent worker processes against a store"),
    "train": ("tracerl.train.cli", "run a training job (one or several stages) from a TOML config"),
    "export": ("tracerl.export", "export recorded transitions to JSONL or Parquet"),
    "bench": ("tracerl.bench", "run tracerl's own benchmarks"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracerl", description="Reinforcement learning for unchanged AI agents.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and e.name.startswith("tracerl"):
                p.set_defaults(_missing=f"'tracerl {name}' is not available in this build ({e.name} is missing)")
                continue
            raise
        mod.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(logging.WARNING - 10 * min(args.verbose, 2))
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    from tracerl.errors import TracerlError

    try:
        return int(mod.main(args) or 0)
    except TracerlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _setup_logging(level: int) -> None:
    """Log records on stderr; on a terminal through the console progress bars use, so they print above a
    running bar instead of breaking it."""
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from tracerl.train.progress import console

        logging.basicConfig(level=level, format="%(name)s: %(message)s", datefmt="%X",
                            handlers=[RichHandler(console=console(), show_path=False)])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
