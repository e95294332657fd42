"""Inference engines: ``hf`` (a transformers model in-process, trainable) and ``openai`` (a frozen upstream).

:func:`create_engine` turns a short spec into a running :class:`~tracerl.engines.base.TokenEngine`:

* ``hf:smollm2-135m``, ``hf:tiny-random``, ``hf:/path/to/hf-folder`` — an :class:`~tracerl.engines.hf.HFEngine`;
* ``smollm2-135m``, ``tiny-random`` or a folder path without the ``hf:`` prefix mean the same.

torch is imported only when an engine is created, so importing this package stays cheap (runners never
need torch).
"""

from __future__ import annotations

from typing import Any

from tracerl.engines.base import Completion, SamplingParams, TokenEngine
from tracerl.errors import ConfigError

__all__ = ["Completion", "SamplingParams", "TokenEngine", "create_engine"]


def create_engine(spec: str, *, dtype: str = "float32", **engine_options: Any) -> TokenEngine:
    """Load the model named by ``spec`` and serve it; ``engine_options`` go to :class:`HFEngine`
    (``device``, ``max_batch_size``, ``max_context``, ``stop_token_ids``)."""
    kind, sep, name = spec.partition(":")
    if not sep or len(kind) == 1:  # no prefix (a Windows drive letter is not one either)
        kind, name = "hf", spec
    if kind != "hf":
        raise ConfigError(
            f"unknown engine kind {kind!r} in {spec!r}: use 'hf:<model name or folder>' (e.g. 'hf:smollm2-135m')"
        )
    if not name:
        raise ConfigError(f"engine spec {spec!r} names no model: use e.g. 'hf:smollm2-135m' or 'hf:/path/to/model'")
    from tracerl.engines.hf import HFEngine
    from tracerl.engines.models import load_model

    model, tokenizer = load_model(name, dtype=dtype)
    return HFEngine(model, tokenizer, name, **engine_options)
