"""hf engine throughput against transformers' own batched ``model.generate`` on the same model and batch.

Both sides sample ``batch`` completions of ``new_tokens`` tokens each from the same prompts (chat-rendered
questions of different lengths, so padding is part of the work), in the same process, alternating the two
sides ``repeats`` times to spread noise, and report generated tokens per second:

    tokens/s = batch · new_tokens / wall-clock seconds,   ratio = engine tokens/s / generate tokens/s.

The engine receives the ``batch`` prompts as concurrent ``generate`` calls (as the gateway does with
concurrent agents), with its stop tokens switched off so every row really generates ``new_tokens`` tokens,
like ``generate(min_new_tokens=new_tokens)``. Greedy decoding on both sides, so neither pays for sampling
the other skips. The engine additionally computes the log-prob of every sampled token.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

logger = logging.getLogger(__name__)

_QUESTIONS = [
    "What is 12 + 7?",
    "Name a colour.",
    "Write one sentence about the sea and the wind over it.",
    "How many days are there in a week?",
    "What is the capital of France? Answer with one word.",
    "List three fruits.",
    "Explain in a few words what a database table is, and what a row and a column are.",
    "Say hello.",
]


def measure_engine_vs_generate(
    model_name: str, batch: int = 8, new_tokens: int = 64, repeats: int = 3
) -> dict[str, Any]:
    """Return ``{"engine_tokens_per_s", "generate_tokens_per_s", "ratio", ...}`` for ``model_name``."""
    import torch

    from tracerl.engines.base import SamplingParams
    from tracerl.engines.hf import HFEngine
    from tracerl.engines.models import load_model

    model, tokenizer = load_model(model_name)
    prompts: list[list[int]] = []
    for i in range(batch):
        messages = [{"role": "user", "content": _QUESTIONS[i % len(_QUESTIONS)]}]
        prompts.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=True)["input_ids"]))
    engine = HFEngine(model, tokenizer, model_name, max_batch_size=batch, stop_token_ids=[])
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)

    async def engine_run() -> int:
        results = await asyncio.gather(*(engine.generate(p, params) for p in prompts))
        return sum(len(c.token_ids) for r in results for c in r)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def generate_run() -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        return int(out[:, width:].numel())

    async def measure() -> tuple[list[float], list[float]]:
        await engine_run()  # warm-up both sides (thread start, allocator, kernels)
        generate_run()
        engine_rates: list[float] = []
        generate_rates: list[float] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            tokens = await engine_run()
            engine_rates.append(tokens / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            tokens = generate_run()
            generate_rates.append(tokens / (time.perf_counter() - t0))
        await engine.aclose()
        return engine_rates, generate_rates

    engine_rates, generate_rates = asyncio.run(measure())
    engine_tps, generate_tps = statistics.median(engine_rates), statistics.median(generate_rates)
    result = {
        "model": model_name,
        "batch": batch,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "engine_tokens_per_s": round(engine_tps, 1),
        "generate_tokens_per_s": round(generate_tps, 1),
        "ratio": round(engine_tps / generate_tps, 3),
    }
    logger.info("engine vs generate: %s", result)
    return result
