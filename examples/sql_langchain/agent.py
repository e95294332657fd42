"""A text-to-SQL agent written with LangChain and LangGraph: write a query, run it, fix it on error, answer.

This is the user's agent, written the way LangChain's SQL tutorials write one: a LangGraph ``StateGraph``
whose nodes call a ``ChatOpenAI`` model with ``ChatPromptTemplate`` prompts. The only tracerl-specific lines
are in :func:`sql_agent`: ``base_url``, ``api_key`` and the sampling defaults come from the ``llm`` handle,
and two intermediate rewards mark the call whose query ran (see *Reward*).

    write_query ──▶ execute_query ──(ran)──▶ generate_answer ──▶ END
         ▲                │
         └──(error, fewer than MAX_ATTEMPTS tries)──┘       (error after MAX_ATTEMPTS tries ──▶ END)

* ``write_query``: the system prompt gives the schema (one line per table, :func:`data.describe_schema`)
  and asks for one SQLite query in a ```sql block, then the question. There is no worked example: with one,
  SmolLM2-135M copied the example's query word for word in 10 of 21 queries that ran (``... WHERE
  Album.Title = 'Facelift'``); the recipe's warm start (``recipe.py``) teaches the format from the train
  split's gold SQL instead. On a retry the conversation goes on: the model's previous reply and a user turn
  with the SQLite error.
* ``execute_query``: runs the query read-only with a time and row limit (:func:`reward.run_query`).
* ``generate_answer``: a second prompt turns question, query and rows into a one-sentence answer.

Two roles: the query writer's calls name the model ``sql_writer`` and the answer writer's ``answer_writer``
(one ``ChatOpenAI`` each, as an agent that uses two models would), so the gateway records which node made each
call. Serve both with the same weights and train only the query writer (:data:`ROLES`, :data:`TRAINED_ROLES`):
the reward is execution match on the query's rows, so the answer's text cannot change it, and with
``returns="step"`` the answer call, made after the query's intermediate rewards, is credited below the group's
baseline on every rollout (measured: mean advantage −1.47 on 22 of 22 answer calls, 19 % of an update's
weight). Evaluation serves the same names: ``tracerl.evaluate(..., roles=ROLES)``.

Reward (the agent's return value): 1.0 if the last query that ran returns the same result set as the gold
query (:func:`reward.execution_match`), else 0.0. Two intermediate rewards are recorded right after the call whose
query ran, and ``GRPO(returns="step")`` credits them to that call: ``valid_sql`` (0.1; a task may set its own
``valid_sql_reward``, 0 for none) and, when the task has a gold query, ``result_overlap`` = 0.3 × the F1 of the
query's rows against the gold rows (:func:`reward.row_f1`), which grades a near miss above a query that returns
the wrong table. A task may also set ``schema_reward`` (default 0: off): then ``schema_overlap`` = that weight × the
F1 of the tables and columns the query mentions against the gold query's (:func:`reward.schema_f1`), which grades a
query that reads the right tables even when its rows miss. None of them enters the task's reward.

What LangChain sends the gateway per call: ``model``, ``messages``, ``stream: false`` and the sampling
settings given to ``ChatOpenAI`` (``temperature``, ``top_p``, ``max_completion_tokens``); no tools.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph

import tracerl

from .data import chinook_db, describe_schema
from .reward import QueryError, Row, execution_match, row_f1, run_query, schema_f1, schema_names

MAX_ATTEMPTS = 3  # queries written per question (the first one and at most two corrections)
MAX_RESULT_ROWS_SHOWN = 20  # rows of the result put into the answer prompt
VALID_SQL_REWARD = 0.1  # the ``valid_sql`` intermediate reward of a query that runs (a task may set its own)
OVERLAP_WEIGHT = 0.3  # the ``result_overlap`` intermediate reward is this × the row F1 against the gold rows
QUERY_MODEL = "sql_writer"  # the model name the query writer's calls send
ANSWER_MODEL = "answer_writer"  # the model name the answer writer's calls send
#: both roles served by one model (``Trainer(roles=...)``, ``tracerl.evaluate(..., roles=...)``)
ROLES: dict[str, str | None] = {QUERY_MODEL: None, ANSWER_MODEL: None}
#: the roles whose calls RL trains (``GRPO(train_models=...)``): the answer's text cannot change the reward
TRAINED_ROLES = [QUERY_MODEL]

SYSTEM_PROMPT = """You are an expert in SQLite. Write one SQLite query that answers the user's question \
about this music store database:

{schema}

Reply with the query only, in a ```sql block."""

RETRY_PROMPT = "The query failed with this error: {error}\nWrite a corrected query, in a ```sql block."

ANSWER_PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the user's question in one short sentence, using the SQL query and its result."),
    ("human", "Question: {question}\nSQL query: {query}\nSQL result: {result}"),
])

QUERY_PROMPT = ChatPromptTemplate.from_messages([
    ("system", SYSTEM_PROMPT),
    ("human", "{question}"),
])

_FENCED = re.compile(r"```(?:sql|sqlite)?\s*\n?(.*?)(?:```|$)", re.DOTALL | re.IGNORECASE)
_STATEMENT = re.compile(r"\b(SELECT|WITH)\b.*", re.DOTALL | re.IGNORECASE)


class SQLState(TypedDict):
    """The graph's state: the question, the conversation with the query writer, and what came of it
    (``query``: the last query written; ``rows`` or ``error``: what running it gave; ``answer``: the reply)."""

    question: str
    messages: list[BaseMessage]
    query: str | None
    attempts: int
    rows: list[tuple[Any, ...]] | None
    error: str | None
    answer: str | None


def extract_sql(text: str) -> str:
    """The query in a model reply: the first ```sql block, else the text from the first SELECT/WITH, else the
    whole reply; without a trailing semicolon."""
    fenced = _FENCED.search(text)
    body = fenced.group(1) if fenced else text
    statement = _STATEMENT.search(body)
    query = statement.group(0) if statement else body
    return query.strip().rstrip(";").strip()


def build_graph(
    model: BaseChatModel,
    db_path: Path,
    gold_rows: list[Row] | None = None,
    answer_model: BaseChatModel | None = None,
    valid_sql_reward: float = VALID_SQL_REWARD,
    *,
    gold_sql: str | None = None,
    schema_reward: float = 0.0,
) -> Any:
    """The compiled LangGraph of the agent (see the module docstring): ``model`` writes the queries and
    ``answer_model`` (default: ``model``) the answer, against the database file. A query that runs records the
    ``valid_sql`` intermediate reward (``valid_sql_reward``, none when 0), with ``gold_rows`` ``result_overlap``,
    and with ``gold_sql`` and a ``schema_reward`` above 0 ``schema_overlap``."""
    names = schema_names(db_path) if gold_sql and schema_reward else frozenset[str]()

    def write_query(state: SQLState) -> dict[str, Any]:
        reply = model.invoke(state["messages"])
        query = extract_sql(str(reply.content))
        return {"messages": [*state["messages"], reply], "query": query, "attempts": state["attempts"] + 1}

    def execute_query(state: SQLState) -> dict[str, Any]:
        try:
            rows = run_query(db_path, state["query"] or "")
        except QueryError as e:
            retry = HumanMessage(RETRY_PROMPT.format(error=e))
            return {"rows": None, "error": str(e), "messages": [*state["messages"], retry]}
        if valid_sql_reward:
            tracerl.emit_reward(valid_sql_reward, name="valid_sql")
        if gold_rows is not None:
            tracerl.emit_reward(OVERLAP_WEIGHT * row_f1(rows, gold_rows), name="result_overlap")
        if names and gold_sql:
            tracerl.emit_reward(schema_reward * schema_f1(state["query"] or "", gold_sql, names), name="schema_overlap")
        return {"rows": rows, "error": None}

    def after_execution(state: SQLState) -> str:
        if state["error"] is None:
            return "generate_answer"
        return "write_query" if state["attempts"] < MAX_ATTEMPTS else END

    def generate_answer(state: SQLState) -> dict[str, Any]:
        rows = state["rows"] or []
        result = repr(rows[:MAX_RESULT_ROWS_SHOWN])
        if len(rows) > MAX_RESULT_ROWS_SHOWN:
            result += f" ... ({len(rows)} rows in all)"
        chain = ANSWER_PROMPT | (answer_model or model)
        reply = chain.invoke({"question": state["question"], "query": state["query"], "result": result})
        return {"answer": str(reply.content)}

    graph = StateGraph(SQLState)
    graph.add_node("write_query", write_query)
    graph.add_node("execute_query", execute_query)
    graph.add_node("generate_answer", generate_answer)
    graph.add_edge(START, "write_query")
    graph.add_edge("write_query", "execute_query")
    graph.add_conditional_edges("execute_query", after_execution, ["write_query", "generate_answer", END])
    graph.add_edge("generate_answer", END)
    return graph.compile()


def ask(
    model: BaseChatModel,
    question: str,
    db_path: Path | None = None,
    gold_rows: list[Row] | None = None,
    answer_model: BaseChatModel | None = None,
    valid_sql_reward: float = VALID_SQL_REWARD,
    *,
    gold_sql: str | None = None,
    schema_reward: float = 0.0,
) -> SQLState:
    """Run the agent on one question against ``db_path`` (default: Chinook); returns the final state
    (``query``, ``rows``, ``error``, ``answer``). ``gold_rows``: the reference query's result, for the graded
    ``result_overlap`` intermediate reward (training); the model never sees it. ``answer_model``: the model that
    writes the answer (default: ``model``); ``valid_sql_reward``: the ``valid_sql`` intermediate reward (0: none);
    ``gold_sql`` and ``schema_reward``: the ``schema_overlap`` intermediate reward (training; 0: none)."""
    db = db_path or chinook_db()
    messages = QUERY_PROMPT.format_messages(schema=describe_schema(db_path), question=question)
    start = SQLState(question=question, messages=messages, query=None, attempts=0, rows=None, error=None, answer=None)
    graph = build_graph(model, db, gold_rows, answer_model, valid_sql_reward, gold_sql=gold_sql,
                        schema_reward=schema_reward)
    return graph.invoke(start)


@tracerl.agent
def sql_agent(task: dict[str, Any], llm: tracerl.LLM) -> float:
    """Answer ``task["question"]`` and score the last query that ran against ``task["gold_sql"]``
    (``task["valid_sql_reward"]``, optional: the ``valid_sql`` intermediate reward's weight; ``task["schema_reward"]``,
    optional: the ``schema_overlap`` one's, default 0). Serve it with
    ``roles=ROLES`` (its two models' names)."""
    writer = ChatOpenAI(base_url=llm.base_url, api_key=llm.api_key, model=QUERY_MODEL, **llm.sampling)  # type: ignore[arg-type]
    answerer = ChatOpenAI(base_url=llm.base_url, api_key=llm.api_key, model=ANSWER_MODEL, **llm.sampling)  # type: ignore[arg-type]
    db = Path(task["db"]) if task.get("db") else chinook_db()  # your own SQLite file, or Chinook
    gold_rows = run_query(db, task["gold_sql"])  # a failing gold query is a bug in the data: let it raise
    valid_sql = float(task.get("valid_sql_reward", VALID_SQL_REWARD))
    state = ask(writer, task["question"], db if task.get("db") else None, gold_rows, answerer, valid_sql,
                gold_sql=task["gold_sql"], schema_reward=float(task.get("schema_reward", 0.0)))
    if state["error"] is not None or state["rows"] is None:
        return 0.0
    # the rows of the last query that ran, as reward.score would compute them, without running either query again
    return float(execution_match(state["rows"], gold_rows, ordered=bool(task.get("ordered", False))))

