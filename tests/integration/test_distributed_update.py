"""The data-parallel GRPO update (2 processes, torch.distributed on gloo, started by torchrun) gives the
same parameters and metrics as the single-process update on the same batches."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tracerl.algorithms.grpo import GRPOConfig
from tracerl.algorithms.learner import GRPOLearner
from tracerl.algorithms.transitions import Transition
from tracerl.engines.models import load_model

VOCAB = 300  # below the tiny tokenizer's vocabulary size
WORKER = Path(__file__).with_name("dist_update_worker.py")

CONFIG: dict[str, Any] = {
    "model": "tiny-random", "lr": 1e-3, "micro_batch_size": 2, "epochs": 2, "kl_coef": 0.05, "bf16": False,
    "max_grad_norm": 1.0, "tis_cap": 2.0, "device": "cpu", "group_size": 2,
}  # fmt: skip


def transitions(seed: int, version: int) -> list[Transition]:
    """Five rollouts (one with two calls) of random tokens: on-policy, stale and unknown-version calls."""
    rng = random.Random(seed)
    out = []
    for i in range(5):
        for call in range(2 if i == 0 else 1):
            prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randrange(4, 12))]
            response = [rng.randrange(3, VOCAB) for _ in range(rng.randrange(2, 9))]
            logprobs = [-rng.uniform(5.0, 8.0) for _ in response]
            v = [version, version, None, version - 1, version, version][i + call]
            out.append(Transition(prompt, response, logprobs, advantage=rng.uniform(-1.5, 1.5), rollout_id=f"r{i}",
                                  weights_version=v, call_index=call))  # fmt: skip
    return out


def test_two_gloo_processes_update_like_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    """One process: updates 1, 2, 3. Two processes: rank 0 resumes the checkpoint taken after update 1 (rank 1
    starts from scratch), then updates 2 and 3 data-parallel. The parameters must end up the same."""
    check_distributed_update(tiny_model_dir, tmp_path, CONFIG, "gloo")


def test_two_gloo_processes_with_fsdp_update_and_checkpoint_like_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``fsdp=True`` (FSDP2 ``fully_shard``, which runs on gloo too): each rank holds half of every parameter,
    gradient and AdamW moment, and the gathered weights equal the single-process update. Its checkpoint holds the
    moments gathered whole: fresh processes resume it under FSDP, and one process resumes it alone."""
    check_distributed_update(tiny_model_dir, tmp_path, {**CONFIG, "fsdp": True}, "gloo", relaunch=True)


@pytest.mark.gpu
def test_two_nccl_processes_with_fsdp_update_like_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The same with ``fsdp=True`` on 2 GPUs (NCCL): parameters, gradients and AdamW moments sharded by FSDP2,
    rank 0's resumed optimizer state cut into shards; the gathered weights equal the single-process update, and
    the checkpoint (moments gathered to the CPU) resumes under FSDP and in one process."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    check_distributed_update(tiny_model_dir, tmp_path, {**CONFIG, "device": "cuda", "fsdp": True}, "nccl",
                             relaunch=True)  # fmt: skip


def check_distributed_update(tiny_model_dir: Path, tmp_path: Path, config: dict[str, Any], backend: str, *,
                             relaunch: bool = False) -> None:  # fmt: skip
    """One process: updates 1, 2, 3, with a checkpoint after update 1. Torchrun: rank 0 resumes that checkpoint
    and runs updates 2 and 3 data-parallel. With ``relaunch``, the processes run update 2 and checkpoint, and
    fresh processes resume that checkpoint for update 3 (one process resumes it too)."""
    batches = [transitions(1, 0), transitions(2, 1), transitions(3, 2)]
    model, _ = load_model(tiny_model_dir)
    single_config = GRPOConfig(**{**config, "fsdp": False})
    single = GRPOLearner(model, single_config)
    single.update(batches[0])
    single.save_checkpoint(tmp_path / "ckpt1")
    start = _params(single)
    metrics = [single.update(batches[1]).metrics]
    after_two = _params(single)
    moments_two = {i: {k: v.detach().cpu().clone() for k, v in per.items()}
                   for i, per in single.optimizer.state_dict()["state"].items()}  # fmt: skip
    metrics.append(single.update(batches[2]).metrics)
    assert metrics[0]["micro_batches"] == 3  # uneven split: rank 0 gets 2 micro-batches, rank 1 gets 1
    final = _params(single)
    moved = max(float((final[n] - start[n]).abs().max()) for n in final)
    assert moved > 1e-3  # the updates really changed the weights (so the equalities below are not trivial)

    if not relaunch:
        ranks = run_ranks(tiny_model_dir, tmp_path / "ab", config, backend, batches[1:], tmp_path / "ckpt1")
    else:
        ranks = run_ranks(tiny_model_dir, tmp_path / "a", config, backend, batches[1:2], tmp_path / "ckpt1",
                          save_to=tmp_path / "ckpt2")  # fmt: skip
        assert_params_close([r["params"] for r in ranks], after_two)
        saved = torch.load(tmp_path / "ckpt2" / "learner.pt", weights_only=False)
        assert saved["step"] == 2 and saved["weights_version"] == 2
        assert_moments_close(saved["optimizer"]["state"], moments_two)
        # fresh processes resume the FSDP checkpoint (rank 0 loads it, the first update shards it again); that
        # first update has nothing to train (sharded, nothing gathered by a step), and a checkpoint taken then is
        # the one resumed; the follower got SIGTERM before that checkpoint and still runs update 3
        ranks = run_ranks(tiny_model_dir, tmp_path / "b", config, backend, [[], batches[2]], tmp_path / "ckpt2",
                          save_to=tmp_path / "ckpt2b", save_after=1)  # fmt: skip
        again = torch.load(tmp_path / "ckpt2b" / "learner.pt", weights_only=False)
        assert_params_close([again["params"]], saved["params"], atol=0.0)
        assert_moments_close(again["optimizer"]["state"], saved["optimizer"]["state"], exact=True)
        # and one process resumes it alone
        model, _ = load_model(tiny_model_dir)
        alone = GRPOLearner(model, single_config)
        alone.load_checkpoint(tmp_path / "ckpt2")
        assert alone.optimizer.param_groups[0]["fused"]  # its own AdamW kernel, not the FSDP optimizer's
        alone.update(batches[2])
        assert alone.weights_version == 3
        assert_params_close([_params(alone)], final)
        # without its AdamW moments (what FSDP checkpoints held before) update 3 lands far outside that tolerance
        torch.save({**saved, "optimizer": None}, tmp_path / "ckpt2" / "learner.pt")
        model, _ = load_model(tiny_model_dir)
        forgetful = GRPOLearner(model, single_config)
        forgetful.load_checkpoint(tmp_path / "ckpt2")
        forgetful.update(batches[2])
        assert max(float((p - final[n]).abs().max()) for n, p in _params(forgetful).items()) > 1e-4
    assert_params_close([r["params"] for r in ranks], final)
    assert ranks[0]["version"] == ranks[1]["version"] == 3
    dist_metrics = ranks[0]["metrics"]
    # FSDP's clip_grad_norm_ sums the squares per shard, then over ranks: measured 1.4e-5 relative on grad_norm
    rel = 1e-4 if config.get("fsdp") else 1e-5
    for key in ("loss", "pg_loss", "kl", "grad_norm", "tokens", "clip_fraction", "ratio_mean", "mismatch_mean_abs",
                "mismatch_max_abs", "mismatch_tokens", "is_weight_mean", "transitions", "dropped", "micro_batches"):
        assert dist_metrics[key] == pytest.approx(metrics[1][key], rel=rel, abs=1e-7), key


def run_ranks(tiny_model_dir: Path, out: Path, config: dict[str, Any], backend: str, batches: list[list[Transition]],
              checkpoint: Path, save_to: Path | None = None,
              save_after: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Two processes under torchrun (dist_update_worker.py): what each rank saved. With ``save_to``, rank 0
    checkpoints after batch ``save_after`` (default: the last), having first sent the follower SIGTERM as torchrun
    passes a stop to every rank: the follower must go on (gather the optimizer state, update) until released."""
    out.mkdir()
    torch.save({"config": config, "batches": batches, "checkpoint": str(checkpoint),
                "save_to": str(save_to) if save_to else None, "sigterm_followers": save_to is not None,
                "save_after": len(batches) if save_after is None else save_after},
               out / "batch.pt")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(WORKER), str(tiny_model_dir), str(out / "batch.pt"), str(out),
           backend]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def assert_params_close(got: list[dict[str, torch.Tensor]], want: dict[str, torch.Tensor], atol: float = 2e-5) -> None:
    for name, p in want.items():
        for g in got:
            torch.testing.assert_close(g[name], got[0][name], rtol=0, atol=0)  # ranks hold identical weights
            # the gradients are summed in another order, and AdamW divides by √v: a coordinate whose gradient is
            # near 0 turns a rounding difference into a step difference; 4 steps of lr 1e-3 (measured: 6e-6)
            torch.testing.assert_close(g[name].cpu(), p.cpu(), rtol=0, atol=atol, msg=f"{name} differs")


def assert_moments_close(got: dict[int, dict[str, Any]], want: dict[int, dict[str, Any]], exact: bool = False) -> None:
    """The AdamW state of a checkpoint written under FSDP is the single-process one: whole tensors, same step."""
    assert sorted(got) == sorted(want)
    for index, state in want.items():
        assert float(got[index]["step"]) == float(state["step"]) == 4.0  # 2 updates of 2 epochs
        for name in ("exp_avg", "exp_avg_sq"):
            w = state[name].cpu()
            assert got[index][name].shape == w.shape and got[index][name].device.type == "cpu"
            tol = 0.0 if exact else 1e-4 * float(w.abs().max())
            torch.testing.assert_close(got[index][name], w, rtol=0 if exact else 1e-3, atol=tol, msg=f"{index}.{name}")


def _params(learner: GRPOLearner) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in learner.model.named_parameters()}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tracerl_train_under_torchrun_runs_data_parallel(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m tracerl train CONFIG``: rank 0 runs the loop, rank 1 follows."""
    import json

    from tracerl.tasks import toy

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(t) + "\n" for t in toy.make_tasks("train", 4)))
    # The reply's length in characters: a random model's samples differ in it, so every group has reward variance
    # and both steps train (a digits reward is 0 for all four samples of a group now and then, which trains nothing).
    (tmp_path / "length_agent.py").write_text(
        "from openai import OpenAI\n"
        "def agent(task, llm):\n"
        "    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key)\n"
        "    reply = client.chat.completions.create(model=llm.model, messages=[{'role': 'user', 'content': "
        "task['question']}], **llm.sampling)\n"
        "    return len(reply.choices[0].message.content or '') / 100\n"
    )
    config = tmp_path / "run.toml"
    config.write_text(f'''
agent = "length_agent:agent"
train_tasks = "{tasks}"
[runners]
n = 2
[algorithm]
model = "{tiny_model_dir}"
group_size = 4
lr = 1e-3
micro_batch_size = 1
[trainer]
run_dir = "{tmp_path / "run"}"
batch_size = 2
max_tokens = 8
val_every = 0
progress = false
''')
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "tracerl", "train", str(config), "--max-steps", "2"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(r["transitions"] > 0 and r["micro_batches"] >= 2 for r in train)  # micro-batches of 1: both ranks
    assert train[-1]["weights_version"] == 2
