"""Inference engines: ``hf`` (a transformers model in-process, trainable), ``vllm`` (a vLLM server started
and fed new weights by tracerl, trainable) and ``openai`` (a frozen upstream).

:func:`create_engine` turns a short spec into a running :class:`~tracerl.engines.base.TokenEngine`:

* ``hf:smollm2-135m``, ``hf:tiny-random``, ``hf:/path/to/hf-folder`` — an :class:`~tracerl.engines.hf.HFEngine`;
* ``smollm2-135m``, ``tiny-random`` or a folder path without the ``hf:`` prefix mean the same;
* ``vllm:smollm2-135m``, ``vllm:/path/to/hf-folder`` — a :class:`~tracerl.engines.vllm.VLLMEngine`.

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
    (``device``, ``max_batch_size``, ``max_context``, ``stop_token_ids``) or :class:`VLLMEngine`
    (``max_batch_size`` becomes ``--max-num-seqs``; ``python``, ``extra_args``, ``weight_sync``, …)."""
    kind, sep, name = spec.partition(":")
    if not sep or len(kind) == 1:  # no prefix (a Windows drive letter is not one either)
        kind, name = "hf", spec
    if kind not in ("hf", "vllm"):
        raise ConfigError(
            f"unknown engine kind {kind!r} in {spec!r}: use 'hf:<model name or folder>' (e.g. 'hf:smollm2-135m') "
            "or 'vllm:<model name or folder>'"
        )
    if not name:
        raise ConfigError(f"engine spec {spec!r} names no model: use e.g. 'hf:smollm2-135m' or 'hf:/path/to/model'")
    if kind == "vllm":
        return _vllm_engine(name, dtype, engine_options)
    from tracerl.engines.hf import HFEngine
    from tracerl.engines.models import load_model

    model, tokenizer = load_model(name, dtype=dtype)
    return HFEngine(model, tokenizer, name, **engine_options)


def _vllm_engine(name: str, dtype: str, options: dict[str, Any]) -> TokenEngine:
    from transformers import AutoTokenizer

    from tracerl.engines.models import model_folder
    from tracerl.engines.vllm import VLLMEngine

    folder = model_folder(name)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    batch = options.pop("max_batch_size", None)
    extra = [*(["--max-num-seqs", str(batch)] if batch else []), *options.pop("extra_args", [])]
    return VLLMEngine(folder, tokenizer, name, dtype=dtype, extra_args=extra, **options)
