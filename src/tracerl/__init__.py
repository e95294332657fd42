"""tracerl: improve existing AI agents with reinforcement learning, without changing their code.

The package imports lightly (no torch, transformers or FastAPI at import time); heavy parts load on first
use of the names that need them (``Trainer``, ``GRPO``, ``evaluate``).

    import tracerl

    @tracerl.agent
    def my_agent(task: dict, llm: tracerl.LLM) -> float: ...

    trainer = tracerl.Trainer(agent=my_agent, algorithm=tracerl.GRPO(model="smollm2-135m"), runners=4)
    trainer.fit(train_tasks, val_tasks=val_tasks)
    store = tracerl.connect("sqlite:///runs/demo.db")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# ``tracerl.agent`` and ``tracerl.evaluate`` are both submodules and the function they define: importing the
# functions here, eagerly (both modules are light), makes the package attributes the functions for good. A
# lazy import would leave the submodule object there whenever the module was imported first (as runner
# processes do with ``tracerl.agent``), and ``@tracerl.agent`` would fail with "module is not callable".
from tracerl.agent import LLM, agent
from tracerl.errors import TracerlError
from tracerl.evaluate import EvalResults, evaluate
from tracerl.store import Store, connect

if TYPE_CHECKING:
    from tracerl.algorithms.apo import APO
    from tracerl.algorithms.grpo import GRPO
    from tracerl.algorithms.ppo import PPO, REINFORCEpp
    from tracerl.algorithms.rloo import RLOO
    from tracerl.algorithms.sft import SFT
    from tracerl.demonstrations import record_demonstrations, tool_call
    from tracerl.tracing import emit_error, emit_message, emit_reward, emit_span
    from tracerl.train.trainer import Stage, Trainer

__version__ = "0.1.0"

# name -> module that defines it, imported on first access
_LAZY: dict[str, str] = {
    "emit_reward": "tracerl.tracing",
    "emit_message": "tracerl.tracing",
    "emit_error": "tracerl.tracing",
    "emit_span": "tracerl.tracing",
    "Trainer": "tracerl.train.trainer",
    "Stage": "tracerl.train.trainer",
    "GRPO": "tracerl.algorithms.grpo",
    "APO": "tracerl.algorithms.apo",
    "SFT": "tracerl.algorithms.sft",
    "PPO": "tracerl.algorithms.ppo",
    "REINFORCEpp": "tracerl.algorithms.ppo",
    "RLOO": "tracerl.algorithms.rloo",
    "record_demonstrations": "tracerl.demonstrations",
    "tool_call": "tracerl.demonstrations",
}

__all__ = [
    "APO",
    "GRPO",
    "LLM",
    "PPO",
    "RLOO",
    "SFT",
    "EvalResults",
    "REINFORCEpp",
    "Stage",
    "Store",
    "TracerlError",
    "Trainer",
    "__version__",
    "agent",
    "connect",
    "emit_error",
    "emit_message",
    "emit_reward",
    "emit_span",
    "evaluate",
    "record_demonstrations",
    "tool_call",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tracerl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
