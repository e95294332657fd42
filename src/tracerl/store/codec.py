"""Compact storage of the token ids and log-probs in ``llm_call`` spans, with prefix reuse.

Token ids are stored as packed little-endian int32 arrays (4 bytes per id instead of ~6 as JSON text), and
log-probs as packed little-endian float32 (the precision models compute them in). Every backend rounds
log-probs to float32, so a value read back is the same whichever backend stored it.

Multi-turn agents send prompts that repeat the previous call's prompt and response. For an ``llm_call``
span at ``seq`` whose previous ``llm_call`` span of the same attempt (highest ``seq' < seq``) had context
``c' = prompt' + response'``, the prompt is stored as a reference plus the new suffix::

    n = len(common_prefix(prompt, c'))           # stored only when n >= MIN_PREFIX_REUSE
    stored = (ref_seq = seq', prefix_len = n, suffix = prompt[n:])
    prompt = c'[:n] + suffix                      # on read

A chain of turns therefore costs each turn only its new tokens. Reading decodes an attempt's spans in
``seq`` order with :class:`ContextTracker`, which always has the referenced context at hand.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from tracerl.errors import InvalidInput

MIN_PREFIX_REUSE = 16
"""Shortest shared prefix worth a reference: below it the saving (4 bytes per id) is not worth a lookup."""

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_SWAP = sys.byteorder == "big"
_Item = TypeVar("_Item", int, float)  # stored format is little-endian on every machine


def pack_ids(ids: Sequence[int]) -> bytes:
    """Token ids → packed little-endian int32 bytes. Ids outside int32 raise :class:`InvalidInput`."""
    try:
        arr = array("i", ids)
    except OverflowError:
        bad = next(i for i in ids if not INT32_MIN <= i <= INT32_MAX)
        raise InvalidInput(f"token id {bad} does not fit in a signed 32-bit integer") from None
    if _SWAP:
        arr.byteswap()
    return arr.tobytes()


def _unpack(arr: array[_Item], data: bytes) -> list[_Item]:
    """Little-endian packed bytes → a Python list, through the empty ``arr`` of the stored item type."""
    arr.frombytes(data)
    if _SWAP:
        arr.byteswap()
    return arr.tolist()


def unpack_ids(data: bytes) -> list[int]:
    """Inverse of :func:`pack_ids`."""
    return _unpack(array("i"), data)


def pack_floats(values: Sequence[float]) -> bytes:
    """Log-probs → packed little-endian float32 bytes (values are rounded to float32)."""
    arr = array("f", values)
    if _SWAP:
        arr.byteswap()
    return arr.tobytes()


def unpack_floats(data: bytes) -> list[float]:
    """Inverse of :func:`pack_floats` (returns Python floats holding float32 values)."""
    return _unpack(array("f"), data)


def round_f32(values: Sequence[float]) -> list[float]:
    """Round each value to the nearest float32, as a stored and re-read log-prob would be."""
    return array("f", values).tolist()


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if list(a[lo:mid]) == list(b[lo:mid]):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(slots=True)
class PackedTokens:
    """The token columns of one stored span. ``prompt`` holds only the suffix when ``prompt_ref`` is set."""

    prompt: bytes | None = None
    prompt_ref: int | None = None
    prefix_len: int = 0
    response: bytes | None = None
    logprobs: bytes | None = None


def context_of(prompt_ids: Sequence[int] | None, response_ids: Sequence[int] | None) -> list[int]:
    """What a following turn's prompt may repeat: ``prompt + response``."""
    return [*(prompt_ids or ()), *(response_ids or ())]


def encode_tokens(
    prompt_ids: Sequence[int] | None,
    response_ids: Sequence[int] | None,
    logprobs: Sequence[float] | None,
    previous: tuple[int, Sequence[int]] | None = None,
) -> PackedTokens:
    """Pack one span's ids; ``previous = (seq, context)`` of the previous llm_call span enables reuse."""
    out = PackedTokens(
        response=None if response_ids is None else pack_ids(response_ids),
        logprobs=None if logprobs is None else pack_floats(logprobs),
    )
    if prompt_ids is None:
        return out
    if previous is not None:
        ref_seq, ctx = previous
        n = common_prefix_len(prompt_ids, ctx)
        if n >= MIN_PREFIX_REUSE:
            out.prompt_ref, out.prefix_len = ref_seq, n
            out.prompt = pack_ids(prompt_ids[n:])
            return out
    out.prompt = pack_ids(prompt_ids)
    return out


def decode_prompt(packed: PackedTokens, contexts: dict[int, list[int]]) -> list[int] | None:
    """Rebuild the full prompt; ``contexts`` maps earlier seqs of the same attempt to their context."""
    if packed.prompt is None:
        return None
    suffix = unpack_ids(packed.prompt)
    if packed.prompt_ref is None:
        return suffix
    try:
        ctx = contexts[packed.prompt_ref]
    except KeyError:
        raise InvalidInput(
            f"stored prompt refers to span seq {packed.prompt_ref}, which is missing; the store is corrupt"
        ) from None
    return ctx[: packed.prefix_len] + suffix


class ContextTracker:
    """Decodes the llm_call spans of one attempt in ``seq`` order, remembering each one's context."""

    def __init__(self) -> None:
        self.contexts: dict[int, list[int]] = {}

    def decode(
        self, seq: int, packed: PackedTokens, is_llm_call: bool
    ) -> tuple[list[int] | None, list[int] | None, list[float] | None]:
        """``(prompt_ids, response_ids, logprobs)`` of the span at ``seq``."""
        prompt = decode_prompt(packed, self.contexts)
        response = None if packed.response is None else unpack_ids(packed.response)
        logprobs = None if packed.logprobs is None else unpack_floats(packed.logprobs)
        if is_llm_call:
            self.contexts[seq] = context_of(prompt, response)
        return prompt, response, logprobs
