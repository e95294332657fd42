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


def test_two_gloo_processes_with_fsdp_update_like_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``fsdp=True`` (FSDP2 ``fully_shard``, which runs on gloo too): each rank holds half of every parameter,
    gradient and AdamW moment, and the gathered weights equal the single-process update."""
    check_distributed_update(tiny_model_dir, tmp_path, {**CONFIG, "fsdp": True}, "gloo")


@pytest.mark.gpu
def test_two_nccl_processes_with_fsdp_update_like_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The same with ``fsdp=True`` on 2 GPUs (NCCL): parameters, gradients and AdamW moments sharded by FSDP2,
    rank 0's resumed optimizer state cut into shards; the gathered weights equal the single-process update."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")
    check_distributed_update(tiny_model_dir, tmp_path, {**CONFIG, "device": "cuda", "fsdp": True}, "nccl")


def check_distributed_update(tiny_model_dir: Path, tmp_path: Path, config: dict[str, Any], backend: str) -> None:
    batches = [transitions(1, 0), transitions(2, 1), transitions(3, 2)]
    model, _ = load_model(tiny_model_dir)
    single = GRPOLearner(model, GRPOConfig(**{**config, "fsdp": False}))
    single.update(batches[0])
    single.save_checkpoint(tmp_path / "ckpt")
    start = {n: p.detach().clone() for n, p in single.model.named_parameters()}
    metrics = [single.update(b).metrics for b in batches[1:]]
    assert metrics[0]["micro_batches"] == 3  # uneven split: rank 0 gets 2 micro-batches, rank 1 gets 1
    torch.save({"config": config, "batches": batches[1:], "checkpoint": str(tmp_path / "ckpt")}, tmp_path / "batch.pt")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(WORKER), str(tiny_model_dir), str(tmp_path / "batch.pt"),
           str(tmp_path), backend]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    moved = 0.0
    for name, p in single.model.named_parameters():
        torch.testing.assert_close(ranks[0]["params"][name], ranks[1]["params"][name], rtol=0, atol=0)  # replicas
        for r in ranks:
            # the gradients are summed in another order, and AdamW divides by √v: a coordinate whose gradient is
            # near 0 turns a rounding difference into a step difference; 4 steps of lr 1e-3 (measured: 6e-6)
            torch.testing.assert_close(r["params"][name].cpu(), p.detach().cpu(), rtol=0, atol=2e-5,
                                       msg=f"{name} differs")  # fmt: skip
        moved = max(moved, float((p.detach() - start[name]).abs().max()))
    assert moved > 1e-3  # the update really changed the weights (so equality above is not trivial)
    assert ranks[0]["version"] == ranks[1]["version"] == 3
    dist_metrics = ranks[0]["metrics"]
    # FSDP's clip_grad_norm_ sums the squares per shard, then over ranks: measured 1.4e-5 relative on grad_norm
    rel = 1e-4 if config.get("fsdp") else 1e-5
    for key in ("loss", "pg_loss", "kl", "grad_norm", "tokens", "clip_fraction", "ratio_mean", "mismatch_mean_abs",
                "mismatch_max_abs", "mismatch_tokens", "is_weight_mean", "transitions", "dropped", "micro_batches"):
        assert dist_metrics[key] == pytest.approx(metrics[1][key], rel=rel, abs=1e-7), key


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
