"""``tracerl bench grpo``: time of one GRPO update, ours against TRL's ``GRPOTrainer``, on the same batch.

What is measured (both sides get exactly the same model weights, batch, sequence lengths, precision,
learning rate, clipping and optimizer settings; ``B`` sequences = ``B/4`` prompts × 4 samples):

* ours: :meth:`tracerl.algorithms.learner.GRPOLearner.update` on the batch's transitions (padding,
  forward, PPO-clip loss, backward, grad-norm clip, AdamW step, metrics, the engine state dict).
* TRL: one optimisation step of ``GRPOTrainer`` *without generation*: its ``_prepare_inputs`` (which
  normally generates and scores completions) is replaced by a function returning the prepared batch
  (prompt/completion ids and masks, advantages, old log-probs), then ``training_step`` (its
  ``compute_loss`` + backward) followed by what ``Trainer``'s loop does after it: grad-norm clipping,
  ``optimizer.step()``, scheduler step, ``zero_grad``.

The batch is "slightly stale" (old log-probs = the initial policy's log-probs plus small noise), so the
losses depend on the model and comparing them checks that both compute the same objective: the loss of the
first step (same weights) and of the second step (after one update each — checks the gradients and the
optimizer too). Each (model, precision) runs in a fresh subprocess holding both implementations, each on its own copy of
the model; timed updates alternate ours / TRL so a change of machine load hits both alike (this machine is
shared), and ``ratio`` is the median of the per-pair time ratios. ``peak_mb`` is the peak resident memory
during the first (warm-up) update minus the resident memory just before it; ours runs first, so memory
it freed can only make TRL's number look smaller. Times are medians over ``--steps`` updates.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from typing import Any

MODELS = ("tiny-random", "smollm2-135m")
LR = 1e-5
CLIP = 0.2
MAX_GRAD_NORM = 1.0
GROUP = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names (load_model)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per update (a multiple of 4)")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per sequence")
    parser.add_argument("--completion-len", type=int, default=64, help="completion tokens per sequence")
    parser.add_argument("--steps", type=int, default=4, help="timed updates (after one warm-up)")
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "both"], default="both", help="autocast precision of both sides"
    )
    parser.add_argument(
        "--unique-prompts", action="store_true",
        help="a different prompt for every sequence (no shared prefix to pack, like distinct agent calls)",
    )
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads for both sides (0: torch's default; 1 is steadier on a machine busy with other work)",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    if args.batch % GROUP:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the group size {GROUP}")
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    shape = {
        "batch": args.batch, "prompt_len": args.prompt_len, "completion_len": args.completion_len,
        "unique_prompts": int(args.unique_prompts),
    }
    results: dict[str, Any] = {"shape": shape, "steps": args.steps, "threads": args.threads, "runs": []}
    console = Console()
    ctx = mp.get_context("spawn")
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for precision in precisions:
            with ctx.Pool(1) as pool:
                row = pool.apply(_measure, (model, precision, shape, args.steps, args.threads))
            row = {"model": model, "precision": precision, **row}
            console.log(row)
            results["runs"].append(row)

    table = Table(title=f"GRPO update, {args.batch} × ({args.prompt_len} prompt + {args.completion_len} completion)")
    for col in ("model", "precision", "ours s/step", "TRL s/step", "ratio", "loss 1 ours / TRL", "loss 2 ours / TRL",
                "peak MB ours / TRL"):
        table.add_column(col)
    for r in results["runs"]:
        o, t = r["tracerl"], r["trl"]
        table.add_row(
            r["model"], r["precision"], f"{o['step_s']:.3f}", f"{t['step_s']:.3f}", f"{r['time_ratio']:.2f}×",
            f"{o['loss_first']:.6f} / {t['loss_first']:.6f}", f"{o['loss_second']:.6f} / {t['loss_second']:.6f}",
            f"{o['peak_mb']:.0f} / {t['peak_mb']:.0f}",
        )
    console.print(table)
    return results


# -- one measurement, in a fresh process -------------------------------------------------------------


class _PeakRSS:
    """Samples this process's resident memory every few milliseconds while active."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _make_batch(model: Any, shape: dict[str, int]) -> dict[str, Any]:
    """Random prompts/completions (fixed seed), GRPO advantages, old log-probs = policy's + N(0, 0.05²)."""
    import torch

    from tracerl import credit

    g = torch.Generator().manual_seed(1234)
    B, P, C = shape["batch"], shape["prompt_len"], shape["completion_len"]
    V = model.config.vocab_size
    if shape.get("unique_prompts"):
        prompts = torch.randint(3, V, (B, P), generator=g)  # (B, P)
    else:
        prompts = torch.randint(3, V, (B // GROUP, P), generator=g).repeat_interleave(GROUP, dim=0)  # (B, P)
    completions = torch.randint(3, V, (B, C), generator=g)  # (B, C)
    rewards = torch.randint(0, 2, (B,), generator=g).double()
    rewards[::GROUP] = 1.0  # every group has variance
    rewards[1::GROUP] = 0.0
    groups = torch.arange(B) // GROUP
    stats = credit.group_baselines(rewards, groups, method="grpo")
    advantages = credit.call_advantages(rewards, torch.arange(B), stats).float()  # (B,)
    with torch.no_grad():
        logits = model(torch.cat([prompts, completions], dim=1)).logits[:, P - 1 : -1].float()  # (B, C, V)
    logp = logits.log_softmax(-1).gather(-1, completions[..., None])[..., 0]  # (B, C)
    old = logp + 0.05 * torch.randn(logp.shape, generator=g)
    return {"prompts": prompts, "completions": completions, "advantages": advantages, "old": old}


def _measure(model_name: str, precision: str, shape: dict[str, int], steps: int, threads: int) -> dict[str, Any]:
    """Both implementations on their own copy of the model; timed steps alternate ours / TRL so that a
    change in machine load hits both alike."""
    import copy

    import torch

    from tracerl.engines.models import load_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, tokenizer = load_model(model_name)
    batch = _make_batch(model, shape)
    trl_model = copy.deepcopy(model)
    out: dict[str, Any] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    steps_by_impl = {}
    for impl in ("tracerl", "trl"):  # ours first: memory it freed can only make TRL's peak look smaller
        if impl == "tracerl":
            step = _tracerl_step(model, batch, precision)
        else:
            step = _trl_step(trl_model, tokenizer, batch, precision)
        t0 = time.perf_counter()
        with _PeakRSS() as mem:
            loss = step()  # warm-up step: its memory is the peak of one update
        out[impl] = {"loss_first": loss, "peak_mb": mem.delta_mb, "first_s": time.perf_counter() - t0, "times": []}
        steps_by_impl[impl] = step
    for i in range(steps):
        for impl, step in steps_by_impl.items():
            t0 = time.perf_counter()
            loss = step()
            out[impl]["times"].append(time.perf_counter() - t0)
            if i == 0:
                out[impl]["loss_second"] = loss
    for impl in steps_by_impl:
        out[impl]["step_s"] = statistics.median(out[impl]["times"])
    out["time_ratio"] = statistics.median(
        [a / b for a, b in zip(out["tracerl"]["times"], out["trl"]["times"], strict=True)]
    )
    return out


def _tracerl_step(model: Any, batch: dict[str, Any], precision: str) -> Any:
    from tracerl.algorithms.grpo import GRPOConfig
    from tracerl.algorithms.learner import GRPOLearner
    from tracerl.algorithms.transitions import Transition

    config = GRPOConfig(
        model="bench", group_size=GROUP, lr=LR, clip_eps_low=CLIP, clip_eps_high=CLIP, max_grad_norm=MAX_GRAD_NORM,
        micro_batch_size=batch["prompts"].shape[0], bf16=precision == "bf16", device="cpu",
    )
    learner = GRPOLearner(model, config)
    transitions = [
        Transition(
            prompt_ids=batch["prompts"][i].tolist(),
            response_ids=batch["completions"][i].tolist(),
            logprobs=batch["old"][i].tolist(),
            advantage=float(batch["advantages"][i]),
            rollout_id=f"r{i}",
            weights_version=None,  # recorded log-probs are π_old, as TRL's old_per_token_logps
        )
        for i in range(batch["prompts"].shape[0])
    ]

    def step() -> float:
        return learner.update(transitions).metrics["loss"]

    return step


def _trl_step(model: Any, tokenizer: Any, batch: dict[str, Any], precision: str) -> Any:
    import torch
    from datasets import Dataset
    from trl.trainer.grpo_config import GRPOConfig as TRLConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    B, C = batch["completions"].shape
    args = TRLConfig(
        output_dir=tempfile.mkdtemp(prefix="tracerl-bench-trl-"),
        per_device_train_batch_size=B,
        num_generations=GROUP,
        max_completion_length=C,
        learning_rate=LR,
        lr_scheduler_type="constant",
        beta=0.0,
        epsilon=CLIP,
        loss_type="grpo",  # mean over each sequence's tokens, then over sequences: our per-rollout norm
        max_grad_norm=MAX_GRAD_NORM,
        bf16=precision == "bf16",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
    )

    def no_reward(completions: list[Any], **_: Any) -> list[float | None]:
        return [0.0] * len(completions)

    trainer = GRPOTrainer(
        model=model, reward_funcs=no_reward, args=args, train_dataset=Dataset.from_dict({"prompt": ["x"] * B}),
        processing_class=tokenizer,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before each step
    ones_p = torch.ones_like(batch["prompts"])
    ones_c = torch.ones_like(batch["completions"])
    inputs = {
        "prompt_ids": batch["prompts"],
        "prompt_mask": ones_p,
        "completion_ids": batch["completions"],
        "completion_mask": ones_c,
        "advantages": batch["advantages"],
        "old_per_token_logps": batch["old"],
        "num_items_in_batch": ones_c.sum(),
    }
    trainer._prepare_inputs = lambda _batch: dict(inputs)  # type: ignore[method-assign]  # no generation
    trained = trainer.model
    assert trained is not None

    def step() -> float:
        loss = trainer.training_step(trained, {}, num_items_in_batch=None)
        trainer.accelerator.clip_grad_norm_(trained.parameters(), MAX_GRAD_NORM)
        trainer.optimizer.step()  # type: ignore[union-attr]
        trainer.lr_scheduler.step()  # type: ignore[union-attr]
        trained.zero_grad(set_to_none=True)
        return float(loss)

    return step
