"""Unit tests of the token codec: packing, float32 log-probs and prefix reuse, on hand-written lists."""

from __future__ import annotations

import pytest

from tracerl.errors import InvalidInput
from tracerl.store import codec


def test_ids_pack_to_four_bytes_each_little_endian_and_back() -> None:
    ids = [0, 1, 255, 256, 50_000, -1, 2**31 - 1, -(2**31)]
    data = codec.pack_ids(ids)
    assert len(data) == 4 * len(ids)
    assert data[:8] == b"\x00\x00\x00\x00\x01\x00\x00\x00"  # little-endian on every machine
    assert codec.unpack_ids(data) == ids
    assert codec.unpack_ids(codec.pack_ids([])) == []


def test_ids_outside_int32_are_refused_with_the_value() -> None:
    with pytest.raises(InvalidInput, match="2147483648"):
        codec.pack_ids([1, 2**31])


def test_logprobs_pack_as_float32() -> None:
    values = [-0.5, -1.25, 0.0, -1e-9, -20.123456789]
    data = codec.pack_floats(values)
    assert len(data) == 4 * len(values)
    back = codec.unpack_floats(data)
    assert back[:3] == [-0.5, -1.25, 0.0]  # exactly representable values are exact
    assert back[3] == pytest.approx(-1e-9, rel=1e-7) and back[4] == pytest.approx(-20.123456789, rel=1e-7)
    assert back == codec.round_f32(values)


def test_common_prefix_len() -> None:
    assert codec.common_prefix_len([1, 2, 3], [1, 2, 3, 4]) == 3
    assert codec.common_prefix_len([1, 2, 3, 9], [1, 2, 3, 4]) == 3
    assert codec.common_prefix_len([7], [1]) == 0
    assert codec.common_prefix_len([], [1]) == 0
    a = list(range(1000))
    b = [*range(637), -5, *range(638, 1000)]
    assert codec.common_prefix_len(a, b) == 637


def test_prompt_that_extends_the_previous_turn_stores_only_the_suffix() -> None:
    p1 = list(range(20))
    r1 = [100, 101, 102]
    p2 = [*p1, *r1, 7, 8]
    ctx1 = codec.context_of(p1, r1)
    assert ctx1 == [*p1, *r1]
    packed = codec.encode_tokens(p2, [9], [-0.5], previous=(4, ctx1))
    assert (packed.prompt_ref, packed.prefix_len) == (4, 23)
    assert packed.prompt is not None and codec.unpack_ids(packed.prompt) == [7, 8]
    assert codec.decode_prompt(packed, {4: ctx1}) == p2


def test_partial_overlap_is_reused_up_to_the_common_prefix() -> None:
    p1 = list(range(30))
    r1 = [500, 501]
    p2 = [*p1, 500, 999]  # the template re-rendered the response differently after one token
    packed = codec.encode_tokens(p2, None, None, previous=(0, codec.context_of(p1, r1)))
    assert (packed.prompt_ref, packed.prefix_len) == (0, 31)
    assert codec.decode_prompt(packed, {0: codec.context_of(p1, r1)}) == p2
    assert packed.response is None and packed.logprobs is None


def test_short_or_unrelated_prefixes_are_stored_whole() -> None:
    short = codec.encode_tokens([1, 2, 3, 4], [5], [-1.0], previous=(0, [1, 2, 3]))
    assert short.prompt_ref is None and short.prompt is not None and codec.unpack_ids(short.prompt) == [1, 2, 3, 4]
    unrelated = codec.encode_tokens(list(range(50)), [], [], previous=(0, list(range(1, 51))))
    assert unrelated.prompt_ref is None
    first = codec.encode_tokens(list(range(50)), [1], [-0.1])
    assert first.prompt_ref is None and first.prompt is not None and len(first.prompt) == 200


def test_tracker_decodes_a_chain_of_turns() -> None:
    tracker = codec.ContextTracker()
    p1, r1 = list(range(40)), [1, 2]
    p2, r2 = [*p1, *r1, 3], [4]
    p3, r3 = [*p2, *r2, 5, 6], [7, 8]
    t1 = codec.encode_tokens(p1, r1, [-1.0, -2.0])
    t2 = codec.encode_tokens(p2, r2, [-0.25], previous=(0, codec.context_of(p1, r1)))
    t3 = codec.encode_tokens(p3, r3, [-0.5, -0.75], previous=(2, codec.context_of(p2, r2)))
    assert t3.prompt is not None and len(t3.prompt) == 4 * 2  # turn 3 costs only its two new prompt ids
    assert tracker.decode(0, t1, True) == (p1, r1, [-1.0, -2.0])
    assert tracker.decode(1, codec.PackedTokens(), False) == (None, None, None)
    assert tracker.decode(2, t2, True) == (p2, r2, [-0.25])
    assert tracker.decode(3, t3, True) == (p3, r3, [-0.5, -0.75])


def test_a_reference_to_a_missing_span_is_reported() -> None:
    packed = codec.encode_tokens([*range(20), 1], None, None, previous=(3, list(range(20))))
    with pytest.raises(InvalidInput, match="seq 3"):
        codec.decode_prompt(packed, {})
