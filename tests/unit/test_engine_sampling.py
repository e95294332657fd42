"""The hf engine's sampling helpers on hand-computed numbers."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from tracerl.engines.sampling import choose_tokens, row_generator, stop_string_cut, top_p_filter


def test_top_p_keeps_the_smallest_nucleus_reaching_p() -> None:
    probs = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]])
    # row 0 sorted: 0.5, 0.3, 0.1, 0.1 → mass before each: 0, 0.5, 0.8, 0.9; p = 0.7 keeps 0.5 and 0.3
    # row 1 with p = 1.0 keeps everything
    out = top_p_filter(probs, torch.tensor([0.7, 1.0]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.5, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]]))


def test_top_p_always_keeps_the_most_likely_token() -> None:
    out = top_p_filter(torch.tensor([[0.2, 0.6, 0.2]]), torch.tensor([0.01]))
    assert torch.equal(out, torch.tensor([[0.0, 0.6, 0.0]]))


def test_greedy_rows_take_the_argmax_and_report_the_raw_log_prob() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    tokens, logprobs = choose_tokens(logits, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), [None, None])
    assert tokens.tolist() == [1, 2]
    # log softmax by hand: z_x - log Σ e^z
    expected0 = 3.0 - math.log(math.e**1 + math.e**3 + math.e**2)
    expected1 = 5.0 - math.log(2 + math.e**5)
    assert logprobs.tolist() == pytest.approx([expected0, expected1], abs=1e-6)


def test_sampled_log_prob_ignores_temperature_and_top_p() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    raw = torch.log_softmax(logits, -1)[0]
    for temperature, top_p in [(0.3, 1.0), (2.0, 0.5), (1.0, 0.9)]:
        tokens, logprobs = choose_tokens(
            logits, torch.tensor([temperature]), torch.tensor([top_p]), [row_generator(7, 0)]
        )
        assert abs(float(logprobs[0]) - float(raw[tokens[0]])) < 1e-6


def test_top_p_excludes_tail_tokens_when_sampling() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    gen = row_generator(0, 0)
    seen = {int(choose_tokens(logits, torch.tensor([1.0]), torch.tensor([0.8]), [gen])[0][0]) for _ in range(300)}
    assert seen == {0, 1}


def test_row_generators_are_reproducible_and_distinct_per_completion() -> None:
    draw = [torch.rand(3, generator=row_generator(42, i)).tolist() for i in (0, 0, 1)]
    assert draw[0] == draw[1]
    assert draw[0] != draw[2]
    assert torch.rand(3, generator=row_generator(43, 0)).tolist() != draw[0]


def _decode(chars: list[str]) -> Callable[[list[int]], str]:  # token i decodes to chars[i]
    return lambda ids: "".join(chars[i] for i in ids)


def test_stop_string_cut_drops_the_tokens_that_overlap_the_stop_string() -> None:
    pieces = ["Hel", "lo", " wor", "ld", "\n\n", "more"]
    decode = _decode(pieces)
    assert stop_string_cut([0, 1, 2, 3, 4, 5], ["\n\n"], decode) == 4  # keeps "Hello world"
    assert stop_string_cut([0, 1, 2, 3], ["o w"], decode) == 1  # "o" starts inside "lo": "lo" goes too
    assert stop_string_cut([0, 1, 2, 3], ["zzz"], decode) is None
    assert stop_string_cut([0, 1, 2, 3], ["ld", "Hel"], decode) == 0  # the earliest stop string wins

