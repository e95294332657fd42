"""The trainer's progress display: a live bar on a terminal, one plain line per step in a log.

On a terminal (rich): the bar fills with steps, or — when the run has a time budget — with the time used
of that budget, so it always reaches its real end; it shows the step, elapsed time, the time left, the last
train and held-out reward, and what the loop is doing (rollouts 5/8, update, validating). Log records go
through the same console (:func:`console`, used by the CLI's log handler), so they print above the bar
instead of breaking it.

Without a terminal (output to a file, CI): a line per step and per validation, and a status line at least
every ``heartbeat_s`` seconds while a long step runs, so a log is never silent for minutes.

With ``enabled=False`` every method does nothing; the loop calls them unconditionally. Library code does
not print otherwise (it logs).
"""

from __future__ import annotations

import time
from functools import lru_cache
from types import TracebackType
from typing import Any

HEARTBEAT_S = 30.0


@lru_cache(maxsize=1)
def console() -> Any:
    """The one rich console (stderr) that progress bars and the CLI's log handler share."""
    from rich.console import Console

    return Console(stderr=True)


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class StepProgress:
    """``with StepProgress(total_steps, time_budget_s=...) as p: ... p.step_done(step, record)``.

    ``total_steps``: steps the run will take at most (None: unknown); ``time_budget_s``: the run stops
    before this many seconds (None: no budget); ``start``: steps already done (a resumed run);
    ``stage``: a label such as ``"stage 2/2 grpo"`` shown before the rest.
    """

    def __init__(
        self,
        total_steps: int | None,
        *,
        time_budget_s: float | None = None,
        start: int = 0,
        enabled: bool = True,
        stage: str = "",
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.total = total_steps
        self.budget = time_budget_s
        self.step = start
        self.enabled = enabled
        self.stage = stage
        self.heartbeat_s = heartbeat_s
        self._t0 = time.monotonic()
        self._progress: Any = None
        self._task: Any = None
        self._train = "–"
        self._val = "–"
        self._doing = "starting"
        self._last_line = self._t0

    # -- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> StepProgress:
        self._t0 = self._last_line = time.monotonic()
        if not self.enabled or not console().is_terminal:
            return self
        from rich.progress import BarColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn(f"[bold]{self.stage or 'train'}[/]"), BarColumn(), TextColumn("{task.fields[info]}"),
            console=console(), transient=False,
        )
        self._progress.__enter__()
        total = self.budget if self.budget is not None else (self.total or None)
        self._task = self._progress.add_task("train", total=total, info=self._info())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    # -- what the loop reports --------------------------------------------------------------------------
    def status(self, doing: str) -> None:
        self._doing = doing
        self._refresh()

    def rollouts(self, done: int, total: int) -> None:
        self._refresh(f"{self._doing.split(' (')[0]} ({done}/{total} rollouts)")

    def step_done(self, step: int, record: dict[str, Any]) -> None:
        self.step = step
        reward = record.get("reward_mean")
        if isinstance(reward, (int, float)):
            self._train = f"{reward:.3f}"
        self._doing = f"step {step} done"
        if self._progress is None and self.enabled:
            used = record.get("used_groups")
            groups = f" · groups used {used}/{record.get('sampled_groups')}" if used is not None else ""
            seconds = record.get("step_s")
            pace = f" · {seconds:.1f} s/step" if isinstance(seconds, (int, float)) else ""
            self._line(f"step {step}{self._of()} · train reward {self._train} · held-out {self._val}{groups}{pace}")
        self._refresh()

    def validated(self, step: int, value: float) -> None:
        self._val = f"{value:.3f}"
        self._doing = f"validated at step {step}"
        if self._progress is None and self.enabled:
            self._line(f"held-out reward at step {step}: {value:.3f}")
        self._refresh()

    def note(self, text: str) -> None:
        """A line for the reader (above the bar, or in the log)."""
        if self.enabled:
            self._line(text)

    # -- rendering ------------------------------------------------------------------------------------
    def _of(self) -> str:
        return f"/{self.total}" if self.total else ""

    def _info(self, doing: str | None = None) -> str:
        elapsed = time.monotonic() - self._t0
        if self.budget is not None:
            timing = f"{_clock(elapsed)} of {_clock(self.budget)} · {_clock(self.budget - elapsed)} left"
        else:
            timing = _clock(elapsed)
        return (f"step {self.step}{self._of()} · {timing} · reward {self._train} · held-out {self._val}"
                f" · {doing or self._doing}")  # fmt: skip

    def _refresh(self, doing: str | None = None) -> None:
        if self._progress is not None:
            elapsed = time.monotonic() - self._t0
            completed = min(elapsed, self.budget) if self.budget is not None else self.step
            self._progress.update(self._task, completed=completed, info=self._info(doing))
        elif self.enabled and time.monotonic() - self._last_line >= self.heartbeat_s:
            self._line(self._info(doing))

    def _line(self, text: str) -> None:
        self._last_line = time.monotonic()
        prefix = f"[{self.stage}] " if self.stage else ""
        console().print(f"{prefix}{text}", markup=False, highlight=False)
