"""FSDP2 for the distributed update (``PolicyConfig.fsdp``): each process keeps 1/W of every parameter, of
its gradient and of the AdamW moments, instead of a full replica (W: world size).

    torchrun --nproc-per-node 8 -m tracerl train config.toml     # with [algorithm] fsdp = true

The update is the one of :mod:`tracerl.algorithms.distributed` — rank ``r`` runs micro-batches ``r, r+W, …``
and the gradients are *summed* over ranks — with torch's ``fully_shard`` doing the communication: each
decoder layer is a unit whose parameters are all-gathered for its forward and backward, and whose gradients
are reduce-scattered (divide factor 1: a sum, as the loss weights are computed over the whole batch). The
root unit is :class:`ShardedForward`, which runs the policy's own forward (body, then the output head on the
response positions only), so the embeddings, the final norm and a tied output head are gathered for it.

Two things FSDP needs that replicas do not: every rank must run the same number of forward/backward passes
(collectives inside them), so a rank short of micro-batches runs a copy of one with zero loss weight
(:func:`pad_shard`); and the full weights the engine serves are gathered on every rank
(``DTensor.full_tensor``) inside the update, where all ranks take part. A checkpoint holds what a single
process would save: those full weights and the AdamW moments gathered whole (:func:`full_optimizer_state`,
with every rank called into the gather), so it resumes under FSDP (cut again by :func:`shard_optimizer_state`
at the first update) or in one process alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tracerl.algorithms import distributed as dp
from tracerl.algorithms.batch import MicroBatch
from tracerl.errors import ConfigError

if TYPE_CHECKING:
    from tracerl.algorithms.policy import Scored


class ShardedForward(nn.Module):
    """The root FSDP unit: ``forward(mb)`` is ``fn(lm, mb)`` (the policy's log-probs and state: ``Scored``)."""

    def __init__(self, lm: nn.Module, fn: Callable[[nn.Module, MicroBatch], Scored]) -> None:
        super().__init__()
        self.lm = lm
        self._fn = fn

    def forward(self, mb: MicroBatch) -> Scored:
        return self._fn(self.lm, mb)


def shard_model(model: nn.Module, fn: Callable[[nn.Module, MicroBatch], Scored],
                device: torch.device) -> ShardedForward:  # fmt: skip
    """Shard ``model`` in place over the default process group: one unit per decoder layer, the rest in the
    root :class:`ShardedForward` (returned: call it instead of the model). Gradients are summed, not averaged."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if dp.world_size() < 2:
        raise ConfigError("fsdp=True needs torch.distributed with ≥ 2 processes: start the run with torchrun")
    mesh = init_device_mesh(device.type, (dp.world_size(),))
    layers = _decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    root = ShardedForward(model, fn)
    fully_shard(root, mesh=mesh)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum over ranks (see tracerl.algorithms.distributed)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    return root


def shard_optimizer_state(optimizer: torch.optim.Optimizer, full: dict[str, Any]) -> None:
    """Load rank 0's full AdamW state dict ``full`` (from a replica optimizer over the same parameters, in the
    same order) into ``optimizer`` over the sharded parameters: each moment is cut like its parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, state in full.get("state", {}).items():
        p = params[int(index)]
        sharded: dict[str, Any] = {}
        for name, value in state.items():
            if isinstance(value, Tensor) and isinstance(p, DTensor) and value.shape == p.shape:
                sharded[name] = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
            else:
                sharded[name] = value
        optimizer.state[p] = sharded


def full_optimizer_state(optimizer: torch.optim.Optimizer, *, keep: bool) -> dict[str, Any]:
    """The inverse of :func:`shard_optimizer_state`: ``optimizer.state_dict()`` with every sharded moment gathered
    whole onto the CPU — the state dict a replica optimizer over the same parameters would have. A collective:
    every rank calls it; only where ``keep`` (rank 0, which writes the checkpoint) are the tensors kept, the other
    ranks get an empty ``state``. One parameter at a time: the device holds one parameter's whole moments at most."""
    saved = optimizer.state_dict()  # {"state": {param index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups"}
    state: dict[int, dict[str, Any]] = {}
    for index in sorted(saved["state"]):
        per = saved["state"][index]
        whole: dict[str, Any] = {n: full_tensor(v) if isinstance(v, Tensor) else v for n, v in sorted(per.items())}
        if keep:
            state[index] = {n: v.cpu() if isinstance(v, Tensor) else v for n, v in whole.items()}
    return {"state": state, "param_groups": saved["param_groups"]}


def pad_shard(mine: list[MicroBatch], everyone: list[MicroBatch]) -> tuple[list[MicroBatch], int]:
    """This rank's micro-batches padded to ``ceil(len(everyone) / W)`` with zero-weight copies of the first
    micro-batch (same forward/backward count on every rank); returns them and how many are real."""
    per_rank = -(-len(everyone) // dp.world_size())
    real = len(mine)
    filler = [dataclasses.replace(everyone[0], weights=torch.zeros_like(everyone[0].weights))
              for _ in range(per_rank - real)]  # fmt: skip
    return mine + filler, real


def full_tensor(value: Tensor) -> Tensor:
    """The whole tensor of a sharded parameter (a collective: every rank calls it), or ``value``."""
    gather = getattr(value, "full_tensor", None)
    return gather() if callable(gather) else value  # type: ignore[no-any-return]


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    base: Any = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ConfigError(f"fsdp=True shards the decoder layers (.model.layers), but {type(model).__name__} has "
                          "none: use a transformers decoder LM (Llama, Qwen, SmolLM…) or fsdp=False")  # fmt: skip
    return list(layers)
