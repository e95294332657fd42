"""A math assistant written with AutoGen: an ``AssistantAgent`` with a calculator tool solves a word problem.

This is the user's agent, written the way AutoGen's own docs write one (AgentChat's ``AssistantAgent`` with
a Python function as its tool, run by ``await agent.run(task=...)``, over ``OpenAIChatCompletionClient``).
The only tracerl-specific lines take ``model``, ``base_url``, ``api_key`` and the sampling defaults from
the ``llm`` handle. Since the model is not an OpenAI model, AutoGen needs its ``model_info`` (what the
model can do: function calling yes, vision/JSON/structured output no).

One rollout: the assistant receives the question, may call ``calculator(expression)`` up to
:data:`MAX_TOOL_ITERATIONS` times (AutoGen executes each call and sends the result back), and then, since
``reflect_on_tool_use=True``, writes a final text reply; that reply's answer is scored with
:func:`math_autogen.reward.score` (exact numeric match). Every model call AutoGen makes goes through the
gateway and is recorded as an ``llm_call`` span: one to three tool-calling turns plus the final reply.

The system message states the task and the answer format; there is no worked example. An earlier version
started the conversation with one solved exchange (``47 * 25`` → ``Answer: 1175``): SmolLM2-135M copied its
format but also its answer (45 of 100 held-out word problems answered 1175) and never its tool call, so the
example poisoned what it was meant to teach. The tool format is taught by the recipe's warm start instead
(``recipe.py``: SFT on gold calculator demonstrations from the train split, then GRPO).
"""

from __future__ import annotations

from typing import Annotated, Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import TextMessage
from autogen_core.models import (
    ModelFamily,
    ModelInfo,
)
from autogen_ext.models.openai import OpenAIChatCompletionClient

import tracerl
from math_autogen import calculator as calc
from math_autogen.reward import score

AGENT_NAME = "math_solver"
MAX_TOOL_ITERATIONS = 3

SYSTEM_MESSAGE = (
    "You solve math problems. Use the calculator tool for the arithmetic. When you know the result, "
    'reply with one last line "Answer: <number>".'
)
# what AutoGen needs to know about a model it has no built-in entry for
MODEL_INFO = ModelInfo(
    vision=False,
    function_calling=True,
    json_output=False,
    structured_output=False,
    family=ModelFamily.UNKNOWN,
    multiple_system_messages=False,
)


def calculator(expression: Annotated[str, "arithmetic with numbers, + - * / // % ** and parentheses"]) -> str:
    """Evaluate an arithmetic expression exactly, for example "(12 + 30) * 3 / 4"."""
    try:
        return calc.calculate(expression)
    except calc.CalculatorError as e:
        return f"Error: {e}"


def build_agent(model_client: OpenAIChatCompletionClient) -> AssistantAgent:
    """The assistant: the calculator tool, the instructions, a final reply after tool use."""
    return AssistantAgent(
        name=AGENT_NAME,
        model_client=model_client,
        tools=[calculator],
        system_message=SYSTEM_MESSAGE,
        max_tool_iterations=MAX_TOOL_ITERATIONS,
        reflect_on_tool_use=True,
    )


async def solve(question: str, model_client: OpenAIChatCompletionClient) -> str:
    """Run the assistant on one question and return its final text reply ("" when it gave none)."""
    agent = build_agent(model_client)
    result = await agent.run(task=question)
    replies = [m for m in result.messages if isinstance(m, TextMessage) and m.source == agent.name]
    return replies[-1].content if replies else ""


@tracerl.agent
async def math_agent(task: dict[str, Any], llm: tracerl.LLM) -> float:
    """Solve ``task["question"]`` and score the reply against ``task["answer"]`` (1.0 or 0.0)."""
    model_client = OpenAIChatCompletionClient(
        model=llm.model,
        base_url=llm.base_url,
        api_key=llm.api_key,
        model_info=MODEL_INFO,
        max_retries=0,
        **llm.sampling,
    )
    try:
        reply = await solve(task["question"], model_client)
    finally:
        await model_client.close()
    return score(reply, task["answer"])
