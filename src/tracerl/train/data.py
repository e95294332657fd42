"""Task loading for runs: a JSONL file (one task object per line) or a built-in dataset name.

Built-in names are ``DATASET:SPLIT`` or ``DATASET:SPLIT:N`` (the first N tasks of the split):

* ``demo-arithmetic:train`` / ``demo-arithmetic:val`` — :mod:`tracerl.tasks.arithmetic` (default N: 2000 / 48);
* ``demo-toy:train`` / ``demo-toy:val`` — :mod:`tracerl.tasks.toy` (default N: 64 / 16).

The same reader loads SFT demonstrations (a JSONL file of ``{"messages": [...], "tools": [...]}`` objects):
:func:`read_jsonl`; the examples' own question and document files use :func:`read_jsonl_lines`, which keeps
each object's line number for their messages. :func:`interleaved_order` orders tasks so that every prefix holds
each kind in its share (the Trainer's ``balance_by``).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, cast

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


def read_jsonl(path: str | PathLike[str], *, what: str = "task") -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file (blank lines skipped); :class:`ConfigError` names a bad line."""
    return [obj for _, obj in read_jsonl_lines(path, what=what)]


def read_jsonl_lines(path: str | PathLike[str], *, what: str = "task") -> list[tuple[int, dict[str, Any]]]:
    """:func:`read_jsonl` with each object's line number (from 1), for a caller that checks the objects and
    names the line at fault (``f"{path}:{line} needs ..."``). ``what`` names an object in the errors: a
    missing or empty file, a line that is not JSON or not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist")
    out: list[tuple[int, dict[str, Any]]] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{i} is not valid JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}:{i} is a {type(obj).__name__}; each line must be a JSON object (a {what})")
        out.append((i, cast("dict[str, Any]", obj)))
    if not out:
        raise ConfigError(f"{what} file {str(path)!r} is empty")
    return out


def interleaved_order(values: Sequence[Hashable]) -> list[int]:
    """The indices of ``values`` reordered so that every prefix holds each distinct value in its share of the
    whole, each value's indices in their original order.

    The i-th of a value's n indices is placed at (i + ½)/n of the way through (ties: the value that appears first
    comes first), so for ``["a", "a", "b", "a", "a", "b"]`` (4 a, 2 b) the order is a, b, a, a, b, a: indices
    0, 2, 1, 3, 5, 4.
    """
    by_value: dict[Hashable, list[int]] = {}
    for i, value in enumerate(values):
        by_value.setdefault(value, []).append(i)
    placed = [((k + 0.5) / len(group), rank, i) for rank, group in enumerate(by_value.values())
              for k, i in enumerate(group)]
    return [i for *_, i in sorted(placed)]
