"""Shared model fixtures: the tiny random model, built once per test session in a temporary folder.

``tiny_model`` is shared by every test of the session: treat it as read-only (a test that changes weights
loads its own copy with ``load_model(tiny_model_dir)``, which takes a few milliseconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the tiny random Llama (seed 0) and its tokenizer, as written by ``build_tiny_model``."""
    from tracerl.engines.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-random", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the tiny random model, shared by the session: do not change its weights."""
    from tracerl.engines.models import load_model

    return load_model(tiny_model_dir)


@pytest.fixture
def tiny_engine(tiny_model: tuple[Any, Any]) -> Iterator[Any]:
    """An ``HFEngine`` serving the shared tiny model as ``tiny-random``, closed after the test."""
    from tracerl.engines.hf import HFEngine

    model, tokenizer = tiny_model
    engine = HFEngine(model, tokenizer, "tiny-random", max_batch_size=8)
    yield engine
    asyncio.run(engine.aclose())


def teach(model: Any, examples: list[tuple[list[int], list[int]]], margin: float = 20.0) -> None:
    r"""Make greedy decoding after each ``prompt`` produce its ``target``, by editing only the output layer.

    Used by tests that need a real model to emit a fixed text (a tool call, an answer) through real generation.
    With the output layer untied from the embeddings, the final hidden states :math:`H` (T, D) that predict
    the T target tokens of all examples (teacher forcing) do not depend on it. With :math:`Z_0 = H W_0^\top`
    and :math:`B` (T, V) zero except :math:`B_{t,y_t} = \max_v Z_{0,tv} - Z_{0,ty_t} + \text{margin}`, the
    minimum-norm :math:`\Delta = H^+ B` gives :math:`H (W_0 + \Delta^\top)^\top = Z_0 + B` (H has full row
    rank, T < D): every target token wins by ``margin`` logits. Changes ``model`` in place: use a copy.
    """
    import torch

    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    with torch.no_grad():
        states, labels = [], []
        for prompt, target in examples:
            hidden = model.model(input_ids=torch.tensor([prompt + target])).last_hidden_state[0]  # (P+T, D)
            states.append(hidden[len(prompt) - 1 : -1].double())  # (T, D)
            labels += target
        h = torch.cat(states)  # (T, D)
        w0 = model.lm_head.weight.double()  # (V, D)
        z0 = h @ w0.T  # (T, V)
        rows, cols = torch.arange(len(labels)), torch.tensor(labels)
        bump = torch.zeros_like(z0)
        bump[rows, cols] = z0.max(-1).values - z0[rows, cols] + margin
        model.lm_head.weight.copy_((w0 + (torch.linalg.pinv(h) @ bump).T).float())


#: an OpenAI-format tool definition the tool-calling tests share
ADD_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
    },
}
