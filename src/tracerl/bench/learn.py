"""``tracerl bench learn``: held-out reward against wall time, tracerl's Trainer beside TRL's GRPOTrainer.

Both sides train the same model on the demo's task (:mod:`tracerl.tasks.arithmetic`): the same prompt
(chat messages rendered by the same chat template), the same reward function, the same training tasks,
group size, tasks per step, learning rate, completion length, sampling temperature, no KL penalty, and the
same wall-clock budget of *training* time. tracerl runs exactly as ``tracerl demo`` does (its agent is a
plain ``openai`` client, through the gateway and runner processes); TRL runs ``GRPOTrainer`` at its fastest
fair settings on this CPU (gradient checkpointing off, bf16 autocast where the CPU has it, like our
learner; TRL's other defaults are kept and listed in the result).

Held-out reward is measured the same way for both, outside the training clock: each side snapshots its
weights every ``--snapshot-s`` seconds of training time (a tracerl step callback; a TRL ``TrainerCallback``),
and after both runs every snapshot is evaluated by one evaluator — greedy decoding of the held-out
questions with the hf engine, scored by the task's reward. The result is a table (training minutes →
held-out reward of each side), a plot (``learn.png``) and the two headline numbers: held-out reward at
the budget, and how long tracerl took to reach TRL's final number.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, cast

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per side (default 15)")
    parser.add_argument("--snapshot-s", type=float, default=120.0, help="seconds of training between snapshots")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", default="tracerl,trl", help="comma-separated: tracerl, trl")
    parser.add_argument("--out", default="runs/bench-learn", help="folder for the JSON, table and plot")
    parser.add_argument("--n-val", type=int, default=None, help="held-out tasks (default: the demo's)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from tracerl.demo import DEMO

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {**DEMO, "model": args.model}
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    budget_s = args.minutes * 60
    snapshots: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    info: dict[str, Any] = {}
    for side in sides:
        t0 = time.monotonic()
        if side == "tracerl":
            snapshots[side], info[side] = _run_tracerl(settings, budget_s, args.snapshot_s, args.seed, out)
        elif side == "trl":
            snapshots[side], info[side] = _run_trl(settings, budget_s, args.snapshot_s, args.seed, out)
        else:
            raise SystemExit(f"unknown side {side!r}: use tracerl and/or trl")
        info[side]["wall_s"] = round(time.monotonic() - t0, 1)
    n_val = args.n_val or settings["n_val"]
    max_tokens = settings["trainer"]["max_tokens"]
    curves = {side: _evaluate(args.model, snaps, n_val, max_tokens) for side, snaps in snapshots.items()}
    result = _summarise(curves, info, settings, budget_s, n_val)
    (out / "learn.json").write_text(json.dumps(result, indent=2))
    _plot(curves, out / "learn.png", title=f"{args.model}, {settings['task']} task, {args.minutes:g} min")
    _print(Console(), result)
    return result


# -- the two sides --------------------------------------------------------------------------------------


def _run_tracerl(
    settings: dict[str, Any], budget_s: float, snapshot_s: float, seed: int, out: Path
) -> tuple[list[tuple[float, dict[str, Any]]], dict[str, Any]]:
    import tracerl
    from tracerl.config import RunnerConfig, TrainerConfig
    from tracerl.tasks import arithmetic as task

    snaps: list[tuple[float, dict[str, Any]]] = []
    clock = {"start": time.monotonic(), "last": -1e9, "paused": 0.0}

    def snapshot(record: dict[str, Any], algorithm: Any) -> None:
        t = time.monotonic() - clock["start"] - clock["paused"]
        if t - clock["last"] >= snapshot_s:
            t1 = time.monotonic()
            weights = algorithm.engine_weights() or {}
            snaps.append((t, {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}))
            clock["last"] = t
            clock["paused"] += time.monotonic() - t1

    trainer = tracerl.Trainer(
        agent=task.arithmetic_agent,
        algorithm=tracerl.GRPO(model=settings["model"], seed=seed, **settings["algorithm"]),
        runners=RunnerConfig(n=settings["runners"]),
        config=TrainerConfig(
            run_dir=str(out / "tracerl"), experiment="bench-learn", seed=seed, time_budget_s=budget_s,
            progress=False, resume=False, checkpoint_at_end=False, **{**settings["trainer"], "val_every": 0},
        ),
        callbacks=[snapshot],
    )
    clock["start"] = time.monotonic()
    result = trainer.fit(task.make_tasks("train", settings["n_train"]))
    final_t = time.monotonic() - clock["start"] - clock["paused"]
    weights = trainer.algorithm.engine_weights() or {}
    snaps.append((final_t, {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}))
    return snaps, {"steps": result.steps, "settings": {k: settings[k] for k in ("algorithm", "trainer", "runners")}}


def _run_trl(
    settings: dict[str, Any], budget_s: float, snapshot_s: float, seed: int, out: Path
) -> tuple[list[tuple[float, dict[str, Any]]], dict[str, Any]]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    from tracerl.algorithms.policy import bf16_supported, clear_quantization_flags
    from tracerl.engines.models import load_model
    from tracerl.tasks import arithmetic as task

    model, tokenizer = load_model(settings["model"])
    clear_quantization_flags(model)
    tasks = task.make_tasks("train", settings["n_train"])
    algo, tr = settings["algorithm"], settings["trainer"]
    group, per_step = algo["group_size"], tr["batch_size"]
    data = Dataset.from_list([{"prompt": task.messages_for(t["question"]), "answer": t["answer"]} for t in tasks])

    def reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else str(c) for c in completions]
        return [task.score(text, a) for text, a in zip(texts, answer, strict=True)]

    config = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=group * per_step, num_generations=group,
        max_completion_length=tr["max_tokens"], learning_rate=algo["lr"], beta=0.0, temperature=1.0,
        gradient_checkpointing=False, bf16=bf16_supported(torch.device("cpu")), use_cpu=True, seed=seed,
        report_to="none", save_strategy="no", logging_steps=1_000_000, disable_tqdm=True, max_steps=1_000_000,
    )
    snaps: list[tuple[float, dict[str, Any]]] = []
    clock = {"start": 0.0, "last": -1e9, "paused": 0.0}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            clock["start"] = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **k: Any) -> Any:
            t = time.monotonic() - clock["start"] - clock["paused"]
            if t - clock["last"] >= snapshot_s or t >= budget_s:
                t1 = time.monotonic()
                snaps.append((t, {k2: v.detach().to("cpu", copy=True) for k2, v in model.state_dict().items()}))
                clock["last"] = t
                clock["paused"] += time.monotonic() - t1
            if t >= budget_s:
                control.should_training_stop = True
            return control

    trainer = GRPOTrainer(model=model, reward_funcs=cast(Any, reward), args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Clock()])  # fmt: skip
    trainer.train()
    keys = ("loss_type", "scale_rewards", "epsilon", "epsilon_high", "num_iterations", "top_p", "top_k",
            "steps_per_generation", "generation_batch_size", "importance_sampling_level", "lr_scheduler_type",
            "warmup_ratio", "max_grad_norm", "weight_decay", "mask_truncated_completions")  # fmt: skip
    defaults = {k: getattr(config, k, None) for k in keys}
    return snaps, {"steps": trainer.state.global_step, "defaults_kept": _jsonable(defaults)}


# -- evaluation, summary --------------------------------------------------------------------------------


def _evaluate(
    model_name: str, snaps: list[tuple[float, dict[str, Any]]], n_val: int, max_tokens: int
) -> list[dict[str, float]]:
    """Held-out greedy reward (and its format / correct parts) of every snapshot, by one evaluator."""
    from tracerl.engines.base import SamplingParams
    from tracerl.engines.models import load_model
    from tracerl.gateway.chat import render_chat
    from tracerl.tasks import arithmetic as task

    base, tokenizer = load_model(model_name)
    tasks = task.make_tasks("val", n_val)
    prompts = [render_chat(tokenizer, task.messages_for(t["question"]), []).ids for t in tasks]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)  # the completion length both sides trained with
    out: list[dict[str, float]] = [{"minutes": 0.0, **_score_model(base, tokenizer, prompts, tasks, params)}]
    for t, weights in snaps:
        model = copy.deepcopy(base)
        model.load_state_dict(weights, strict=False)
        out.append({"minutes": round(t / 60, 2), **_score_model(model, tokenizer, prompts, tasks, params)})
    return out


def _score_model(model: Any, tokenizer: Any, prompts: list[list[int]], tasks: list[dict[str, Any]],
                 params: Any) -> dict[str, float]:  # fmt: skip
    from tracerl.engines.hf import HFEngine
    from tracerl.tasks import arithmetic as task

    engine = HFEngine(model, tokenizer, "eval", max_batch_size=len(prompts))

    async def go() -> list[Any]:
        try:
            return list(await asyncio.gather(*(engine.generate(p, params) for p in prompts)))
        finally:
            await engine.aclose()

    texts = [tokenizer.decode(r[0].token_ids, skip_special_tokens=True) for r in asyncio.run(go())]
    scores = [task.score(text, t["answer"]) for text, t in zip(texts, tasks, strict=True)]
    answer_lines, right = task.breakdown(scores)
    return {"reward": sum(scores) / len(scores), "format": answer_lines / len(scores), "correct": right / len(scores)}


def _summarise(curves: dict[str, list[dict[str, float]]], info: dict[str, Any], settings: dict[str, Any],
               budget_s: float, n_val: int) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"budget_minutes": budget_s / 60, "n_val": n_val, "model": settings["model"],
                           "task": settings["task"], "curves": curves, "info": info}  # fmt: skip
    # the mean of each side's snapshots after the shared start: steadier than one final snapshot
    out["mean_after_start"] = {side: sum(p["reward"] for p in points[1:]) / (len(points) - 1)
                               for side, points in curves.items() if len(points) > 1}  # fmt: skip
    if "tracerl" in curves and "trl" in curves:
        start, trl_final = curves["trl"][0]["reward"], curves["trl"][-1]["reward"]
        out["tracerl_final"] = curves["tracerl"][-1]["reward"]
        out["trl_final"] = trl_final
        # time to TRL's final number means something only where TRL ended above the shared start
        out["trl_gained"] = trl_final > start
        out["tracerl_minutes_to_trl_final"] = (
            next((p["minutes"] for p in curves["tracerl"][1:] if p["reward"] >= trl_final), None)
            if out["trl_gained"] else None
        )  # fmt: skip
    return out


def _plot(curves: dict[str, list[dict[str, float]]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for side, points in curves.items():
        ax.plot([p["minutes"] for p in points], [p["reward"] for p in points], marker="o", label=side)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("held-out reward (greedy)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _print(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"held-out reward vs training time ({result['task']}, {result['model']})")
    table.add_column("side")
    table.add_column("minutes → reward (format / correct)")
    for side, points in result["curves"].items():
        text = ", ".join(f"{p['minutes']:g}→{p['reward']:.3f} ({p['format']:.2f}/{p['correct']:.2f})" for p in points)
        table.add_row(side, text)
    console.print(table)
    if "trl_final" in result:
        reached = result["tracerl_minutes_to_trl_final"]
        if not result["trl_gained"]:
            when = "TRL ended at or below the shared start, so there is no time to reach its number"
        elif reached is None:
            when = "tracerl did not reach TRL's final number within the budget"
        else:
            when = f"tracerl reached TRL's final number after {reached:g} min"
        console.print(f"at the budget: tracerl {result['tracerl_final']:.3f}, TRL {result['trl_final']:.3f}; {when}")
    means = ", ".join(f"{side} {m:.3f}" for side, m in result.get("mean_after_start", {}).items())
    if means:
        console.print(f"mean of the snapshots after the start: {means}")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in d.items()}
