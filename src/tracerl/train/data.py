"""Task loading for runs: a JSONL file (one task object per line) or a built-in dataset name.

Built-in names are ``DATASET:SPLIT`` or ``DATASET:SPLIT:N`` (the first N tasks of the split):

* ``demo-arithmetic:train`` / ``demo-arithmetic:val`` — :mod:`tracerl.tasks.arithmetic` (default N: 2000 / 48);
* ``demo-toy:train`` / ``demo-toy:val`` — :mod:`tracerl.tasks.toy` (default N: 64 / 16).

The same reader loads SFT demonstrations (a JSONL file of ``{"messages": [...], "tools": [...]}`` objects):
:func:`read_jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError

_DEFAULT_SIZES = {"train": {"demo-arithmetic": 2000, "demo-toy": 64}, "val": {"demo-arithmetic": 48, "demo-toy": 16}}


def load_tasks(ref: str) -> list[dict[str, Any]]:
    """The tasks named by ``ref`` (a ``.jsonl`` path or a built-in name, see the module docstring)."""
    if ref.endswith(".jsonl") or Path(ref).is_file():
        return read_jsonl(Path(ref), what="task")
    parts = ref.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("demo-arithmetic", "demo-toy") or parts[1] not in ("train", "val"):
        raise ConfigError(
            f"tasks {ref!r} is neither a .jsonl file nor a built-in dataset; use a path to a JSONL file or one of "
            "demo-arithmetic:train, demo-arithmetic:val, demo-toy:train, demo-toy:val (optionally :N)"
        )
    name, split = parts[0], parts[1]
    try:
        n = int(parts[2]) if len(parts) == 3 else _DEFAULT_SIZES[split][name]
    except ValueError:
        raise ConfigError(f"the task count in {ref!r} must be an integer, got {parts[2]!r}") from None
    if name == "demo-arithmetic":
        from tracerl.tasks.arithmetic import make_tasks
    else:
        from tracerl.tasks.toy import make_tasks
    return make_tasks(split, n)


def read_jsonl(path: str | Path, *, what: str = "task") -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file (blank lines skipped); :class:`ConfigError` names a bad line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist")
    tasks: list[dict[str, Any]] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{i} is not valid JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(task, dict):
            raise ConfigError(f"{path}:{i} is a {type(task).__name__}; each line must be a JSON object (a {what})")
        tasks.append(task)
    if not tasks:
        raise ConfigError(f"{what} file {str(path)!r} is empty")
    return tasks
