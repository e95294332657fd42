"""The trainer's progress bar (rich): steps done, what the loop is doing, last train and held-out reward.

Shown only when enabled and writing to a terminal-capable console; otherwise every method is a no-op, so
the loop calls it unconditionally. Library code does not print otherwise (it logs).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any


class StepProgress:
    """``with StepProgress(total_steps) as p: ... p.step_done(step, record)``."""

    def __init__(self, total: int, *, start: int = 0, enabled: bool = True) -> None:
        self.total = total
        self.start = start
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._train = "–"
        self._val = "–"
        self._doing = ""

    def __enter__(self) -> StepProgress:
        if not self.enabled:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self._progress.__enter__()
        self._task = self._progress.add_task("train", total=self.total, completed=self.start, info="starting")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def _info(self, doing: str) -> str:
        return f"reward {self._train} · held-out {self._val} · {doing}"

    def status(self, doing: str) -> None:
        self._doing = doing
        if self._progress is not None:
            self._progress.update(self._task, info=self._info(doing))

    def rollouts(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, info=self._info(f"{self._doing} {done}/{total}"))

    def step_done(self, step: int, record: dict[str, Any]) -> None:
        reward = record.get("reward_mean")
        if reward is not None:
            self._train = f"{reward:.3f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=self._info(f"step {step} done"))

    def validated(self, step: int, value: float) -> None:
        self._val = f"{value:.3f}"
        if self._progress is not None:
            self._progress.update(self._task, info=self._info(f"validated at step {step}"))
