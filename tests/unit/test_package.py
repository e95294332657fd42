"""The package imports lightly and its CLI answers without loading heavy dependencies."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "psycopg", "starlette", "peft", "openai")


def test_import_tracerl_does_not_load_heavy_dependencies() -> None:
    code = (
        "import sys, tracerl\n"
        "tracerl.connect('memory://')\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import tracerl pulled in: {out.stdout.strip()}"


def test_cli_help_lists_every_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "tracerl", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "serve", "runner", "train", "export", "bench"):
        assert command in out.stdout


def test_unknown_store_scheme_names_the_fix() -> None:
    import pytest

    import tracerl
    from tracerl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown store scheme 'redis'.*sqlite:///"):
        tracerl.connect("redis://localhost")
    with pytest.raises(ConfigError, match="has no scheme"):
        tracerl.connect("runs/x.db")
