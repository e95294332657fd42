"""``tracerl bench pipeline``: steps per hour with synchronous and asynchronous updates on the toy demo task.

    tracerl bench pipeline --model tiny-random --steps 6 --repeats 2

Each repeat runs the same training twice, ``async_updates=False`` then ``True`` (alternating, so both see
the same machine load), and measures the steady-state step time from the metrics records::

    step time = (time of the last step's record − time of the first step's record) / (steps − 1)

(the first step is excluded: in both modes it is sampling + update with nothing to overlap). The result is
steps per hour per mode and the ratio async / sync. An asynchronous step costs about
``max(rollouts, update)`` instead of ``rollouts + update``, so the gain depends on how the two compare and
on whether they compete for the same cores (on a 2-core CPU they do; on a GPU trainer they do not).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny-random", help="model to train (default tiny-random)")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (≥ 2; default 6)")
    parser.add_argument("--repeats", type=int, default=2, help="sync/async pairs (default 2)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)


def _step_time(history: list[dict[str, Any]]) -> float:
    times = [float(r["time"]) for r in history]
    return (times[-1] - times[0]) / (len(times) - 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tracerl
    from tracerl.errors import ConfigError
    from tracerl.tasks import toy

    if args.steps < 2:
        raise ConfigError(f"--steps must be ≥ 2 (the first step is not timed), got {args.steps}")
    tasks = toy.make_tasks("train", args.batch_size * args.steps)
    times: dict[str, list[float]] = {"sync": [], "async": []}
    updates: dict[str, list[float]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for i in range(args.repeats):
            for mode in ("sync", "async"):
                result = tracerl.Trainer(
                    agent=toy.digits_agent,
                    algorithm=tracerl.GRPO(args.model, group_size=args.group_size, lr=1e-4, advantage="batch"),
                    runners=args.runners, run_dir=str(Path(tmp) / f"{mode}-{i}"), batch_size=args.batch_size,
                    max_steps=args.steps, val_every=0, max_tokens=args.max_tokens, progress=False,
                    async_updates=mode == "async", checkpoint_at_end=False, seed=i,
                ).fit(tasks)  # fmt: skip
                times[mode].append(_step_time(result.history))
                updates[mode].append(statistics.mean(float(r["update_s"]) for r in result.history))
    sync_s, async_s = statistics.median(times["sync"]), statistics.median(times["async"])
    out = {
        "model": args.model, "steps": args.steps, "repeats": args.repeats,
        "step_s": {"sync": times["sync"], "async": times["async"]},
        "update_s_mean": {k: statistics.mean(v) for k, v in updates.items()},
        "steps_per_hour": {"sync": 3600 / sync_s, "async": 3600 / async_s},
        "async_over_sync": sync_s / async_s,
    }  # fmt: skip
    print(f"steps/hour  sync {out['steps_per_hour']['sync']:.0f}  async {out['steps_per_hour']['async']:.0f}  "
          f"(async/sync {out['async_over_sync']:.2f}×; median of {args.repeats} alternating pairs, "
          f"{args.steps} steps each, {args.model})")  # fmt: skip
    return out
