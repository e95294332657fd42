"""Transitions → packed tensors for the learner, split into micro-batches for gradient accumulation.

GRPO samples several responses to the same prompt, so calls that share a prompt are packed into one row:
the prompt once, then each response after it::

    row  = [p1 p2 p3 | a1 a2 | b1 b2 b3 | pad]      segment 0 = prompt, 1 = response a, 2 = response b
    pos  = [0  1  2  | 3  4  | 3  4  5  | 0  ]      each response continues the prompt's positions

A 4-D attention mask lets each response token see the prompt and the earlier tokens of its own response
only (never another response), so every response is computed exactly as if it were alone after its prompt,
while the prompt's forward and backward run once per row instead of once per response. With a group of G
responses of C tokens to a P-token prompt that is ``P + G·C`` tokens instead of ``G·(P + C)``.

Different prompts with a long common head share a row too, as a tree: an agent sends the same system
prompt and tool schemas on every call, and call k + 1 of a rollout repeats call k's whole conversation. The
head they share (the trunk) comes once, then each prompt's own tail, each followed by its responses::

    row  = [s1 s2 s3 | u1 u2 | a1 a2 | b1 | v1 | c1 c2 | pad]   trunk s; prompt 1 = s+u, prompt 2 = s+v
    seg  = [0  0  0  | 1  1  | 2  2  | 3  | 4  | 5  5  | -1 ]
    pos  = [0  1  2  | 3  4  | 5  6  | 5  | 3  | 4  5  | 0  ]

A token sees the trunk, its prompt's tail and the earlier tokens of its own segment (a response: of its
response), with its positions continuing its own prompt's, so each call is still computed exactly as if it
were alone. With N calls whose prompts share a T-token trunk that is T fewer tokens for all but one of them.

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

#: prompts sharing at least this many leading tokens (and a quarter of their length) share a packed row
DEFAULT_SHARE_PREFIX_TOKENS = 16


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
    micro_batch_tokens: int | None = None,
    norm: credit.LossNorm = "rollout",
    current_version: int | None = None,
    pad_id: int = 0,
    share_prefix_tokens: int | None = DEFAULT_SHARE_PREFIX_TOKENS,
) -> list[MicroBatch]:
    """Pad ``transitions`` into micro-batches of at most ``micro_batch_size`` calls and, when
    ``micro_batch_tokens`` is set, at most that many padded tokens (rows × longest row) each.

    Calls are sorted by their first ``share_prefix_tokens`` tokens, then by length, before splitting, so
    calls that may share a head land in the same micro-batch (and row: see the module docstring;
    ``share_prefix_tokens=None`` packs identical prompts only, sorted by length); a transition is
    ``on_policy`` when its ``weights_version`` equals ``current_version``. A micro-batch closes before the
    call that would take it past either bound; a call whose row alone exceeds ``micro_batch_tokens`` gets
    a micro-batch of its own (a call is never split).
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

    # calls with the same head next to each other (they may share a row), then similar lengths together (less
    # padding), the same prompt adjacent (its calls share a row)
    head = share_prefix_tokens or 0
    order = sorted(
        range(len(transitions)),
        key=lambda i: (
            transitions[i].prompt_ids[:head], len(transitions[i].prompt_ids), transitions[i].prompt_ids,
            len(transitions[i].response_ids),
        ),
    )  # fmt: skip
    return [
        _collate([transitions[i] for i in rows], rows, weights, current_version, pad_id, share_prefix_tokens)
        for rows in _split(order, transitions, micro_batch_size, micro_batch_tokens, share_prefix_tokens)
    ]


def padded_tokens(ts: Sequence[Transition], share_prefix_tokens: int | None = DEFAULT_SHARE_PREFIX_TOKENS) -> int:
    """Size of ``ts`` packed into one micro-batch: packed rows × the longest row, padding included."""
    by_prompt, prompts, groups = _layout(ts, share_prefix_tokens)
    return len(groups) * max(_row_lengths(by_prompt, prompts, groups, ts))


def _split(
    order: list[int],
    ts: Sequence[Transition],
    micro_batch_size: int,
    micro_batch_tokens: int | None,
    share_prefix_tokens: int | None,
) -> list[list[int]]:
    """Cut the sorted call indices ``order`` into micro-batches within both bounds (greedy, in order)."""
    if micro_batch_tokens is None:
        return [order[s : s + micro_batch_size] for s in range(0, len(order), micro_batch_size)]
    out: list[list[int]] = []
    current: list[int] = []
    for i in order:
        grown = [*current, i]
        if current and (
            len(grown) > micro_batch_size
            or padded_tokens([ts[j] for j in grown], share_prefix_tokens) > micro_batch_tokens
        ):
            out.append(current)
            grown = [i]
        current = grown
    if current:
        out.append(current)
    return out


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _rows(prompts: list[tuple[int, ...]], share_prefix_tokens: int | None) -> list[tuple[int, list[int]]]:
    """Group distinct prompts (in order) into packed rows: ``(trunk length, prompt indices)`` per row.

    A prompt joins the row before it when it shares at least ``share_prefix_tokens`` leading tokens with
    every prompt there, at least a quarter of its own length (sharing a sliver would only lengthen the row)
    and at least half the row's trunk (so a newcomer cannot take the sharing away from the others); the
    row's trunk is then the prefix all its prompts share. ``None``: a row per distinct prompt.
    """
    rows: list[tuple[int, list[int]]] = []
    for i, p in enumerate(prompts):
        if rows and share_prefix_tokens is not None:
            trunk, members = rows[-1]
            common = min(trunk, _shared(prompts[members[0]], p))
            if common >= max(share_prefix_tokens, 1) and 4 * common >= len(p) and 2 * common >= trunk:
                rows[-1] = (common, [*members, i])
                continue
        rows.append((len(p), [i]))
    return rows


_Layout = tuple[dict[tuple[int, ...], list[int]], list[tuple[int, ...]], list[tuple[int, list[int]]]]


def _layout(ts: Sequence[Transition], share_prefix_tokens: int | None) -> _Layout:
    """How ``ts`` pack: the calls (indices) per distinct prompt, the distinct prompts in order, and the
    rows as ``(trunk length, prompt indices)`` (prompts with a long common head share a row)."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for b, t in enumerate(ts):
        by_prompt.setdefault(tuple(t.prompt_ids), []).append(b)
    prompts = list(by_prompt)
    return by_prompt, prompts, _rows(prompts, share_prefix_tokens)


def _row_lengths(
    by_prompt: dict[tuple[int, ...], list[int]],
    prompts: list[tuple[int, ...]],
    groups: list[tuple[int, list[int]]],
    ts: Sequence[Transition],
) -> list[int]:
    """Tokens in each packed row: the trunk, then per prompt its tail and every response to it."""
    return [
        trunk + sum(len(prompts[i]) - trunk + sum(len(ts[b].response_ids) for b in by_prompt[prompts[i]])
                    for i in members)
        for trunk, members in groups
    ]  # fmt: skip


def _collate(
    ts: list[Transition],
    rows: list[int],
    weights: Tensor,
    current_version: int | None,
    pad_id: int,
    share_prefix_tokens: int | None = DEFAULT_SHARE_PREFIX_TOKENS,
) -> MicroBatch:
    by_prompt, prompts, groups = _layout(ts, share_prefix_tokens)
    Bp, L = len(groups), max(_row_lengths(by_prompt, prompts, groups, ts))
    B, R = len(ts), max(len(t.response_ids) for t in ts)
    S = 1 + max(len(members) + sum(len(by_prompt[prompts[i]]) for i in members) for _, members in groups)
    input_ids = torch.full((Bp, L), pad_id, dtype=torch.int64)
    position_ids = torch.zeros(Bp, L, dtype=torch.int64)
    segment = torch.full((Bp, L), -1, dtype=torch.int64)  # -1 pad, 0 trunk, 1.. prompt tails and responses
    sees = torch.zeros(Bp, S, S, dtype=torch.bool)  # sees[row, s, s']: segment s attends to segment s'
    gather = torch.zeros(B, R, dtype=torch.int64)
    response_ids = torch.full((B, R), pad_id, dtype=torch.int64)
    response_mask = torch.zeros(B, R, dtype=torch.bool)
    old = torch.zeros(B, R, dtype=torch.float32)
    for row, (trunk, members) in enumerate(groups):
        input_ids[row, :trunk] = torch.tensor(prompts[members[0]][:trunk], dtype=torch.int64)
        position_ids[row, :trunk] = torch.arange(trunk)
        segment[row, :trunk] = 0
        sees[row, 0, 0] = True
        offset, seg = trunk, 0
        for i in members:
            prompt = prompts[i]
            P = len(prompt)
            parent = 0
            if trunk < P:  # the prompt's own tail, after the shared trunk
                seg += 1
                input_ids[row, offset : offset + P - trunk] = torch.tensor(prompt[trunk:], dtype=torch.int64)
                position_ids[row, offset : offset + P - trunk] = torch.arange(trunk, P)
                segment[row, offset : offset + P - trunk] = seg
                sees[row, seg, 0] = sees[row, seg, seg] = True
                parent, offset = seg, offset + P - trunk
            last_prompt_token = offset - 1  # the trunk's last token when the prompt is the trunk
            for b in by_prompt[prompt]:
                resp = ts[b].response_ids
                r = len(resp)
                seg += 1
                input_ids[row, offset : offset + r] = torch.tensor(resp)
                position_ids[row, offset : offset + r] = torch.arange(P, P + r)
                segment[row, offset : offset + r] = seg
                sees[row, seg, 0] = sees[row, seg, parent] = sees[row, seg, seg] = True
                # token 0 is predicted by the last prompt token, token j by the response's token j−1
                predictors = torch.cat([torch.tensor([last_prompt_token]), torch.arange(offset, offset + r - 1)])
                gather[b, :r] = row * L + predictors
                response_ids[b, :r] = torch.tensor(resp)
                response_mask[b, :r] = True
                old[b, :r] = torch.tensor(ts[b].logprobs, dtype=torch.float32)
                offset += r
    q = segment.clamp(min=0)[:, :, None].expand(Bp, L, L)  # (Bp, L, L) the query's segment
    k = segment.clamp(min=0)[:, None, :].expand(Bp, L, L)  # (Bp, L, L) the key's segment
    causal = torch.ones(L, L, dtype=torch.bool).tril()  # (L, L)
    rows_ix = torch.arange(Bp)[:, None, None]
    allowed = causal & (segment[:, None, :] >= 0) & sees[rows_ix, q, k]  # (Bp, L, L)
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
