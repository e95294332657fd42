"""Pure sampling helpers of the hf engine: choose the next token of each row and find where stop strings end it.

Each row ``b`` of a batch has its own temperature :math:`T_b`, nucleus mass :math:`p_b` and random generator.
With raw logits :math:`z_b \\in \\mathbb{R}^V`:

* greedy (:math:`T_b = 0`): :math:`x_b = \\arg\\max_v z_{b,v}`;
* otherwise :math:`q_b = \\mathrm{softmax}(z_b / T_b)`, restricted to the smallest set of most likely tokens
  whose mass reaches :math:`p_b` (top-p), renormalised, and :math:`x_b \\sim q_b` drawn with the row's generator.

The log-prob recorded for training is always that of the *unmodified* policy,
:math:`\\log \\pi(x_b) = z_{b,x_b} - \\log \\sum_v e^{z_{b,v}}` (temperature 1, no top-p): PPO/GRPO ratios
:math:`\\pi_\\theta(x)/\\pi_{old}(x)` compare the model's own distributions whatever the request's settings.
A learner that trains at the sampling temperature (:class:`~tracerl.algorithms.policy.Policy`) computes both
from one forward: the tempered log-probs it trains and the temperature-1 ones it compares with these.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row of ``probs`` (B, V) outside its top-``top_p`` (B,) nucleus.

    A token is kept when the mass of the strictly more likely tokens is below ``top_p``, so the most likely
    token is always kept. The result is not renormalised (``torch.multinomial`` does not need it).
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V)
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p[:, None], 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def choose_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    generators: list[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row; return ``(tokens (B,), logprobs (B,))`` with logprobs under the raw logits.

    ``logits`` (B, V) are the raw next-token logits, ``temperature`` and ``top_p`` (B,) the per-row settings
    (temperature 0 = greedy), ``generators[b]`` the random generator of row ``b`` (ignored when greedy).
    """
    logits = logits.float()
    logprobs_all = torch.log_softmax(logits, dim=-1)  # (B, V)
    tokens = logits.argmax(dim=-1)  # (B,)
    sampled = (temperature > 0).nonzero().flatten().tolist()
    if sampled:
        rows = torch.tensor(sampled)
        probs = torch.softmax(logits[rows] / temperature[rows, None], dim=-1)  # (S, V)
        if bool((top_p[rows] < 1.0).any()):
            probs = top_p_filter(probs, top_p[rows])
        probs = probs.cpu()  # the row generators live on the CPU (same draws on every device)
        for i, b in enumerate(sampled):
            tokens[b] = int(torch.multinomial(probs[i], 1, generator=generators[b])[0])
    logprobs = logprobs_all.gather(-1, tokens[:, None])[:, 0]  # (B,)
    return tokens, logprobs


def row_generator(seed: int | None, index: int) -> torch.Generator:
    """The generator of completion ``index`` of a request: seeded from ``(seed, index)``, or fresh entropy."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed((seed * 1_000_003 + index) % (2**63))
    return gen


def stop_string_cut(token_ids: list[int], stops: list[str], decode: Callable[[list[int]], str]) -> int | None:
    """Return how many of ``token_ids`` to keep if their text contains one of ``stops``, else ``None``.

    The cut drops every token that overlaps the earliest stop string, so the kept ids decode to a prefix of
    the text before the stop string (when the stop string starts in the middle of a token, that token's
    leading characters go too: ids are what the model sampled, and a token cannot be split).
    ``decode`` maps a list of ids to text.
    """
    text: str = decode(token_ids)
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not found:
        return None
    cut_at = min(found)
    keep = len(token_ids)
    while keep > 0 and len(decode(token_ids[:keep])) > cut_at:
        keep -= 1
    return keep


def tail_contains_stop(token_ids: list[int], stops: list[str], decode: Callable[[list[int]], str], window: int) -> bool:
    """Whether the text of the last ``window`` ids contains a stop string (a cheap check after each step)."""
    tail: str = decode(token_ids[-window:])
    return any(s in tail for s in stops)
