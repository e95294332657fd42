"""A research agent written with the OpenAI Agents SDK: it searches an encyclopedia and answers questions.

This is the user's agent, written the way the SDK's own docs write one (an ``Agent`` with instructions and a
``@function_tool``, run by ``Runner.run``). The model is reached through the Chat Completions API
(``OpenAIChatCompletionsModel`` over an ``AsyncOpenAI`` client), so any OpenAI-compatible server can serve
it; the only tracerl-specific lines take ``base_url``, ``api_key``, ``model`` and the sampling defaults from
the ``llm`` handle. Tracing to OpenAI's servers is switched off: this runs offline, and tracerl's gateway
records every call anyway.

The tool ``search(query)`` returns the 3 best BM25 matches (:mod:`rag_agents.retrieval`) as text. A 2-hop
question takes two searches (the person, then their city), then the answer. Before the question, the
conversation holds two worked examples, given as the SDK's own input items so each model sees them in its own
tool-call format: one whose first article states the answer (one search, the answer) and one whose first
article only names where to look next (two searches, the answer), so the model is shown when to stop. The
reward is the answer F1 against the gold answers (:mod:`rag_agents.reward`); a run that ends without an answer
(too many turns, or a tool call the SDK cannot execute) scores 0.

An intermediate reward, for training only: when the task lists its ``evidence`` (the articles the question
needs), a search that first brings one of them into the conversation records ``evidence`` = 0.2 per new
article (``tracerl.emit_reward``), credited to the call that asked for it under ``GRPO(returns="step")`` and
added to the rollout's score under ``returns="total"``.
It gives a group of 2-hop rollouts that all answer wrongly a signal for the second search: measured, RL
without it found no 2-hop success to learn from and stopped searching twice (README, *Balanced by hops*).
A search that brings in no needed article records ``search_cost`` = −(the task's ``search_cost``, default 0):
with it, a second search on a 1-hop question costs something. The task may set both weights
(``evidence_reward``, ``search_cost``). Neither enters the task's reward.

What the SDK sends here, per turn: ``model``, ``messages`` (system instructions first, the tool results as
``tool`` messages), ``tools`` (the function's strict JSON schema) and the sampling settings; no ``stream``
(``Runner.run`` is not streamed), no ``parallel_tool_calls`` or ``tool_choice`` unless ``ModelSettings``
sets them, no ``store`` (it is only sent to api.openai.com).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agents import (
    Agent,
    FunctionTool,
    MaxTurnsExceeded,
    ModelBehaviorError,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    TResponseInputItem,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

import tracerl
from rag_agents.retrieval import Index, default_index, index_for
from rag_agents.reward import score

set_tracing_disabled(True)  # offline: do not export the SDK's traces to OpenAI

MAX_TURNS = 4
TOP_K = 3
EVIDENCE_REWARD = 0.2  # the ``evidence`` intermediate reward per needed article a search first brings in

INSTRUCTIONS = """\
You answer questions about a fictional world. You know nothing about it yourself: find the facts with the \
search tool, which returns articles of the world's encyclopedia. First search the person, company or city \
the question names. If that article states the answer, answer. If it does not, search the city or company \
that article mentions, then answer.
When you know the answer, reply with one last line "Answer: <the name or year>"."""


def _example_call(call_id: str, query: str, article: str) -> list[TResponseInputItem]:
    call: TResponseInputItem = {
        "type": "function_call",
        "call_id": call_id,
        "name": "search",
        "arguments": json.dumps({"query": query}),
    }
    output: TResponseInputItem = {"type": "function_call_output", "call_id": call_id, "output": article}
    return [call, output]


#: two worked exchanges shown before the question (small models rarely call a tool without one): one whose
#: first article states the answer (one search), one whose first article names where to look next (two); their
#: world is not the corpus's, so they give the strategy away but no answer
EXAMPLE: list[TResponseInputItem] = [
    {"role": "user", "content": "Which company does Oskar Lund work for?"},
    *_example_call("example_1", "Oskar Lund", "[1] Oskar Lund\nOskar Lund is a baker born in 1964 in Brem. "
                                              "He works for Halvi Foods."),
    {"role": "assistant", "content": "Answer: Halvi Foods"},
    {"role": "user", "content": "In which country was Ana Berg born?"},
    *_example_call("example_2", "Ana Berg", "[1] Ana Berg\nAna Berg is a pilot born in 1971 in Tolva."),
    *_example_call("example_3", "Tolva", "[1] Tolva\nTolva is a city in Marsland, on the river Ebro."),
    {"role": "assistant", "content": "Answer: Marsland"},
]


def search_tool(
    index: Index | None = None,
    evidence: Sequence[str] | None = None,
    evidence_reward: float = EVIDENCE_REWARD,
    search_cost: float = 0.0,
    top_k: int = TOP_K,
) -> FunctionTool:
    """The ``search`` tool over ``index`` (default: the example's encyclopedia), returning the ``top_k`` best
    articles. With ``evidence`` (the titles a task needs), a search whose results hold needed articles not yet
    found records the ``evidence`` intermediate reward (``evidence_reward`` each), and one that holds none
    records ``search_cost`` = −``search_cost`` (when above 0)."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1 (articles a search returns), got {top_k}")
    needed, found = set(evidence or ()), set[str]()

    @function_tool
    def search(query: str) -> str:
        """Search the encyclopedia and return the best matching articles.

        Args:
            query: A few keywords, for example the name of a person, a company or a city.
        """
        hits = (index or default_index()).search(query, k=top_k)
        new = {doc.title for doc in hits} & needed - found
        if new:
            found.update(new)
            tracerl.emit_reward(evidence_reward * len(new), name="evidence")
        elif needed and search_cost > 0:
            tracerl.emit_reward(-search_cost, name="search_cost")
        if not hits:
            return f"No article matches {query!r}. Search for a name that appears in the question."
        return "\n\n".join(f"[{i}] {doc.title}\n{doc.text}" for i, doc in enumerate(hits, 1))

    return search


search = search_tool()


def build_agent(
    client: AsyncOpenAI,
    model: str,
    settings: ModelSettings,
    tool: FunctionTool | None = None,
) -> Agent[Any]:
    """The research agent, talking to ``model`` through ``client``'s Chat Completions endpoint, with ``tool``
    (default: :data:`search`, the example's encyclopedia without intermediate rewards; see :func:`search_tool`)."""
    return Agent(
        name="Researcher",
        instructions=INSTRUCTIONS,
        tools=[tool or search],
        model=OpenAIChatCompletionsModel(model=model, openai_client=client),
        model_settings=settings,
    )


def conversation(question: str) -> list[TResponseInputItem]:
    """The run's input: the worked example, then ``question``."""
    return [*EXAMPLE, {"role": "user", "content": question}]


async def answer(
    question: str,
    client: AsyncOpenAI,
    model: str,
    settings: ModelSettings,
    tool: FunctionTool | None = None,
) -> str:
    """Run the agent (with ``tool``, see :func:`build_agent`) on ``question``; its final reply ("" when the run
    ended without one)."""
    agent = build_agent(client, model, settings, tool)
    try:
        result = await Runner.run(agent, conversation(question), max_turns=MAX_TURNS)
    except (MaxTurnsExceeded, ModelBehaviorError):
        return ""
    return str(result.final_output or "")


@tracerl.agent
async def rag_agent(task: dict[str, Any], llm: tracerl.LLM) -> float:
    """Answer ``task["question"]`` and return the answer's F1 against ``task["answers"]``; ``task["corpus"]``
    (optional) names your own corpus file to search, ``top_k`` how many articles a search returns (default 3);
    ``evidence``, ``evidence_reward`` and ``search_cost`` (optional) set the intermediate rewards (module
    docstring)."""
    tool = None  # the shared `search`, unless the task names a corpus, its evidence or top_k (a tool of its own)
    if task.get("corpus") or task.get("evidence") or "top_k" in task:
        shaping = {k: float(task[k]) for k in ("evidence_reward", "search_cost") if k in task}
        tool = search_tool(index_for(task["corpus"]) if task.get("corpus") else None, task.get("evidence"),
                           top_k=int(task.get("top_k", TOP_K)), **shaping)
    async with AsyncOpenAI(base_url=llm.base_url, api_key=llm.api_key) as client:
        reply = await answer(task["question"], client, llm.model, ModelSettings(**llm.sampling), tool)
    return score(reply, task["answers"])
