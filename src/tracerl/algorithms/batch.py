"""Transitions → packed tensors for the learner, split into micro-batches for gradient accumulation.

GRPO samples several responses to the same prompt, so calls that share a prompt are packed into one row:
the prompt once, then each response after it::

    row  = [p1 p2 p3 | a1 a2 | b1 b2 b3 | pad]      segment 0 = prompt, 1 = response a, 2 = response b
    pos  = [0  1  2  | 3  4  | 3  4  5  | 0  ]      each response continues the prompt's positions

A 4-D attention mask lets each response token see the prompt and the earlier tokens of its own response
only (never another response), so every response is computed exactly as if it were alone after its prompt,
while the prompt's forward and backward run once per row instead of once per response. With a group of G
responses of C tokens to a P-token prompt that is ``P + G·C`` tokens instead of ``G·(P + C)``.

Different calls with a long common head share a row too, as a prefix tree: an agent sends the same system
prompt and tool schemas on every call, and call k + 1 of a rollout repeats call k's whole conversation —
prompt *and* response — before its new messages. Each call's sequence (prompt + response) is laid out only
from where it stops matching the sequences already in the row; the matched part is a path of the tree,
which its new tokens see::

    call 1: s1 s2 u1 → a1 a2       call 2: s1 s2 u1 a1 a2 t1 → c1       call 3: s1 s2 v1 → b1
    row  = [s1 s2 u1 a1 a2 | t1 c1 | v1 b1 | pad]
    pos  = [0  1  2  3  4  | 5  6  | 2  3  | 0  ]
    sees   call 2's t1, c1: s1 s2 u1 a1 a2 and their own earlier tokens; call 3's v1, b1: s1 s2 and theirs

Call 2's prompt re-uses call 1's response tokens (one forward and backward for both calls), and each token
keeps the position it has in its own sequence, so every call is still computed exactly as if it were alone.
The gradient is the same too: a shared token's hidden state is a function of its prefix only, and the
losses of every call through it add up in its backward. Calls join the row where their match is longest,
when it covers at least ``share_prefix_tokens`` tokens and a quarter of their prompt (else a row of their
own); ``share_prefix_tokens=None`` shares identical prompts only (the flat layout above).

The learner scores only response tokens: ``gather_index`` (B, R) points, for response token j of call b,
at the flattened row position whose hidden state predicts it (the last prompt token for j = 0, the
response's own token j−1 after that), so the vocabulary-sized projection runs on response tokens only.
Prompt tokens are never trained.

Loss weights (:func:`tracerl.credit.token_weights`) are computed over the whole batch before it is split,
so summing the micro-batch losses gives exactly the full-batch loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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

    Calls are sorted by prompt (lexicographically) before splitting, so calls that may share a head, and a
    rollout's later calls after its earlier ones, land in the same micro-batch (and row: see the module
    docstring; ``share_prefix_tokens=None`` packs identical prompts only, sorted by length); a transition is
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

    # tree packing: prompts in lexicographic order, so a call's later calls (whose prompts extend its prompt and
    # response) and the other calls of its task (same head, same question) come next to it; identical prompts
    # only: similar lengths together (less padding). Shorter responses first within a prompt.
    if share_prefix_tokens is None:
        order = sorted(range(len(transitions)), key=lambda i: (
            len(transitions[i].prompt_ids), transitions[i].prompt_ids, len(transitions[i].response_ids)))
    else:
        order = sorted(range(len(transitions)),
                       key=lambda i: (transitions[i].prompt_ids, len(transitions[i].response_ids)))
    return [
        _collate([transitions[i] for i in rows], rows, packer, weights, current_version, pad_id)
        for rows, packer in _split(order, transitions, micro_batch_size, micro_batch_tokens, share_prefix_tokens)
    ]


def padded_tokens(ts: Sequence[Transition], share_prefix_tokens: int | None = DEFAULT_SHARE_PREFIX_TOKENS) -> int:
    """Size of ``ts`` packed into one micro-batch: packed rows × the longest row, padding included."""
    packer = _Packer(share_prefix_tokens)
    for t in ts:
        packer.add(packer.place(t))
    return packer.padded_tokens()


def _split(
    order: list[int],
    ts: Sequence[Transition],
    micro_batch_size: int,
    micro_batch_tokens: int | None,
    share_prefix_tokens: int | None,
) -> list[tuple[list[int], _Packer]]:
    """Cut the sorted call indices ``order`` into micro-batches within both bounds (greedy, in order); each
    with its calls already packed into rows."""
    out: list[tuple[list[int], _Packer]] = []
    current: list[int] = []
    packer = _Packer(share_prefix_tokens)
    for i in order:
        where = packer.place(ts[i])
        if current and (
            len(current) >= micro_batch_size
            or (micro_batch_tokens is not None and packer.padded_tokens(where) > micro_batch_tokens)
        ):
            out.append((current, packer))
            current, packer = [], _Packer(share_prefix_tokens)
            where = packer.place(ts[i])
        packer.add(where)
        current.append(i)
    if current:
        out.append((current, packer))
    return out


def _common_prefix(a: Tensor, b: Tensor) -> int:
    """Length of the longest common prefix of the token tensors ``a`` and ``b``."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if len(differ) else n


@dataclass
class _Segment:
    """Tokens ``tokens[skip:]`` of a call's sequence, laid out at row positions ``start`` onwards; they see
    ``context`` (the row positions of ``tokens[:skip]``) and their own earlier tokens."""

    start: int
    tokens: Tensor
    skip: int
    context: Tensor


@dataclass
class _Placement:
    """Where a call goes: ``row`` (``len(rows)`` for a new one), the index ``match`` of the placed sequence it
    shares its first ``shared`` tokens with (−1: none), and its sequence ``seq`` (prompt + response)."""

    row: int
    match: int
    shared: int
    seq: Tensor
    prompt_length: int


@dataclass
class _PackedRow:
    """One packed row: a prefix tree of the calls' sequences (prompt + response), each token once."""

    length: int = 0
    sequences: list[Tensor] = field(default_factory=list[Tensor])  # each placed call's prompt + response
    prompt_lengths: list[int] = field(default_factory=list[int])  # each placed call's prompt length
    paths: list[Tensor] = field(default_factory=list[Tensor])  # the row position of each of its tokens
    segments: list[_Segment] = field(default_factory=list[_Segment])


class _Packer:
    """Places calls into packed rows as prefix trees (see the module docstring), one call at a time.

    A call's sequence (prompt + response) is matched against every sequence already in a row: the longest
    common prefix is already laid out there (it is a prefix of one placed sequence, i.e. a path of the tree),
    so only the rest is appended, seeing those positions as its context. A call joins the row where its match
    is longest when the match covers its whole prompt, or — with ``share_prefix_tokens`` set — when it is at
    least that many tokens and at least a quarter of the prompt (sharing a sliver would only lengthen the
    row); otherwise it opens a row of its own. ``share_prefix_tokens=None``: only whole prompts are shared.
    """

    def __init__(self, share_prefix_tokens: int | None) -> None:
        self.share = share_prefix_tokens
        self.rows: list[_PackedRow] = []
        self.placed: list[tuple[int, int]] = []  # per call added: its row and its index among the row's paths

    def place(self, t: Transition) -> _Placement:
        """Where ``t`` would go now (nothing changes until :meth:`add`)."""
        seq = torch.tensor([*t.prompt_ids, *t.response_ids], dtype=torch.int64)
        prompt = len(t.prompt_ids)
        best = (len(self.rows), -1, 0)
        for r, row in enumerate(self.rows):
            for j, other in enumerate(row.sequences):
                if self.share is None and row.prompt_lengths[j] != prompt:
                    continue  # identical prompts only
                n = _common_prefix(seq, other)
                if n > best[2]:
                    best = (r, j, n)
        r, j, n = best
        if n < prompt and (self.share is None or n < max(self.share, 1) or 4 * n < prompt):
            return _Placement(len(self.rows), -1, 0, seq, prompt)
        return _Placement(r, j, n, seq, prompt)

    def padded_tokens(self, extra: _Placement | None = None) -> int:
        """Rows × the longest row, now or (``extra``) after adding that placement."""
        lengths = [row.length for row in self.rows]
        if extra is not None:
            if extra.row == len(lengths):
                lengths.append(0)
            lengths[extra.row] += len(extra.seq) - extra.shared
        return len(lengths) * max(lengths, default=0)

    def add(self, where: _Placement) -> None:
        """Lay out the call :meth:`place` placed (``where``, computed since the last :meth:`add`)."""
        r, j, n, seq = where.row, where.match, where.shared, where.seq
        if r == len(self.rows):
            self.rows.append(_PackedRow())
        row = self.rows[r]
        context = row.paths[j][:n] if j >= 0 else torch.zeros(0, dtype=torch.int64)
        own = torch.arange(row.length, row.length + len(seq) - n, dtype=torch.int64)
        if len(own):
            row.segments.append(_Segment(row.length, seq, n, context))
        row.length += len(own)
        path = torch.cat([context, own])
        row.sequences.append(seq)
        row.prompt_lengths.append(where.prompt_length)
        row.paths.append(path)
        self.placed.append((r, len(row.paths) - 1))


def _collate(
    ts: list[Transition],
    rows: list[int],
    packer: _Packer,
    weights: Tensor,
    current_version: int | None,
    pad_id: int,
) -> MicroBatch:
    """The micro-batch of calls ``ts`` (indices ``rows`` of the whole batch), laid out as ``packer`` packed them."""
    Bp, L = len(packer.rows), max(row.length for row in packer.rows)
    B, R = len(ts), max(len(t.response_ids) for t in ts)
    input_ids = torch.full((Bp, L), pad_id, dtype=torch.int64)
    position_ids = torch.zeros(Bp, L, dtype=torch.int64)
    allowed = torch.eye(L, dtype=torch.bool).repeat(Bp, 1, 1)  # padding attends to itself (no empty softmax row)
    for r, row in enumerate(packer.rows):
        for seg in row.segments:
            n = len(seg.tokens) - seg.skip
            span = slice(seg.start, seg.start + n)
            input_ids[r, span] = seg.tokens[seg.skip :]
            position_ids[r, span] = torch.arange(seg.skip, len(seg.tokens))
            allowed[r, span, span] = torch.ones(n, n, dtype=torch.bool).tril()
            if len(seg.context):
                allowed[r, span, seg.context] = True
    gather = torch.zeros(B, R, dtype=torch.int64)
    response_ids = torch.full((B, R), pad_id, dtype=torch.int64)
    response_mask = torch.zeros(B, R, dtype=torch.bool)
    old = torch.zeros(B, R, dtype=torch.float32)
    for b, (t, (r, k)) in enumerate(zip(ts, packer.placed, strict=True)):
        P, n, path = len(t.prompt_ids), len(t.response_ids), packer.rows[r].paths[k]
        # token 0 is predicted by the last prompt token, token j by the response's token j−1
        gather[b, :n] = r * L + path[P - 1 : P - 1 + n]
        response_ids[b, :n] = torch.tensor(t.response_ids)
        response_mask[b, :n] = True
        old[b, :n] = torch.tensor(t.logprobs, dtype=torch.float32)
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
