"""Typed doors to the few torch calls whose own annotations are incomplete (``tolist() -> list[Any]``,
unannotated ``seed``/``closure`` parameters), so the algorithms type-check under pyright strict.

Each is the torch call itself behind a cast to the signature tracerl relies on; nothing is computed here.
This module is the one place where torch's partial annotations are let in (the line-level
``reportUnknownMemberType`` ignores below); everything else calls these::

    rewards = floats(r_t)          # (T,) float tensor -> list[float]
    manual_seed(0)                 # torch.manual_seed: every device's generator
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def floats(t: Tensor) -> list[float]:
    """``t.tolist()`` of a 1-D floating tensor."""
    return cast("Callable[[], list[float]]", t.tolist)()  # pyright: ignore[reportUnknownMemberType]


def ints(t: Tensor) -> list[int]:
    """``t.tolist()`` of a 1-D integer tensor."""
    return cast("Callable[[], list[int]]", t.tolist)()  # pyright: ignore[reportUnknownMemberType]


def manual_seed(seed: int) -> None:
    """``torch.manual_seed(seed)`` (seeds the CPU and every accelerator's default generator)."""
    cast("Callable[[int], object]", torch.manual_seed)(seed)  # pyright: ignore[reportUnknownMemberType]


def unique_consecutive(t: Tensor) -> Tensor:
    """``torch.unique_consecutive(t)``: ``t`` with each run of equal consecutive values kept once."""
    return cast("Callable[[Tensor], Tensor]", torch.unique_consecutive)(t)  # pyright: ignore[reportUnknownMemberType]


def all_reduce_sum(t: Tensor) -> None:
    """``torch.distributed.all_reduce(t, op=SUM)``: ``t`` becomes its element-wise sum over all ranks."""
    cast("Callable[[Tensor, object], object]", dist.all_reduce)(t, dist.ReduceOp.SUM)  # pyright: ignore[reportUnknownMemberType]


def all_gather_object(parts: list[T | None], obj: T) -> None:
    """``torch.distributed.all_gather_object(parts, obj)``: ``parts[r]`` becomes rank r's ``obj``."""
    cast("Callable[[list[T | None], T], None]", dist.all_gather_object)(parts, obj)  # pyright: ignore[reportUnknownMemberType]


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """``safetensors.torch.save_file(tensors, path)`` (contiguous CPU tensors)."""
    from safetensors.torch import save_file  # pyright: ignore[reportUnknownVariableType]

    cast("Callable[[dict[str, Tensor], str], None]", save_file)(tensors, str(path))


def load_tensors(path: Path) -> dict[str, Tensor]:
    """``safetensors.torch.load_file(path)`` onto the CPU."""
    from safetensors.torch import load_file  # pyright: ignore[reportUnknownVariableType]

    return cast("Callable[[str], dict[str, Tensor]]", load_file)(str(path))


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` (no closure)."""
    cast("Callable[[], object]", optimizer.step)()  # pyright: ignore[reportUnknownMemberType]
