"""Base → warm start (SFT on gold demonstrations) → GRPO for the framework examples, measured on held-out tasks.

Each example's ``recipe.py`` builds a :class:`Recipe` (its agent, train/val/test tasks and a gold policy that
answers each LLM call the way a good model would, from the *train* split's gold data) and calls
:func:`run_recipe`. For every seed:

1. **base**: the base model's greedy reward on the test tasks (once: greedy decoding does not depend on
   the seed);
2. **warm start**: :func:`tracerl.record_demonstrations` runs the unchanged agent on ``demos`` train tasks
   against the gold policy and keeps one transcript per call; ``tracerl.SFT`` trains on them (loss on the
   assistant tokens, rendered exactly as the gateway renders them); the test tasks are evaluated;
3. **RL**: ``tracerl.GRPO`` continues from the warm-start model on the train tasks for a wall-clock budget,
   validating on the val tasks; the test tasks are evaluated.

Everything lands in ``run_dir``: ``demos.jsonl``, one folder per seed and stage (metrics, plot, final
model), and ``results.json`` with the per-task test rewards of every stage. A rerun skips what
``results.json`` already holds, so an interrupted recipe resumes. :func:`report` prints the table the READMEs
show: mean test reward per stage and seed, wall time, paired bootstrap intervals (over test tasks, each
task's reward averaged over the seeds) of the warm start's gain over the base model and of the RL stage's gain
over the warm start, and, when the recipe names a ``breakdown`` field, the mean per kind of test task (e.g. per
difficulty: a gain on easy tasks can hide a loss on hard ones). Each evaluation also keeps how many LLM calls
each test rollout made (``"calls"``): the report gives their mean per stage and per kind (e.g. whether RL
taught the agent to search again on two-hop questions, or to stop retrying a failing query).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # the runner's worker processes import the agents from here

JSON = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser, *, run_dir: str, lr: float = 2e-5) -> None:
    """The command-line options every example's ``recipe.py`` shares (output, seeds, model, warm start, GRPO,
    runners); each recipe adds its own data options. ``run_dir``: the default output folder; ``lr``: the
    default GRPO learning rate."""
    p = parser
    p.add_argument("--run-dir", default=run_dir, help=f"output folder (default: {run_dir})")
    p.add_argument("--write-config", action="store_true",
                   help="record the demonstrations and write one `tracerl train` config per seed, then stop")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default: 0 1)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--demos", type=int, default=48,
                   help="train tasks turned into demonstrations (default: %(default)s)")
    p.add_argument("--sft-lr", type=float, default=1e-4, help="SFT learning rate (default: 1e-4)")
    p.add_argument("--sft-epochs", type=int, default=2)
    p.add_argument("--grpo-minutes", type=float, default=10.0, help="the RL stage's budget (default: %(default)s)")
    p.add_argument("--rl-epochs", type=int, default=1,
                   help="passes over the RL stage's train tasks: it stops at the first of these and --grpo-minutes "
                        "(the report says which; default: %(default)s)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=lr, help=f"GRPO learning rate (default: {lr:g})")
    p.add_argument("--runners", type=int, default=8)
    p.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=False,
                   help="RL steps keep sampling until they hold groups with reward variance (DAPO; default: off)")
    p.add_argument("--max-sampled-groups", type=float, default=4.0,
                   help="with --dynamic-sampling: at most this many × the step's groups (default: 4)")
    p.add_argument("--balance-by", default=None, metavar="FIELD",
                   help="a task field: every RL step takes each of its values in turn, and with --dynamic-sampling "
                        "waits for each value's share of groups with reward variance (Trainer balance_by; "
                        "'' for off; default: %(default)s)")
    p.add_argument("--balance-trim", action=argparse.BooleanOptionalAction, default=False,
                   help="with --balance-by: each RL update uses as many groups with reward variance of every value "
                        "as the scarcest value holds (Trainer balance_trim; default: %(default)s)")
    p.add_argument("--rl-temperature", type=float, default=1.0,
                   help="the RL stage's sampling temperature; GRPO trains the policy at it (default: 1.0)")
    p.add_argument("--advantage-scale", choices=("std", "none"), default="std",
                   help="GRPO's advantage divisor: the group's reward std, or none (Dr. GRPO: a group whose "
                        "rewards differ only by a small step reward is not scaled up to a correct answer's "
                        "weight; default: std)")


def rl_algorithm_options(args: argparse.Namespace, **options: Any) -> JSON:
    """The RL stage's GRPO settings from the shared options (the advantage scale), with a recipe's own."""
    return {"scale": args.advantage_scale, **options}


def rl_trainer_options(args: argparse.Namespace, balance_by: str | None = None) -> JSON:
    """The RL stage's Trainer settings from the shared options: dynamic sampling and its cap, when on, and the
    field steps balance by (``balance_by`` when given, else ``--balance-by``; "" is none) and whether they trim
    to it."""
    balance_by = args.balance_by if balance_by is None else balance_by
    out: JSON = {"balance_by": balance_by} if balance_by else {}
    if balance_by and args.balance_trim:
        out["balance_trim"] = True
    if args.dynamic_sampling:
        out |= {"dynamic_sampling": True, "max_sampled_groups": args.max_sampled_groups}
    return out


@dataclass
class Recipe:
    """One example's recipe: what to train, on what, with which gold policy and settings."""

    name: str
    agent: str  # "module:function", importable from examples/
    train: list[JSON]
    val: list[JSON]
    test: list[JSON]
    policy: Callable[[JSON, list[JSON], list[JSON]], JSON]
    run_dir: Path
    model: str = "smollm2-135m"
    demos: int = 64
    sft_epochs: int = 2
    sft_lr: float = 5e-5
    sft_batch_size: int = 8
    grpo_minutes: float = 10.0
    grpo_max_steps: int | None = None
    #: passes over the RL stage's train tasks; the stage stops at the first of these, ``grpo_minutes`` and
    #: ``grpo_max_steps`` (a small curriculum is used up before a long budget: the report says which stopped it)
    grpo_epochs: int = 1
    group_size: int = 8
    batch_size: int = 2
    grpo_lr: float = 2e-5
    #: the RL stage's sampling temperature (the learner scores the policy at it; evaluation stays greedy)
    grpo_temperature: float = 1.0
    max_tokens: int = 96
    runners: int = 8
    val_every: int = 5
    grpo_options: JSON = field(default_factory=dict)
    #: Trainer settings of the RL stage beyond the ones above (e.g. ``dynamic_sampling``, ``max_sampled_groups``)
    grpo_trainer_options: JSON = field(default_factory=dict)
    #: the RL stage's train tasks (a curriculum: e.g. the kinds the warm start still gets wrong); None: ``train``
    rl_train: list[JSON] | None = None
    #: a task field (e.g. ``"difficulty"``) whose values split the report's test numbers into one row per value
    breakdown: str | None = None
    #: an agent whose calls name several models: role name → None (the model being trained or evaluated) or a
    #: frozen model; passed to the RL stage's Trainer and to every evaluation (``grpo_options`` may then name
    #: ``train_models``)
    roles: dict[str, str | None] | None = None

    def settings(self) -> JSON:
        """What this recipe ran with (for ``results.json``): every setting, and task counts instead of tasks."""
        out = {k: v for k, v in vars(self).items() if k not in ("train", "val", "test", "rl_train", "policy")}
        out["run_dir"] = str(self.run_dir)
        rl_train = self.rl_train if self.rl_train is not None else self.train
        out.update(train=len(self.train), val=len(self.val), test=len(self.test), rl_train=len(rl_train))
        return out

    def agent_fn(self) -> Callable[..., Any]:
        """The agent function itself (imported from :attr:`agent`)."""
        from tracerl.agent import agent_ref, load_agent

        return load_agent(agent_ref(self.agent))


def run_or_write(recipe: Recipe, args: argparse.Namespace) -> JSON:
    """A recipe script's main: ``--write-config`` writes the ``tracerl train`` configs and says how to run them;
    otherwise every stage runs for ``--seeds`` and the results come back."""
    if args.write_config:
        for path in write_configs(recipe, seeds=args.seeds):
            print(f"wrote {path}; run it with: PYTHONPATH=examples tracerl train {path}")
        return {}
    return run_recipe(recipe, seeds=args.seeds)


def run_recipe(recipe: Recipe, seeds: Sequence[int] = (0, 1)) -> JSON:
    """Run every stage of ``recipe`` for ``seeds`` (skipping what ``results.json`` holds); returns the results."""
    import tracerl

    recipe.run_dir.mkdir(parents=True, exist_ok=True)
    path = recipe.run_dir / "results.json"
    results: JSON = json.loads(path.read_text()) if path.exists() else {"recipe": recipe.name, "seeds": {}}

    def save() -> None:
        path.write_text(json.dumps(results, indent=1))

    results.setdefault("settings", {}).update(recipe.settings())

    demos_path = _record_demonstrations(recipe, results)
    if recipe.breakdown:
        results["test_groups"] = {"field": recipe.breakdown, "values": [t.get(recipe.breakdown) for t in recipe.test]}
    save()
    if "base" not in results:
        results["base"] = _evaluate(recipe, recipe.model)
        save()
    print(f"[{recipe.name}] base: {results['base']['mean']:.3f}")
    for seed in seeds:
        done: JSON = results["seeds"].setdefault(str(seed), {})
        folder = recipe.run_dir / f"seed{seed}"
        if "sft" not in done:
            t0 = time.monotonic()
            fit = tracerl.Trainer(
                agent=recipe.agent,
                algorithm=tracerl.SFT(recipe.model, demonstrations=str(demos_path), lr=recipe.sft_lr, seed=seed),
                runners=2, run_dir=str(folder / "sft"), epochs=recipe.sft_epochs, batch_size=recipe.sft_batch_size,
                val_every=0, seed=seed, progress=False,
            ).fit(recipe.train)
            train_s = time.monotonic() - t0
            done["sft"] = {**_evaluate(recipe, str(fit.final_model)), "train_seconds": round(train_s, 1),
                           "steps": fit.steps, "model": str(fit.final_model)}
            save()
        print(f"[{recipe.name}] seed {seed} warm start: {done['sft']['mean']:.3f}")
        if "grpo" not in done:
            t0 = time.monotonic()
            fit = tracerl.Trainer(
                agent=recipe.agent,
                algorithm=tracerl.GRPO(done["sft"]["model"], group_size=recipe.group_size, lr=recipe.grpo_lr,
                                       seed=seed, **recipe.grpo_options),
                runners=recipe.runners, run_dir=str(folder / "grpo"), batch_size=recipe.batch_size,
                epochs=recipe.grpo_epochs, time_budget_s=recipe.grpo_minutes * 60, max_steps=recipe.grpo_max_steps,
                val_every=recipe.val_every,
                max_tokens=recipe.max_tokens, temperature=recipe.grpo_temperature, seed=seed, progress=False,
                roles=recipe.roles, **recipe.grpo_trainer_options,
            ).fit(recipe.rl_train if recipe.rl_train is not None else recipe.train, val_tasks=recipe.val)
            train_s = time.monotonic() - t0
            done["grpo"] = {**_evaluate(recipe, str(fit.final_model)), "train_seconds": round(train_s, 1),
                            "steps": fit.steps, "stopped_by": fit.stopped_by, "val_before": fit.val_before,
                            "val_after": fit.val_after, "model": str(fit.final_model)}
            save()
        print(f"[{recipe.name}] seed {seed} RL: {done['grpo']['mean']:.3f}")
    print(report(results))
    return results


def _record_demonstrations(recipe: Recipe, results: JSON) -> Path:
    """``run_dir/demos.jsonl``: the gold policy's transcripts on the first ``demos`` train tasks (recorded once)."""
    import tracerl
    from tracerl.demonstrations import write_jsonl

    recipe.run_dir.mkdir(parents=True, exist_ok=True)
    demos_path = recipe.run_dir / "demos.jsonl"
    if not demos_path.exists():
        runs: list[Any] = []
        t0 = time.monotonic()
        demos = tracerl.record_demonstrations(recipe.agent_fn(), recipe.train[: recipe.demos], recipe.policy, runs=runs)
        write_jsonl(demos_path, demos)
        solved = sum(1 for r in runs if r.reward is not None and r.reward >= 1.0)
        results["demos"] = {"tasks": len(runs), "solved_by_gold": solved, "transcripts": len(demos),
                            "seconds": round(time.monotonic() - t0, 1)}
        print(f"[{recipe.name}] {len(demos)} demonstration transcripts from {solved}/{len(runs)} train tasks")
    return demos_path


def write_configs(recipe: Recipe, seeds: Sequence[int] = (0, 1)) -> list[Path]:
    """The recipe's training as ``tracerl train`` configs: records the demonstrations, writes the RL stage's train
    tasks and the val tasks as JSONL, and one ``seed{S}.toml`` per seed with two stages (SFT on the
    demonstrations, then GRPO) — the same stages and settings :func:`run_recipe` runs, in one run folder per seed
    (``seed{S}/train``). Run one with ``PYTHONPATH=examples tracerl train RUN_DIR/seed0.toml`` (the runner
    processes import the agent from ``examples/``); evaluate its final model with the example's ``evaluate.py``.
    """
    from tracerl.demonstrations import write_jsonl

    demos = _record_demonstrations(recipe, {})
    train_path, val_path = recipe.run_dir / "rl_train_tasks.jsonl", recipe.run_dir / "val_tasks.jsonl"
    write_jsonl(train_path, recipe.rl_train if recipe.rl_train is not None else recipe.train)
    write_jsonl(val_path, recipe.val)
    paths = []
    for seed in seeds:
        grpo = {"group_size": recipe.group_size, "lr": recipe.grpo_lr, "seed": seed, **recipe.grpo_options}
        grpo_trainer: JSON = {"epochs": recipe.grpo_epochs, "batch_size": recipe.batch_size,
                              "val_every": recipe.val_every, "max_tokens": recipe.max_tokens,
                              "time_budget_s": recipe.grpo_minutes * 60,
                              "temperature": recipe.grpo_temperature}
        if recipe.grpo_max_steps is not None:
            grpo_trainer["max_steps"] = recipe.grpo_max_steps
        lines = [
            f"# {recipe.name} recipe, seed {seed}: SFT on the gold demonstrations, then GRPO (written by recipes.py)",
            f"agent = {_toml(recipe.agent)}",
            f"train_tasks = {_toml(str(train_path.resolve()))}",
            f"val_tasks = {_toml(str(val_path.resolve()))}",
            *_roles_table(recipe.roles),
            "", "[runners]", f"n = {recipe.runners}",
            "", "[trainer]", f"run_dir = {_toml(str((recipe.run_dir / f'seed{seed}' / 'train').resolve()))}",
            f"seed = {seed}", "progress = false",
            *(f"{k} = {_toml(v)}" for k, v in recipe.grpo_trainer_options.items()),
            "", "[[stages]]", 'algorithm = "sft"', "[stages.options]", f"model = {_toml(recipe.model)}",
            f"demonstrations = {_toml(str(demos.resolve()))}", f"lr = {recipe.sft_lr!r}", f"seed = {seed}",
            "[stages.trainer]", f"epochs = {recipe.sft_epochs}", f"batch_size = {recipe.sft_batch_size}",
            "val_every = 0",
            "", "[[stages]]", 'algorithm = "grpo"', "[stages.options]",
            *(f"{k} = {_toml(v)}" for k, v in grpo.items()),
            "[stages.trainer]", *(f"{k} = {_toml(v)}" for k, v in grpo_trainer.items()),
        ]
        path = recipe.run_dir / f"seed{seed}.toml"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def _roles_table(roles: dict[str, str | None] | None) -> list[str]:
    """The ``[roles]`` table of a config (no lines without roles): the trained roles, then the frozen ones."""
    if not roles:
        return []
    trained = [name for name, model in roles.items() if model is None]
    frozen = {name: model for name, model in roles.items() if model is not None}
    lines = ["", "[roles]", f"trained = {_toml(trained)}"]
    if frozen:
        lines.append(f"frozen = {{ {', '.join(f'{_toml(k)} = {_toml(v)}' for k, v in frozen.items())} }}")
    return lines


def _toml(value: Any) -> str:
    """A TOML literal for a string, number, boolean or list of them (TOML's basic strings read JSON's escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return f"[{', '.join(_toml(v) for v in value)}]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) to a recipe config")


def _evaluate(recipe: Recipe, model: str) -> JSON:
    import tracerl

    res = tracerl.evaluate(recipe.agent, recipe.test, model=model, runners=recipe.runners, max_tokens=recipe.max_tokens,
                           roles=recipe.roles)
    rewards = [float(r.reward or 0.0) for r in res]
    return {"mean": sum(rewards) / len(rewards), "rewards": rewards, "calls": [len(r.calls) for r in res],
            "eval_seconds": round(res.seconds, 1), "failed": res.failed}


def report(results: JSON) -> str:
    """A markdown table of ``results`` (see the module docstring) with the bootstrap intervals."""
    from tracerl.stats import paired_bootstrap, seed_average, seed_table

    seeds = sorted(results.get("seeds", {}), key=int)
    base = results["base"]
    runs = {stage: [results["seeds"][s].get(stage) for s in seeds] for stage in ("sft", "grpo")}
    lines = seed_table(seeds, ("base", base["mean"]), [("warm start (SFT)", runs["sft"]), ("RL (GRPO)", runs["grpo"])])
    lines += ["", f"Test tasks: {len(base['rewards'])}; greedy decoding."]
    done = {stage: seeds != [] and all(r) for stage, r in runs.items()}
    if done["sft"]:
        lines.append(f"Warm start − base: {paired_bootstrap(base['rewards'], seed_average(runs['sft']))}.")
    if done["sft"] and done["grpo"]:
        gain = paired_bootstrap(seed_average(runs["sft"]), seed_average(runs["grpo"]))
        lines.append(f"RL − warm start: {gain}.")
    stopped = [(s, run.get("stopped_by")) for s, run in zip(seeds, runs["grpo"], strict=True) if run]
    if any(by for _, by in stopped):  # results from before this was recorded have none
        lines.append("RL stage stopped by: " + ", ".join(f"seed {s} {by or '?'}" for s, by in stopped) + ".")
    stages: list[tuple[str, Sequence[float], Sequence[float] | None]] = [
        ("base", base["rewards"], base.get("calls"))]
    for label, stage in (("warm start", "sft"), ("RL", "grpo")):
        if done[stage]:  # calls: only in results evaluated since they were recorded
            calls = seed_average(runs[stage], "calls") if all("calls" in r for r in runs[stage]) else None
            stages.append((label, seed_average(runs[stage]), calls))
    if all(calls is not None for _, _, calls in stages):
        lines.append("LLM calls a test rollout (seed-averaged): " + ", ".join(
            f"{label} {sum(calls or []) / max(1, len(calls or [])):.2f}" for label, _, calls in stages) + ".")
    if "test_groups" in results and done["sft"]:
        lines += ["", *breakdown_table(results["test_groups"], stages)]
    return "\n".join(lines)


def breakdown_table(groups: JSON, stages: Sequence[tuple[str, Sequence[float], Sequence[float] | None]]) -> list[str]:
    """Mean test reward per value of ``groups["field"]`` (one row each, with its task count) for each stage
    ``(label, per-task rewards, per-task LLM calls or None)``; when every stage has its calls, one more column with
    the mean calls a rollout of each stage, in the same order."""
    field_name, values = groups["field"], groups["values"]
    with_calls = all(calls is not None for _, _, calls in stages)
    calls_header = f" calls a rollout ({' / '.join(label for label, _, _ in stages)}) |" if with_calls else ""
    lines = [f"| {field_name} | tasks | {' | '.join(label for label, _, _ in stages)} |{calls_header}",
             "|---|---|" + "---|" * (len(stages) + with_calls)]
    for value in dict.fromkeys(values):  # in order of first appearance
        idx = [i for i, v in enumerate(values) if v == value]
        means = " | ".join(f"{sum(r[i] for i in idx) / len(idx):.3f}" for _, r, _ in stages)
        row = f"| {value} | {len(idx)} | {means} |"
        if with_calls:
            row += " " + " / ".join(f"{sum((c or [])[i] for i in idx) / len(idx):.2f}" for _, _, c in stages) + " |"
        lines.append(row)
    return lines


def _groups(tasks: Sequence[JSON], key: str) -> list[list[JSON]]:
    """``tasks`` grouped by ``tasks[i][key]``: one list per value, in order of first appearance, each in file order."""
    by_value: dict[Any, list[JSON]] = {}
    for task in tasks:
        by_value.setdefault(task.get(key), []).append(task)
    return list(by_value.values())


def spread(tasks: Sequence[JSON], key: str, n: int) -> list[JSON]:
    """``n`` of ``tasks`` taken in turn from each value of ``tasks[i][key]`` (in order of first appearance), so a
    small validation set holds every kind instead of the first kind of a sorted file."""
    out: list[JSON] = []
    queues = _groups(tasks, key)
    while len(out) < n and any(queues):
        for queue in queues:
            if queue and len(out) < n:
                out.append(queue.pop(0))
    return out


def interleave(tasks: Sequence[JSON], key: str) -> list[JSON]:
    """``tasks`` reordered so that every prefix holds each value of ``tasks[i][key]`` in its share of the whole
    (within a value, the original order): the first half of 39 easy, 43 medium and 32 hard questions holds about
    20, 21 and 16, where :func:`spread` would take 19 of each."""
    from tracerl.train.data import interleaved_order

    return [tasks[i] for i in interleaved_order([t.get(key) for t in tasks])]
