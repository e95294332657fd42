"""Data-parallel updates with ``torch.distributed``: every process holds the whole model, each computes the
gradient of its share of the micro-batches, the gradients are summed across processes, and every process
takes the same optimizer step.

Started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``)::

    torchrun --nproc-per-node 2 -m tracerl train config.toml        # gloo on CPU, NCCL on GPUs

Rank 0 runs the whole Trainer (store, gateway, engine, runners, credit assignment); the other ranks only
learn: :func:`follow` waits for each batch rank 0 broadcasts and takes part in the update.

Why the sum is exact: a GRPO batch's loss is a sum over micro-batches, ``L = Σ_k L_k`` with
``L_k = Σ_{tokens in k} w · ℓ_tok`` and the weights ``w`` computed once over the *whole* batch
(:func:`tracerl.credit.token_weights`), so ``∇L = Σ_r Σ_{k ∈ shard r} ∇L_k``: an all-reduce SUM of the
per-rank gradients gives every rank the single-process gradient (up to the order of float additions);
clipping and AdamW then see the same numbers everywhere and the replicas stay identical. Rank ``r`` owns
micro-batches ``r, r + W, r + 2W, …`` (W: world size); a rank with none contributes a zero gradient.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Generator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from tracerl.algorithms.torch_types import all_gather_object, all_reduce_sum, floats
from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: what rank 0 broadcasts to end :func:`follow`
_STOP = "__tracerl_stop__"
#: what rank 0 broadcasts to have every rank join the gather of the sharded optimizer state (its checkpoint)
_GATHER_OPTIMIZER = "__tracerl_gather_optimizer__"


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when torch.distributed is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> None:
    """Join the process group torchrun describes in the environment (no-op if already joined).

    ``backend``: ``gloo`` (CPU) or ``nccl`` (CUDA); None picks NCCL when CUDA is available, else gloo. On
    CUDA each process uses the GPU ``LOCAL_RANK``. ``timeout_s`` bounds a collective: followers wait
    through rank 0's rollouts, so it must exceed the longest training step.
    """
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"torch.distributed needs {missing} in the environment; start the processes with "
            "`torchrun --nproc-per-node N -m tracerl train CONFIG` (torchrun sets them)"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ConfigError(f"backend must be 'gloo' (CPU) or 'nccl' (CUDA), got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    logger.info("joined %s process group: rank %d of %d", backend, rank(), world_size())


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world_size]`` (all of them in one process)."""
    return list(items[rank() :: world_size()])


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for batches of transitions and control messages)."""
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_parameters(params: Sequence[Tensor]) -> None:
    """Copy rank 0's values of ``params`` into every rank's (one flat buffer, one collective)."""
    if world_size() == 1 or not params:
        return
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    dist.broadcast(flat, src=0)
    _unflatten_into(flat, list(params))


@torch.no_grad()
def sum_gradients(params: Sequence[Tensor]) -> None:
    """Replace each parameter's gradient by its sum over all ranks (a missing gradient counts as zero)."""
    if world_size() == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (Σ numel,)
    all_reduce_sum(flat)
    for p, g in zip(params, _split(flat, list(params)), strict=True):
        p.grad = g.view_as(p).clone()


def sum_floats(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    all_reduce_sum(t)
    return floats(t.cpu())


def gather_cat(t: Tensor) -> Tensor:
    """The 1-D tensors of all ranks concatenated in rank order (gathered on the CPU)."""
    if world_size() == 1:
        return t
    parts: list[Tensor | None] = [None] * world_size()
    all_gather_object(parts, t.detach().cpu())
    return torch.cat([p for p in parts if p is not None]).to(t.device)


def follow(learner: Any) -> int:
    """On a rank > 0: take part in every update rank 0 starts (and in the gather of an FSDP checkpoint's
    optimizer state) until it calls :func:`release_followers`.

    Returns the number of updates taken part in. ``learner`` is a GRPO learner built from the same model
    and config as rank 0's (its parameters are overwritten by rank 0's at the first update).
    """
    if rank() == 0:
        raise ConfigError("follow() runs on ranks > 0; rank 0 drives the updates with learner.update(...)")
    n = 0
    with _rank0_decides_the_end():
        while True:
            message = broadcast_object(None)
            if message == _STOP:
                logger.info("rank %d: released after %d updates", rank(), n)
                return n
            if message == _GATHER_OPTIMIZER:
                learner.full_optimizer_state()  # a collective: rank 0 keeps the result for its checkpoint
                continue
            learner.apply_update(message)
            n += 1


@contextlib.contextmanager
def _rank0_decides_the_end() -> Generator[None, None, None]:
    """Inside, SIGINT and SIGTERM are logged, not raised: rank 0 gets them too (Ctrl-C reaches the whole process
    group; torchrun passes SIGTERM to every rank), and its interrupted run still saves a checkpoint, whose
    sharded optimizer state needs this rank, before it releases the followers. (A rank 0 that dies instead
    ends this rank through the failed collective, or torchrun stops it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a follower elsewhere keeps the process's own
        return

    def note(signum: int, frame: Any) -> None:
        logger.warning("rank %d: signal %d; this rank stops when rank 0 releases it (after its checkpoint)",
                       rank(), signum)  # fmt: skip

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def call_followers_to_gather_optimizer() -> None:
    """On rank 0, just before it gathers a sharded optimizer state (FSDP checkpoint): the followers in
    :func:`follow` call ``learner.full_optimizer_state()`` too, so the collective runs on every rank."""
    if world_size() > 1 and rank() == 0:
        broadcast_object(_GATHER_OPTIMIZER)


def release_followers() -> None:
    """On rank 0: end :func:`follow` on every other rank (no-op in one process)."""
    if world_size() > 1 and rank() == 0:
        broadcast_object(_STOP)


def _collective_device() -> torch.device:
    """Where a small tensor must live for a collective: this process's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _split(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    return list(torch.split(flat, [p.numel() for p in like]))


def _unflatten_into(flat: Tensor, params: list[Tensor]) -> None:
    for p, v in zip(params, _split(flat, params), strict=True):
        p.copy_(v.view_as(p))
