"""What an inference engine is to tracerl: token ids in, sampled token ids and their log-probs out.

Engines are pure inference: they never touch the store. The gateway renders chat templates with the
engine's tokenizer, calls :meth:`TokenEngine.generate`, and records exactly what it returns. The trainer
swaps weights with :meth:`TokenEngine.load_weights`, after which every completion carries the new
``weights_version``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

from tracerl.errors import InvalidInput

FinishReason = Literal["stop", "length"]


@dataclass(slots=True)
class SamplingParams:
    """Sampling settings of one request (OpenAI names and meanings).

    ``temperature == 0`` means greedy decoding. ``stop_token_ids`` end a completion and are included in
    the returned ids (so training sees the end-of-turn token); ``stop`` strings end it too and are not.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidInput(f"max_tokens must be an integer ≥ 1, got {self.max_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 10.0:
            raise InvalidInput(f"temperature must be in [0, 10], got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise InvalidInput(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.n, int) or not 1 <= self.n <= 64:
            raise InvalidInput(f"n must be an integer in [1, 64], got {self.n!r}")


@dataclass(slots=True)
class Completion:
    """One sampled continuation: ids as sampled, ``logprobs[i] = log p(token_ids[i] | prefix)`` under the
    weights that sampled it (temperature 1, no top-p renormalisation: the policy's own probability)."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    weights_version: int


class TokenEngine(abc.ABC):
    """A trainable model served token-in/token-out (``hf``: in-process transformers; ``vllm``: a vLLM server)."""

    #: the name clients pass as ``model`` (e.g. ``smollm2-135m``)
    model_name: str
    #: a transformers tokenizer (chat template, encode/decode)
    tokenizer: Any
    #: the largest prompt + completion length in tokens
    max_context: int

    @property
    @abc.abstractmethod
    def weights_version(self) -> int:
        """Version of the weights now serving (0 for the initial weights)."""

    @abc.abstractmethod
    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        """Sample ``params.n`` completions of ``prompt_ids``. Concurrent calls are batched together."""

    @abc.abstractmethod
    def load_weights(self, state_dict: dict[str, Any], version: int) -> None:
        """Serve ``state_dict`` from now on, tagging completions with ``version``. Requests in flight finish
        on the weights they started with or the new ones, never a mix within one completion."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to free by default
        """Stop background workers and free memory."""

    def info(self) -> dict[str, str]:
        """Where and how the engine serves (``kind``, ``device``, ``dtype``), for the run's resources record."""
        return {}


def check_request(
    prompt_ids: list[int], params: SamplingParams, *, vocab_size: int, max_context: int, model_name: str
) -> int:
    """Check one :meth:`TokenEngine.generate` request; return how many tokens it may generate.

    Every engine refuses the same requests with the same :class:`InvalidInput` messages.
    """
    if not isinstance(params, SamplingParams):
        raise InvalidInput(f"params must be a SamplingParams, got {type(params).__name__}")
    SamplingParams.__post_init__(params)  # re-check: fields may have been changed after construction
    if not isinstance(prompt_ids, list | tuple) or not prompt_ids:
        raise InvalidInput("prompt_ids must be a non-empty list of token ids")
    bad = [t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise InvalidInput(f"prompt_ids contains {bad[:3]!r}, not token ids of {model_name!r} "
                           f"(integers in [0, {vocab_size}))")
    bad = [t for t in params.stop_token_ids if not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        raise InvalidInput(f"stop_token_ids contains {bad[:3]!r}: integers in [0, {vocab_size}) expected")
    if not isinstance(params.stop, list) or not all(isinstance(s, str) and s for s in params.stop):
        raise InvalidInput(f"stop must be a list of non-empty strings, got {params.stop!r}")
    if params.seed is not None and (not isinstance(params.seed, int) or params.seed < 0):
        raise InvalidInput(f"seed must be an integer ≥ 0 or None, got {params.seed!r}")
    if len(prompt_ids) >= max_context:
        raise InvalidInput(
            f"the prompt has {len(prompt_ids)} tokens but {model_name!r} serves at most "
            f"{max_context} tokens of prompt + completion: shorten the prompt to at most "
            f"{max_context - 1} tokens"
        )
    return min(params.max_tokens, max_context - len(prompt_ids))
