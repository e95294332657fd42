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
