"""Running SQL safely on the Chinook database, and the execution-match reward.

    rows = run_query(db_path, "SELECT COUNT(*) FROM Artist")        # [(275,)], or raises QueryError
    execution_match(rows, gold_rows, ordered=False)                  # True / False
    score(db_path, predicted_sql, task)                              # 1.0 if the result sets match, else 0.0
    row_f1(rows, gold_rows)                                          # graded overlap in [0, 1], for shaping
    schema_f1(predicted_sql, gold_sql, schema_names(db_path))        # tables/columns in common, for shaping

The reward compares what the queries *return*, not how they are written (execution accuracy, as in the
Spider and BIRD benchmarks):

    r = 1  if  normalize(rows(predicted)) == normalize(rows(gold))  else 0

where ``normalize`` maps every number to ``round(float(v), 2)`` (so ``2`` equals ``2.0`` and
``ROUND(AVG(Total), 2)`` equals ``AVG(Total)``), sorts the values inside each row (so ``SELECT Name, Title``
matches ``SELECT Title, Name``; the number of columns must still be the same), and compares the rows as a
multiset — unless the task is ``ordered`` (the question asks for an order: "longest first", "in alphabetical
order"), when the row lists must be equal in order. Duplicate rows count: ``SELECT Country`` does not match
``SELECT DISTINCT Country``.

For training only, :func:`row_f1` grades a query that ran but did not match: the F1 of its rows against the
gold rows, both normalized as above and compared as multisets,

    F1 = 2·|P ∩ G| / (|P| + |G|)        (1.0 when both are empty)

so a query that returns 4 of the 5 right customers scores 0.89 and one that returns the whole table scores
near 0. The agent emits it as an intermediate reward (``result_overlap``); the task's reward, and so every
evaluation, stays the exact match above.

:func:`schema_f1` grades what a query is *about* rather than what it returns: the F1 of the sets of schema
names (tables and columns of the database, case-insensitive, string literals left out) that the predicted and
the gold query mention,

    F1 = 2·|S_p ∩ S_g| / (|S_p| + |S_g|)        (1.0 when both are empty)

so ``SELECT COUNT(*) FROM Employee`` for "how many artists" scores 0 against ``SELECT COUNT(*) FROM Artist``,
and a query that joins the right tables but filters the wrong column still earns most of it. Rows can miss
entirely (F1 0) while the query reads the right tables; this grades that step towards the answer
(``schema_overlap``, optional, for training only).

Queries run read-only (the file is opened with ``mode=ro``, and only one statement is accepted), with a
work limit and a row limit, so a model that writes a cross join of ``PlaylistTrack`` with itself gets an
error back instead of stalling the rollout. The work limit counts SQLite virtual-machine steps (through its
progress handler), not seconds, so the same query gets the same verdict on an idle and on a loaded machine:
``MAX_STEPS`` = 10⁸ is about 500 times what the slowest gold query takes (≈ 2·10⁵), a few seconds of CPU.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Row = tuple[Any, ...]

MAX_ROWS = 10_000
MAX_STEPS = 100_000_000
_PROGRESS_EVERY = 10_000  # SQLite VM steps between two calls of the progress handler
_LITERAL = re.compile(r"'(?:[^']|'')*'")  # a SQL string literal ('' escapes a quote)
_WORD = re.compile(r'"([^"]+)"|`([^`]+)`|\[([^\]]+)\]|([A-Za-z_][A-Za-z0-9_]*)')  # quoted or bare identifier


class QueryError(Exception):
    """The query could not run: a syntax error, an unknown table or column, a write, too slow, too many rows.
    The message is SQLite's (or ours), meant to be shown to the model so it can fix its query."""


def connect_readonly(db_path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection to the SQLite file ``db_path`` that cannot write to it (``mode=ro``)."""
    return sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True)


def run_query(db_path: str | Path, sql: str, *, max_steps: int = MAX_STEPS, max_rows: int = MAX_ROWS) -> list[Row]:
    """Execute one read-only statement ``sql`` on the SQLite file ``db_path`` and return all its rows.

    Raises :class:`QueryError` for an empty query, any SQLite error, a run of more than about ``max_steps``
    SQLite VM steps, or more than ``max_rows`` rows.
    """
    if not sql.strip():
        raise QueryError("the query is empty")
    conn = connect_readonly(db_path)
    calls = 0

    def over_budget() -> int:
        nonlocal calls
        calls += 1
        return int(calls * _PROGRESS_EVERY > max_steps)

    conn.set_progress_handler(over_budget, _PROGRESS_EVERY)
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(max_rows + 1)
    except sqlite3.OperationalError as e:
        if str(e) == "interrupted":
            raise QueryError("the query was stopped: it does far too much work (a missing join condition?)") from None
        raise QueryError(str(e)) from None
    except (sqlite3.Error, sqlite3.Warning, ValueError) as e:  # Warning: "You can only execute one statement"
        raise QueryError(str(e)) from None
    finally:
        conn.close()
    if len(rows) > max_rows:
        raise QueryError(f"the query returned more than {max_rows} rows; add a WHERE clause, GROUP BY or LIMIT")
    return [tuple(r) for r in rows]


def _value(v: Any) -> Any:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return round(float(v), 2)
    if isinstance(v, bytes):
        return v.hex()
    return v


def _row(row: Row) -> Row:
    values = [_value(v) for v in row]
    return tuple(sorted(values, key=lambda v: (type(v).__name__, v if v is not None else 0)))


def normalize(rows: Sequence[Row]) -> list[Row]:
    """The rows with numbers rounded to 2 decimals and each row's values in a canonical order."""
    return [_row(r) for r in rows]


def execution_match(predicted: Sequence[Row], gold: Sequence[Row], *, ordered: bool = False) -> bool:
    """Whether two result sets are the same (see the module docstring for what "the same" means)."""
    p, g = normalize(predicted), normalize(gold)
    if ordered:
        return p == g
    return Counter(p) == Counter(g)


def row_f1(predicted: Sequence[Row], gold: Sequence[Row]) -> float:
    """``2·|P ∩ G| / (|P| + |G|)`` over the normalized rows as multisets (order ignored); 1.0 if both are
    empty. Rows with a different number of columns never overlap."""
    p, g = Counter(normalize(predicted)), Counter(normalize(gold))
    size = sum(p.values()) + sum(g.values())
    if size == 0:
        return 1.0
    return 2 * sum((p & g).values()) / size


def score(db_path: str | Path, predicted_sql: str | None, task: dict[str, Any]) -> float:
    """1.0 if ``predicted_sql`` returns the same result as ``task["gold_sql"]`` on ``db_path``, else 0.0
    (also 0.0 when there is no predicted query, or it fails to run)."""
    if not predicted_sql:
        return 0.0
    try:
        predicted = run_query(db_path, predicted_sql)
    except QueryError:
        return 0.0
    gold = run_query(db_path, task["gold_sql"])  # a failing gold query is a bug in the data: let it raise
    return float(execution_match(predicted, gold, ordered=bool(task.get("ordered", False))))


@functools.cache
def schema_names(db_path: str | Path) -> frozenset[str]:
    """The lower-cased names of every table and column of the SQLite file ``db_path`` (views included, SQLite's
    own ``sqlite_*`` tables left out); read once per file, as the agent asks for them on every rollout."""
    conn = connect_readonly(db_path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'")]
        columns = [r[1] for t in tables for r in conn.execute("SELECT * FROM pragma_table_info(?)", (t,))]
    finally:
        conn.close()
    return frozenset(n.lower() for n in [*tables, *columns])


def mentioned(sql: str, names: frozenset[str]) -> set[str]:
    """The schema names (of ``names``, lower-cased) that ``sql`` mentions, outside its string literals."""
    words = (next(g for g in m.groups() if g) for m in _WORD.finditer(_LITERAL.sub(" ", sql)))
    return {w.lower() for w in words} & names


def schema_f1(predicted_sql: str, gold_sql: str, names: frozenset[str]) -> float:
    """``2·|S_p ∩ S_g| / (|S_p| + |S_g|)`` over the sets of schema names the two queries mention (see
    :func:`mentioned`); 1.0 if neither mentions any."""
    p, g = mentioned(predicted_sql, names), mentioned(gold_sql, names)
    if not p and not g:
        return 1.0
    return 2 * len(p & g) / (len(p) + len(g))
