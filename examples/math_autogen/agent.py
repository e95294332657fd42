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

The system message states the task; the conversation then starts with one worked exchange (question,
calculator call, its result, final answer) given to AutoGen as the initial messages of the agent's model
context, since a small model almost never calls a tool zero-shot. The gateway renders that exchange in the
model's own tool-call format, so the example shows exactly what the model should write.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import TextMessage
from autogen_core import FunctionCall
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelFamily,
    ModelInfo,
    UserMessage,
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
EXAMPLE_QUESTION = "A box holds 47 pens. How many pens are in 25 boxes?"
EXAMPLE_EXPRESSION = "47 * 25"
EXAMPLE_REPLY = "47 * 25 = 1175\nAnswer: 1175"


def worked_example() -> list[LLMMessage]:
    """One solved exchange the conversation starts with: question, calculator call, its result, answer."""
    call = FunctionCall(id="call_example", name="calculator", arguments=json.dumps({"expression": EXAMPLE_EXPRESSION}))
    result = FunctionExecutionResult(content=calc.calculate(EXAMPLE_EXPRESSION), name="calculator", call_id=call.id)
    return [
        UserMessage(content=EXAMPLE_QUESTION, source="user"),
        AssistantMessage(content=[call], source=AGENT_NAME),
        FunctionExecutionResultMessage(content=[result]),
        AssistantMessage(content=EXAMPLE_REPLY, source=AGENT_NAME),
    ]


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
    """The assistant: the calculator tool, the instructions, the worked example, a final reply after tool use."""
    return AssistantAgent(
        name=AGENT_NAME,
        model_client=model_client,
        tools=[calculator],
        system_message=SYSTEM_MESSAGE,
        model_context=UnboundedChatCompletionContext(initial_messages=worked_example()),
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
