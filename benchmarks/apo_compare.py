"""Base prompt vs APO-optimized prompt vs GRPO at the same wall time, on held-out tasks: the shared runner of
``apo_demo.py`` (the demo task) and ``apo_math.py`` (the AutoGen math example).

A benchmark script builds a :class:`Comparison` (the unchanged agent, the system prompt it sends, the task
splits, the settings) and calls :func:`run`. Per seed:

1. **APO**: ``tracerl.APO(strategy="demos")`` in the Trainer: each step rolls out ``apo_batch_size`` of the
   ``train`` tasks at temperature 1 with the current best prompt (correct answers become demonstrations),
   proposes ``candidates`` random sets of up to ``max_demos`` demonstrations and scores each greedily on the
   ``apo_val`` tasks; ``apo_steps`` steps or ``apo_budget_s`` seconds. Then the test tasks are evaluated with
   ``tracerl.evaluate(..., store=<APO's store>, prompts_version=<best candidate's version>)``: the gateway
   serves the best demonstrations after the agent's own system prompt; the agent does not change.
2. **GRPO** from the base model on ``grpo_train``, for as long as the whole APO run took (model loading and
   candidate scoring included, which favours GRPO), then its final model is evaluated on the test tasks.

The base prompt's test reward is evaluated once (greedy decoding does not depend on the seed). Everything is
greedy on the same ``test`` tasks, which neither method sees (APO tunes on ``train`` and ``apo_val`` only).
``run_dir/results.json`` holds every per-task test reward; a rerun skips what it already holds (an
interrupted run resumes). :func:`report` writes ``run_dir/results.md``: mean test reward per method and seed,
wall time, and paired bootstrap intervals (:mod:`tracerl.stats`; over test tasks, each task's reward
averaged over the seeds) of APO − base and GRPO − base.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
#: the methods :func:`report` compares with the base prompt, with their table labels
METHODS = {"apo": "APO, demonstration search", "grpo": "GRPO, same wall time"}


@dataclass
class Comparison:
    """One benchmark: the agent, its system prompt, the task splits and the settings of both methods."""

    name: str
    agent: str  # "module:function", importable by the runner processes
    prompt: str  # the agent's system prompt, exactly as it sends it
    train: list[JSON]  # APO's demonstration pool (rolled out at temperature 1)
    apo_val: list[JSON]  # APO scores candidates on these (never the test tasks)
    test: list[JSON]  # held-out, greedy
    grpo_train: list[JSON]
    run_dir: Path
    model: str = "smollm2-135m"
    apo_steps: int = 3
    apo_batch_size: int = 16  # train tasks rolled out per APO step
    apo_budget_s: float | None = None  # APO's time budget (None: apo_steps only)
    candidates: int = 3
    max_demos: int = 2
    demo_min_reward: float = 1.0
    grpo: JSON = field(default_factory=dict)  # tracerl.GRPO options (group_size, lr, ...)
    grpo_trainer: JSON = field(default_factory=dict)  # Trainer options of the GRPO run (batch_size, ...)
    max_tokens: int = 96
    runners: int = 4
    grpo_runners: int | None = None  # runner processes of the GRPO run (None: ``runners``)

    def settings(self) -> JSON:
        """What this comparison ran with (for ``results.json``): task counts instead of tasks."""
        tasks = ("train", "apo_val", "test", "grpo_train")
        out = {k: v for k, v in vars(self).items() if k not in tasks}
        out["run_dir"] = str(self.run_dir)
        out.update({k: len(getattr(self, k)) for k in tasks})
        return out


def run(cmp: Comparison, seeds: Sequence[int] = (0, 1)) -> JSON:
    """Every stage of ``cmp`` for ``seeds`` (skipping what ``results.json`` holds); returns the results and
    writes ``results.md`` (the :func:`report` table)."""
    cmp.run_dir.mkdir(parents=True, exist_ok=True)
    path = cmp.run_dir / "results.json"
    results: JSON = json.loads(path.read_text()) if path.exists() else {"name": cmp.name, "seeds": {}}
    results["settings"] = cmp.settings()

    def save() -> None:
        path.write_text(json.dumps(results, indent=1))

    if "base" not in results:
        results["base"] = evaluate(cmp, cmp.model)
        save()
    print(f"[{cmp.name}] base prompt: {results['base']['mean']:.3f}", flush=True)
    for seed in seeds:
        done: JSON = results["seeds"].setdefault(str(seed), {})
        if "apo" not in done:
            done["apo"] = run_apo(cmp, seed)
            save()
        print(f"[{cmp.name}] seed {seed} APO: {done['apo']['mean']:.3f}", flush=True)
        if "grpo" not in done:
            done["grpo"] = run_grpo(cmp, seed, budget_s=done["apo"]["train_seconds"])
            save()
        print(f"[{cmp.name}] seed {seed} GRPO: {done['grpo']['mean']:.3f}", flush=True)
    table = report(results)
    (cmp.run_dir / "results.md").write_text(table + "\n")
    print(table, flush=True)
    return results


def evaluate(cmp: Comparison, model: str, *, store: str | None = None, prompts_version: int | None = None) -> JSON:
    """The test tasks' greedy rewards with ``model`` (and a prompts version of ``store``, if given)."""
    import tracerl

    res = tracerl.evaluate(cmp.agent, cmp.test, model=model, store=store, prompts_version=prompts_version,
                           runners=cmp.runners, max_tokens=cmp.max_tokens)  # fmt: skip
    rewards = [float(r.reward or 0.0) for r in res]
    return {"mean": sum(rewards) / len(rewards), "rewards": rewards, "eval_seconds": round(res.seconds, 1),
            "failed": res.failed}  # fmt: skip


def run_apo(cmp: Comparison, seed: int) -> JSON:
    """APO's demonstration search (module docstring, 1.), then the test tasks with its best prompt."""
    import tracerl
    from tracerl.algorithms.apo import BEST_FILE, CANDIDATES_FILE

    folder = cmp.run_dir / f"apo-s{seed}"
    store = f"sqlite:///{(folder / 'store.db').resolve()}"
    apo = tracerl.APO(
        cmp.model, cmp.prompt, strategy="demos", demo_search="random", val_tasks=cmp.apo_val,
        num_candidates=cmp.candidates, max_demos=cmp.max_demos, demo_min_reward=cmp.demo_min_reward, seed=seed,
    )  # fmt: skip
    t0 = time.monotonic()
    fit = tracerl.Trainer(
        agent=cmp.agent, algorithm=apo, store=store, runners=cmp.runners, run_dir=str(folder),
        batch_size=cmp.apo_batch_size, epochs=cmp.apo_steps, max_steps=cmp.apo_steps, val_every=0,
        time_budget_s=cmp.apo_budget_s, max_tokens=cmp.max_tokens, seed=seed, progress=False,
        checkpoint_at_end=False,
    ).fit(cmp.train)  # fmt: skip
    train_s = time.monotonic() - t0
    found = json.loads((folder / CANDIDATES_FILE).read_text())
    best = json.loads((folder / BEST_FILE).read_text())
    [cand] = [c for c in found["candidates"] if c["id"] == best["candidate"]]
    return {
        **evaluate(cmp, cmp.model, store=store, prompts_version=cand["prompts_version"]),
        "train_seconds": round(train_s, 1), "steps": fit.steps, "prompts_version": cand["prompts_version"],
        "best": best["candidate"], "best_demos": len(best["demos"]) // 2, "candidates": len(found["candidates"]),
        "apo_val_base": found["candidates"][0]["mean"], "apo_val_best": best["mean_val_score"],
        "demo_pool": len(found["demo_pool"]), "rollouts_used": found["rollouts_used"],
    }  # fmt: skip


def run_grpo(cmp: Comparison, seed: int, *, budget_s: float) -> JSON:
    """GRPO from the base model for ``budget_s`` seconds (module docstring, 2.), then the test tasks."""
    import tracerl

    t0 = time.monotonic()
    fit = tracerl.Trainer(
        agent=cmp.agent, algorithm=tracerl.GRPO(model=cmp.model, seed=seed, **cmp.grpo),
        runners=cmp.grpo_runners or cmp.runners,
        run_dir=str(cmp.run_dir / f"grpo-s{seed}"), seed=seed, progress=False, time_budget_s=budget_s,
        checkpoint_at_end=False, **{"max_tokens": cmp.max_tokens, **cmp.grpo_trainer, "val_every": 0},
    ).fit(cmp.grpo_train)  # fmt: skip
    train_s = time.monotonic() - t0
    if fit.final_model is None:
        raise RuntimeError(f"the GRPO run in {fit.run_dir} saved no final model to evaluate")
    return {**evaluate(cmp, str(fit.final_model)), "train_seconds": round(train_s, 1), "budget_s": round(budget_s, 1),
            "steps": fit.steps}  # fmt: skip


def report(results: JSON) -> str:
    """A markdown table of ``results`` (see the module docstring) with the paired bootstrap intervals."""
    from tracerl.stats import paired_bootstrap, seed_average, seed_table

    seeds = sorted(results.get("seeds", {}), key=int)
    base = results["base"]
    rows = [(label, [results["seeds"][s].get(method) for s in seeds]) for method, label in METHODS.items()]
    lines = seed_table(seeds, ("base prompt", base["mean"]), rows, first_column="prompt / model",
                       time_column="train wall time per seed")  # fmt: skip
    gains = [f"{method.upper()} − base: {paired_bootstrap(base['rewards'], seed_average(runs))}."
             for (method, _), (_, runs) in zip(METHODS.items(), rows, strict=True) if seeds and all(runs)]  # fmt: skip
    lines += ["", f"Test tasks: {len(base['rewards'])}, greedy; intervals: paired bootstrap over tasks, each "
              f"task's reward averaged over the seeds.", *gains]  # fmt: skip
    return "\n".join(lines)
