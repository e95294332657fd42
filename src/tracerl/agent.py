"""What the user's agent is to tracerl: the ``@tracerl.agent`` decorator and the ``tracerl.LLM`` handle.

An agent is a function ``(task: dict, llm: LLM) -> float | None``, sync or ``async``, whose return value is
the rollout's final reward. Inside, it uses its own framework and only takes the endpoint from ``llm``::

    @tracerl.agent
    async def math_agent(task: dict, llm: tracerl.LLM) -> float:
        client = openai.AsyncOpenAI(base_url=llm.base_url, api_key=llm.api_key)
        r = await client.chat.completions.create(model=llm.model, messages=[...], **llm.sampling)
        return float(r.choices[0].message.content.strip() == task["answer"])

Runners run agents in a separate worker process, so an agent is referenced by import path
(:class:`AgentRef`, ``"module:function"``); :func:`agent_ref` derives it from the function and
:func:`load_agent` imports it in the worker. An agent defined in the script being run (``__main__``) is
loaded from the script file under another module name, so the script must keep its own top-level work
under ``if __name__ == "__main__":`` (the rule :mod:`multiprocessing` has too).
"""

from __future__ import annotations

import importlib
import inspect
import runpy
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tracerl.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

#: the module name a ``__main__`` script is loaded under in a worker process
MAIN_ALIAS = "__tracerl_main__"


@dataclass(frozen=True, slots=True)
class LLM:
    """The model endpoint an agent talks to for one rollout attempt, and its sampling defaults.

    ``base_url = {gateway}/r/{rollout_id}/{attempt_id}/v1`` names the attempt, so every call the agent makes
    through any OpenAI-compatible client is recorded for it. ``sampling`` holds the defaults to pass on
    (``**llm.sampling``); evaluation rollouts (mode ``val``/``test``) get ``temperature=0`` (greedy), or the
    temperature a sampled evaluation asked for (``tracerl.evaluate(samples=k, temperature=t)``, for pass@k).
    ``resources`` is the value of the resources bundle the rollout runs with (for example
    ``resources["prompt_template"]``), ``resources_version`` its version (``None`` when there is none).
    """

    gateway_url: str | None
    rollout_id: str
    attempt_id: str
    model: str
    api_key: str = "tracerl"
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    mode: str = "train"
    resources: dict[str, Any] = field(default_factory=dict)
    resources_version: int | None = None

    @property
    def base_url(self) -> str:
        if not self.gateway_url:
            raise ConfigError(
                "this agent has no LLM endpoint: the runner was started without a gateway URL; "
                "pass --gateway http://HOST:PORT to `tracerl runner` (or gateway_url= to Runner)"
            )
        return f"{self.gateway_url.rstrip('/')}/r/{self.rollout_id}/{self.attempt_id}/v1"

    @property
    def sampling(self) -> dict[str, Any]:
        """The sampling defaults that are set, as OpenAI request arguments."""
        values = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        return {k: v for k, v in values.items() if v is not None}


def agent(fn: F) -> F:
    """Mark ``fn(task, llm)`` as a tracerl agent (sync or async). Returns ``fn`` itself, unchanged, so it
    can still be called directly; raises :class:`ConfigError` if it cannot take ``(task, llm)``."""
    if not callable(fn):
        raise ConfigError(f"@tracerl.agent decorates a function, got {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise ConfigError(
            f"agent {getattr(fn, '__qualname__', fn)!r} must accept two positional arguments (task, llm); "
            f"its signature is {inspect.signature(fn)}"
        ) from None
    except ValueError:
        pass  # builtins without a signature: trust the caller
    fn.__tracerl_agent__ = True  # type: ignore[attr-defined]
    return fn


def is_async_agent(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` returns a coroutine (``async def``, or an object with an ``async __call__``)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


@dataclass(frozen=True, slots=True)
class AgentRef:
    """Where a worker process imports the agent from: ``module:qualname``, or a script ``path`` when the
    agent lives in ``__main__``."""

    module: str
    qualname: str
    path: str | None = None

    def __str__(self) -> str:
        return f"{self.path or self.module}:{self.qualname}"


def agent_ref(agent_or_ref: Callable[..., Any] | str | AgentRef) -> AgentRef:
    """The :class:`AgentRef` of an agent function or of a ``"module:function"`` string."""
    if isinstance(agent_or_ref, AgentRef):
        return agent_or_ref
    if isinstance(agent_or_ref, str):
        module, sep, qualname = agent_or_ref.partition(":")
        if not sep or not module or not qualname or not all(p.isidentifier() for p in qualname.split(".")):
            raise ConfigError(
                f"agent reference {agent_or_ref!r} is not of the form 'module:function' "
                "(for example 'my_agents.sql:sql_agent')"
            )
        return AgentRef(module, qualname)
    if not callable(agent_or_ref):
        raise ConfigError(f"agent must be a function or a 'module:function' string, got {agent_or_ref!r}")
    module = getattr(agent_or_ref, "__module__", None)
    qualname = getattr(agent_or_ref, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or "<lambda>" in qualname:
        raise ConfigError(
            f"agent {agent_or_ref!r} cannot be imported by a worker process: define it at the top level of a "
            "module (not inside a function, not a lambda)"
        )
    if module == "__main__":
        path = getattr(sys.modules["__main__"], "__file__", None)
        if path is None:
            raise ConfigError(
                f"agent {qualname!r} is defined in an interactive session; worker processes cannot import it. "
                "Put it in a module and pass it (or 'module:function')"
            )
        return AgentRef(module, qualname, str(Path(path).resolve()))
    return AgentRef(module, qualname)


def load_agent(ref: AgentRef) -> Callable[..., Any]:
    """Import the agent named by ``ref``; :class:`ConfigError` with the reason if that fails."""
    try:
        if ref.path is not None:
            namespace: Any = runpy.run_path(ref.path, run_name=MAIN_ALIAS)
            obj: Any = namespace[ref.qualname.split(".")[0]]
            rest = ref.qualname.split(".")[1:]
        else:
            obj = importlib.import_module(ref.module)
            rest = ref.qualname.split(".")
        for part in rest:
            obj = getattr(obj, part)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"cannot load agent {ref}: {type(e).__name__}: {e}") from e
    if not callable(obj):
        raise ConfigError(f"agent {ref} is a {type(obj).__name__}, not a function")
    return obj
