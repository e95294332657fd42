"""Transitions → packed tensors for the learner, split into micro-batches for gradient accumulation.

GRPO samples several responses to the same prompt, so calls that share a prompt are packed into one row:
the prompt once, then each response after it::

    row  = [p1 p2 p3 | a1 a2 | b1 b2 b3 | pad]      segment 0 = prompt, 1 = response a, 2 = response b
    pos  = [0  1  2  | 3  4  | 3  4  5  | 0  ]      each response continues the prompt's positions

A 4-D attention mask lets each response token see the prompt and the earlier tokens of its own response
only (never another response), so every response is computed exactly as if it were alone after its prompt,
while the prompt's forward and backward run once per row instead of once per response. With a group of G
responses of C tokens to a P-token prompt that is ``P + G·C`` tokens instead of ``G·(P + C)``.

The learner scores only response tokens: ``gather_index`` (B, R) points, for response token j of call b,
at the flattened row position whose hidden state predicts it (the last prompt token for j = 0, the
response's own token j−1 after that), so the vocabulary-sized projection runs on response tokens only.
Prompt tokens are never trained.

Loss weights (:func:`tracerl.credit.token_weights`) are computed over the whole batch before it is split,
so summing the micro-batch losses gives exactly the full-batch loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tracerl import credit
from tracerl.algorithms.transitions import Transition
from tracerl.errors import InvalidInput


@dataclass
class MicroBatch:
    input_ids: Tensor  # (Bp, L) int64 packed rows: a prompt then its responses, right-padded
    position_ids: Tensor  # (Bp, L) int64
    attention_mask: Tensor  # (Bp, 1, L, L) bool: query q may attend key k
    gather_index: Tensor  # (B, R) int64 into the flattened (Bp·L) positions predicting each response token
    response_ids: Tensor  # (B, R) int64, pad = 0
    response_mask: Tensor  # (B, R) bool
    old_logprobs: Tensor  # (B, R) float32 recorded at sampling time, 0 on padding
    advantages: Tensor  # (B,) float32
    weights: Tensor  # (B, R) float32 loss weights, summing to this micro-batch's share of 1
    on_policy: Tensor  # (B,) bool: sampled by the weights being trained (π_old = current policy)
    rows: list[int]  # indices into the transition list

    @property
    def tokens(self) -> int:
        return int(self.response_mask.sum())


def validate(transitions: Sequence[Transition]) -> None:
    for i, t in enumerate(transitions):
        if not t.response_ids:
            raise InvalidInput(f"transition {i} (rollout {t.rollout_id}) has no response tokens; drop it")
        if len(t.logprobs) != len(t.response_ids):
            raise InvalidInput(
                f"transition {i} (rollout {t.rollout_id}) has {len(t.logprobs)} logprobs for "
                f"{len(t.response_ids)} response tokens; record one log-prob per sampled token"
            )
        if not t.prompt_ids:
            raise InvalidInput(f"transition {i} (rollout {t.rollout_id}) has an empty prompt")


def build_micro_batches(
    transitions: Sequence[Transition],
    *,
    micro_batch_size: int,
    norm: credit.LossNorm = "rollout",
    current_version: int | None = None,
    pad_id: int = 0,
) -> list[MicroBatch]:
    """Pad ``transitions`` into micro-batches of at most ``micro_batch_size`` calls.

    Calls are sorted by length before splitting (less padding); a transition is ``on_policy`` when its
    ``weights_version`` equals ``current_version``.
    """
    validate(transitions)
    rollout_names = {r: i for i, r in enumerate(dict.fromkeys(t.rollout_id for t in transitions))}
    max_r = max(len(t.response_ids) for t in transitions)
    # whole-batch loss weights: (N, max_r) over all calls, then sliced per micro-batch
    full_mask = torch.zeros(len(transitions), max_r, dtype=torch.bool)
    for i, t in enumerate(transitions):
        full_mask[i, : len(t.response_ids)] = True
    rollout_index = torch.tensor([rollout_names[t.rollout_id] for t in transitions], dtype=torch.int64)
    row_weight = torch.tensor([t.weight for t in transitions], dtype=torch.float32)
    weights = credit.token_weights(full_mask, rollout_index, norm=norm, row_weight=row_weight)  # (N, max_r)

    # calls with the same prompt next to each other (they share a row), similar lengths together
    order = sorted(
        range(len(transitions)),
        key=lambda i: (len(transitions[i].prompt_ids), transitions[i].prompt_ids, len(transitions[i].response_ids)),
    )
    out: list[MicroBatch] = []
    for start in range(0, len(order), micro_batch_size):
        rows = order[start : start + micro_batch_size]
        out.append(_collate([transitions[i] for i in rows], rows, weights, current_version, pad_id))
    return out


def _collate(
    ts: list[Transition], rows: list[int], weights: Tensor, current_version: int | None, pad_id: int
) -> MicroBatch:
    # pack: one row per distinct prompt, holding the prompt then each of its responses
    packed: dict[tuple[int, ...], list[int]] = {}
    for b, t in enumerate(ts):
        packed.setdefault(tuple(t.prompt_ids), []).append(b)
    lengths = [len(p) + sum(len(ts[b].response_ids) for b in members) for p, members in packed.items()]
    Bp, L = len(packed), max(lengths)
    B, R = len(ts), max(len(t.response_ids) for t in ts)
    input_ids = torch.full((Bp, L), pad_id, dtype=torch.int64)
    position_ids = torch.zeros(Bp, L, dtype=torch.int64)
    segment = torch.full((Bp, L), -1, dtype=torch.int64)  # -1 pad, 0 prompt, 1.. responses
    gather = torch.zeros(B, R, dtype=torch.int64)
    response_ids = torch.full((B, R), pad_id, dtype=torch.int64)
    response_mask = torch.zeros(B, R, dtype=torch.bool)
    old = torch.zeros(B, R, dtype=torch.float32)
    for row, (prompt, members) in enumerate(packed.items()):
        P = len(prompt)
        input_ids[row, :P] = torch.tensor(prompt)
        position_ids[row, :P] = torch.arange(P)
        segment[row, :P] = 0
        offset = P
        for k, b in enumerate(members, start=1):
            resp = ts[b].response_ids
            r = len(resp)
            input_ids[row, offset : offset + r] = torch.tensor(resp)
            position_ids[row, offset : offset + r] = torch.arange(P, P + r)
            segment[row, offset : offset + r] = k
            # token 0 is predicted by the last prompt token, token j by the response's token j−1
            predictors = torch.cat([torch.tensor([P - 1]), torch.arange(offset, offset + r - 1)])
            gather[b, :r] = row * L + predictors
            response_ids[b, :r] = torch.tensor(resp)
            response_mask[b, :r] = True
            old[b, :r] = torch.tensor(ts[b].logprobs, dtype=torch.float32)
            offset += r
    q = segment[:, :, None]  # (Bp, L, 1)
    k = segment[:, None, :]  # (Bp, 1, L)
    causal = torch.ones(L, L, dtype=torch.bool).tril()  # (L, L)
    allowed = causal & (k >= 0) & ((k == q) | (k == 0))  # (Bp, L, L)
    allowed = allowed | torch.eye(L, dtype=torch.bool)  # padding attends to itself (no empty softmax row)
    return MicroBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=allowed[:, None],
        gather_index=gather,
        response_ids=response_ids,
        response_mask=response_mask,
        old_logprobs=old,
        advantages=torch.tensor([t.advantage for t in ts], dtype=torch.float32),
        weights=weights[rows, :R].clone(),
        on_policy=torch.tensor(
            [current_version is not None and t.weights_version == current_version for t in ts], dtype=torch.bool
        ),
        rows=rows,
    )
