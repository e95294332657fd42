"""The text-to-SQL example (``examples/sql_langchain``): its data, its reward, its LangGraph agent, and the agent
run end to end by tracerl (runner process → LangChain ``ChatOpenAI`` → gateway → tiny random model), including a
short GRPO training run.

The tiny random model writes garbage, so end to end the reward is 0 and every question uses all its query
attempts; what is checked there is that LangChain's calls were made through the gateway and recorded with token
ids, and that nothing crashes. The agent's logic (retry on error, answer, reward) is checked with LangChain's own
scripted chat model, which replays fixed replies.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # worker processes get the parent's sys.path, so they find it too

from sql_langchain import data  # noqa: E402
from sql_langchain.reward import (  # noqa: E402
    QueryError,
    execution_match,
    mentioned,
    row_f1,
    run_query,
    schema_f1,
    schema_names,
    score,
)

import tracerl  # noqa: E402
from tracerl.types import RolloutQuery, SpanKind  # noqa: E402


@pytest.fixture(scope="module")
def db() -> Path:
    return data.chinook_db()


# ---------------------------------------------------------------- data


def test_the_database_holds_the_whole_chinook_data(tmp_path: Path) -> None:
    import sqlite3

    path = data.chinook_db(tmp_path)
    assert path.parent == tmp_path and data.chinook_db(tmp_path) == path  # built once, then reused
    conn = sqlite3.connect(path)
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in data.TABLES}
    assert counts == {
        "Artist": 275, "Album": 347, "Track": 3503, "Genre": 25, "MediaType": 5, "Playlist": 18,
        "PlaylistTrack": 8715, "Employee": 8, "Customer": 59, "Invoice": 412, "InvoiceLine": 2240,
    }
    assert conn.execute("SELECT Name FROM Artist WHERE ArtistId = 1").fetchone() == ("AC/DC",)
    assert conn.execute("SELECT COUNT(*) FROM Track t JOIN Album a ON a.AlbumId = t.AlbumId").fetchone() == (3503,)
    conn.close()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind


def test_questions_are_many_split_and_graded() -> None:
    questions = data.load_questions()
    assert len(questions) >= 150
    assert len({q["id"] for q in questions}) == len(questions)
    assert len({q["question"] for q in questions}) == len(questions)
    by_split = Counter(q["split"] for q in questions)
    assert by_split["train"] >= 100 and by_split["val"] >= 25 and by_split["test"] >= 25
    assert set(by_split) == set(data.SPLITS)
    for split in data.SPLITS:
        assert {q["difficulty"] for q in questions if q["split"] == split} == set(data.DIFFICULTIES)
    task = data.load_tasks("test", 3)[2]
    assert set(task) == {"id", "question", "gold_sql", "difficulty", "ordered"}
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.load_tasks("dev")


def test_every_gold_query_runs_and_returns_rows(db: Path) -> None:
    for q in data.load_questions():
        rows = run_query(db, q["gold_sql"])
        assert rows, f"{q['id']}: gold query returns no rows: {q['gold_sql']}"
        if q["ordered"]:
            assert "ORDER BY" in q["gold_sql"], q["id"]


# ---------------------------------------------------------------- reward

COUNT_TASK: dict[str, Any] = {"gold_sql": "SELECT COUNT(*) FROM Artist", "ordered": False}
NAMES_TASK: dict[str, Any] = {
    "gold_sql": "SELECT FirstName, LastName FROM Employee WHERE City = 'Calgary'", "ordered": False,
}
ORDERED_TASK: dict[str, Any] = {
    "gold_sql": "SELECT FirstName FROM Customer WHERE Country = 'Canada' ORDER BY FirstName", "ordered": True,
}
AVG_TASK: dict[str, Any] = {"gold_sql": "SELECT AVG(Total) FROM Invoice", "ordered": False}


@pytest.mark.parametrize(
    ("predicted", "task", "expected"),
    [
        ("SELECT COUNT(*) FROM Artist", COUNT_TASK, 1.0),
        ("select count(ArtistId) from artist;", COUNT_TASK, 1.0),  # other text, same result
        ("SELECT 275", COUNT_TASK, 1.0),  # execution match judges the result only
        ("SELECT COUNT(*) FROM Album", COUNT_TASK, 0.0),
        ("SELECT COUNT(*) FROM Artists", COUNT_TASK, 0.0),  # does not run
        ("", COUNT_TASK, 0.0),
        (None, COUNT_TASK, 0.0),
        ("SELECT LastName, FirstName FROM Employee WHERE City = 'Calgary'", NAMES_TASK, 1.0),  # columns swapped
        ("SELECT FirstName, LastName FROM Employee WHERE City = 'Calgary' ORDER BY LastName", NAMES_TASK, 1.0),
        ("SELECT FirstName FROM Employee WHERE City = 'Calgary'", NAMES_TASK, 0.0),  # a column missing
        ("SELECT FirstName, LastName, Title FROM Employee WHERE City = 'Calgary'", NAMES_TASK, 0.0),  # one too many
        ("SELECT FirstName, LastName FROM Employee", NAMES_TASK, 0.0),  # too many rows
        ("SELECT FirstName FROM Customer WHERE Country = 'Canada' ORDER BY FirstName", ORDERED_TASK, 1.0),
        ("SELECT FirstName FROM Customer WHERE Country = 'Canada' ORDER BY FirstName DESC", ORDERED_TASK, 0.0),
        ("SELECT ROUND(AVG(Total), 2) FROM Invoice", AVG_TASK, 1.0),  # numbers compare to 2 decimals
        ("SELECT SUM(Total) / COUNT(*) FROM Invoice", AVG_TASK, 1.0),
        ("SELECT ROUND(AVG(Total), 1) FROM Invoice", AVG_TASK, 0.0),
    ],
)
def test_score_is_execution_match(db: Path, predicted: str | None, task: dict[str, Any], expected: float) -> None:
    assert score(db, predicted, task) == expected


def test_rows_compare_as_multisets_unless_ordered() -> None:
    assert execution_match([(1, "a"), (2, "b")], [("b", 2), ("a", 1)])
    assert not execution_match([(1, "a"), (2, "b")], [(2, "b"), (1, "a")], ordered=True)
    assert not execution_match([("x",), ("x",)], [("x",)])  # duplicates count (DISTINCT matters)
    assert execution_match([(2,)], [(2.0,)]) and execution_match([(None,)], [(None,)])
    assert not execution_match([("1",)], [(1,)])  # text is not a number


def test_row_f1_grades_near_misses_on_hand_computed_numbers() -> None:
    gold = [(1,), (2,), (3,), (4,), (5,)]
    assert row_f1(gold[:4], gold) == pytest.approx(2 * 4 / 9)  # P = 1, R = 4/5: 8/9
    assert row_f1([*gold, (6,), (7,), (8,)], gold) == pytest.approx(2 * 5 / 13)  # P = 5/8, R = 1: 10/13
    assert row_f1([(2.0,), ("x",)], [(2,), (3,)]) == pytest.approx(0.5)  # numbers normalized; 1 of 2 each side
    assert row_f1([(1,), (1,)], [(1,)]) == pytest.approx(2 / 3)  # duplicates count
    assert row_f1([(1, "a")], [(1,)]) == 0.0  # a different number of columns never overlaps
    assert row_f1([], []) == 1.0 and row_f1([], gold) == 0.0
    assert row_f1([("b", 2), ("a", 1)], [(1, "a"), (2, "b")]) == 1.0  # order of rows and columns ignored


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DELETE FROM Artist", "readonly"),
        ("SELECT 1; SELECT 2", "one statement"),
        ("SELEC Name FROM Artist", "syntax error"),
        ("SELECT Nope FROM Artist", "no such column: Nope"),
        ("   ", "empty"),
        ("SELECT * FROM PlaylistTrack", "more than 10 rows"),
    ],
)
def test_bad_queries_raise_the_error_the_model_is_shown(db: Path, sql: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        run_query(db, sql, max_rows=10)
    assert run_query(db, "SELECT COUNT(*) FROM Artist") == [(275,)]  # the data is untouched


def test_a_runaway_query_is_stopped(db: Path) -> None:
    with pytest.raises(QueryError, match="far too much work"):
        run_query(db, "SELECT COUNT(*) FROM PlaylistTrack a, PlaylistTrack b", max_steps=1_000_000)
    # the verdict counts SQLite's steps, not seconds: the same on a loaded machine
    assert run_query(db, "SELECT COUNT(*) FROM Track", max_steps=1_000_000) == [(3503,)]


# ---------------------------------------------------------------- the agent, with scripted replies

needs_langchain = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("langchain_openai", "langgraph")),
    reason="needs the example's framework: pip install langchain-openai langgraph",
)


@needs_langchain
@pytest.mark.parametrize(
    ("reply", "query"),
    [
        ("```sql\nSELECT Name FROM Artist;\n```", "SELECT Name FROM Artist"),
        ("Here it is:\n```\nSELECT 1\n```\nDone.", "SELECT 1"),
        ("The query is SELECT COUNT(*) FROM Track;", "SELECT COUNT(*) FROM Track"),
        ("```sql\nWITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x"),  # unclosed block
        ("no sql here", "no sql here"),
    ],
)
def test_extract_sql(reply: str, query: str) -> None:
    from sql_langchain.agent import extract_sql

    assert extract_sql(reply) == query


def scripted(*replies: str) -> Any:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    return GenericFakeChatModel(messages=iter(replies))


@needs_langchain
def test_the_agent_retries_with_the_error_then_answers(db: Path) -> None:
    from sql_langchain.agent import ask

    model = scripted(
        "```sql\nSELECT COUNT(*) FROM Artists\n```",
        "```sql\nSELECT COUNT(*) FROM Artist\n```",
        "There are 275 artists.",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emit_reward outside a tracerl run only warns
        state = ask(model, "How many artists are in the database?", db)
    assert state["attempts"] == 2 and state["error"] is None
    assert state["query"] == "SELECT COUNT(*) FROM Artist" and state["rows"] == [(275,)]
    assert state["answer"] == "There are 275 artists."
    retry = state["messages"][-2].content  # the user turn that showed the model its error
    assert "no such table: Artists" in retry


def test_schema_f1_grades_the_tables_and_columns_a_query_reads(db: Path) -> None:
    names = schema_names(db)
    assert {"artist", "artistid", "track", "milliseconds", "invoice", "billingcountry"} <= names
    assert "select" not in names and "count" not in names
    gold = "SELECT COUNT(*) FROM Artist"
    assert schema_f1("SELECT COUNT(*) FROM Employee", gold, names) == 0.0  # the wrong table
    assert schema_f1("select count(*) from artist;", gold, names) == 1.0  # case and punctuation do not matter
    # string literals are values, not names; quoted identifiers and aliases are read as SQLite reads them
    query = """SELECT t."Name" FROM Track AS t JOIN [Genre] g ON t.GenreId = g.GenreId WHERE g.Name = 'Album'"""
    assert mentioned(query, names) == {"name", "track", "genre", "genreid"}
    # S_p = {track, name}, S_g = {track, name, genre, genreid}: 2·2 / (2 + 4)
    assert schema_f1("SELECT Name FROM Track", query, names) == pytest.approx(4 / 6)
    assert schema_f1("SELECT 1", "SELECT 2", names) == 1.0  # neither reads the schema


@needs_langchain
def test_a_query_that_runs_earns_valid_sql_and_its_graded_overlap(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sql_langchain.agent import OVERLAP_WEIGHT, ask

    emitted: list[tuple[str | None, float]] = []
    monkeypatch.setattr(tracerl, "emit_reward", lambda value, name=None: emitted.append((name, value)))
    gold = "SELECT Name FROM Artist WHERE ArtistId <= 5"
    gold_rows = run_query(db, gold)
    near_miss = scripted("```sql\nSELECT Name FROM Artist WHERE ArtistId <= 4\n```", "Four artists.")
    ask(near_miss, "Name the first five artists.", db, gold_rows)
    assert emitted == [("valid_sql", 0.1), ("result_overlap", pytest.approx(OVERLAP_WEIGHT * 8 / 9))]
    emitted.clear()
    wrong_then_right = scripted("SELECT nonsense", f"```sql\n{gold}\n```", "Five artists.")
    ask(wrong_then_right, "Name the first five artists.", db, gold_rows)
    assert emitted == [("valid_sql", 0.1), ("result_overlap", pytest.approx(OVERLAP_WEIGHT))]  # none for the error
    emitted.clear()
    ask(scripted(f"```sql\n{gold}\n```", "Five artists."), "Name the first five artists.", db)
    assert emitted == [("valid_sql", 0.1)]  # no gold query given: no overlap reward
    emitted.clear()
    ask(scripted(f"```sql\n{gold}\n```", "Five artists."), "Name the first five artists.", db, gold_rows,
        valid_sql_reward=0.0)
    assert emitted == [("result_overlap", pytest.approx(OVERLAP_WEIGHT))]  # valid_sql off: only the overlap
    emitted.clear()
    # schema_overlap, when asked for: the right table, rows off by one; then the wrong table
    near_miss = scripted("```sql\nSELECT Name FROM Artist WHERE ArtistId <= 4\n```", "Four artists.")
    ask(near_miss, "Name the first five artists.", db, gold_rows, gold_sql=gold, schema_reward=0.5)
    assert emitted == [("valid_sql", 0.1), ("result_overlap", pytest.approx(OVERLAP_WEIGHT * 8 / 9)),
                       ("schema_overlap", pytest.approx(0.5))]  # fmt: skip
    emitted.clear()
    ask(scripted("```sql\nSELECT Name FROM Genre\n```", "Genres."), "Name the first five artists.", db, gold_rows,
        gold_sql=gold, schema_reward=0.5)
    # S_p = {name, genre}, S_g = {name, artist, artistid}: 2·1 / 5
    assert emitted == [("valid_sql", 0.1), ("result_overlap", 0.0), ("schema_overlap", pytest.approx(0.5 * 2 / 5))]


@needs_langchain
def test_the_agent_gives_up_after_max_attempts(db: Path) -> None:
    from sql_langchain.agent import MAX_ATTEMPTS, ask

    model = scripted(*["SELECT nonsense"] * MAX_ATTEMPTS)
    state = ask(model, "How many artists are in the database?", db)
    assert state["attempts"] == MAX_ATTEMPTS and state["error"] and state.get("answer") is None


# ---------------------------------------------------------------- end to end with tracerl and the tiny model


@needs_langchain
def test_langchain_calls_are_recorded_through_the_gateway(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sql_langchain.agent import MAX_ATTEMPTS, ROLES

    tasks = data.load_tasks("val", 1)
    url = f"sqlite:///{tmp_path}/eval.db"
    results = tracerl.evaluate(
        "sql_langchain.agent:sql_agent", tasks, model=str(tiny_model_dir), store=url, runners=1, max_tokens=12,
        roles=ROLES,
    )
    assert [r.status for r in results] == ["succeeded"], [r.error for r in results]
    assert results.mean_reward == 0.0  # a random model writes no valid SQL
    store = tracerl.connect(url)
    try:
        for task, result in zip(tasks, results, strict=True):
            # each garbage query fails, the error goes back to the model: MAX_ATTEMPTS query-writing calls
            assert len(result.calls) == MAX_ATTEMPTS
            first, *retries = result.calls
            assert first.messages is not None and task["question"] == first.messages[-1]["content"]
            assert "InvoiceLine(InvoiceLineId" in first.messages[0]["content"]  # the schema is in the prompt
            for call in retries:
                assert call.messages is not None and "The query failed" in call.messages[-1]["content"]
            for call in result.calls:
                assert call.prompt_ids and len(call.response_ids) == len(call.logprobs) > 0
                assert call.model == "sql_writer"  # the query writer's role, as its ChatOpenAI names it
            spans = store.get_spans(rollout_id=result.rollout_id)
            rewards = [(s.name, s.attributes["value"]) for s in spans if s.kind is SpanKind.REWARD]
            assert rewards == [("final", 0.0)]  # no query ran, so no valid_sql reward
    finally:
        store.close()


@needs_langchain
def test_the_evaluate_script_reports_pass_at_k_over_sampled_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sql_langchain import evaluate as sql_evaluate

    url = f"sqlite:///{tmp_path}/eval.db"
    summary = sql_evaluate.run(str(tiny_model_dir), "val", 1, url, 2, 8, samples=2, temperature=1.0)
    assert summary["n"] == 2 and summary["failed"] == 0  # one question, two sampled runs
    assert (summary["pass@1"], summary["pass@2"], summary["pass@2_easy"]) == (0.0, 0.0, 0.0)  # random model
    assert "pass@2_hard" not in summary  # the first val question is an easy one
    store = tracerl.connect(url)
    try:
        calls = [[s for s in store.get_spans(rollout_id=r.rollout_id) if s.kind is SpanKind.LLM_CALL]
                 for r in store.query_rollouts(RolloutQuery()).items]
        assert len(calls) == 2
        assert calls[0][0].response_ids != calls[1][0].response_ids  # the runs sampled different first queries
        assert {s.attributes["request"]["temperature"] for c in calls for s in c} == {1.0}
    finally:
        store.close()


@needs_langchain
def test_a_short_grpo_run_completes(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sql_langchain.agent import ROLES, TRAINED_ROLES

    run_dir = tmp_path / "run"
    trainer = tracerl.Trainer(
        agent="sql_langchain.agent:sql_agent",
        algorithm=tracerl.GRPO(model=str(tiny_model_dir), group_size=2, lr=1e-4, returns="step", seed=0,
                               train_models=TRAINED_ROLES),
        roles=ROLES,
        runners=2,
        run_dir=str(run_dir),
        batch_size=1,
        max_steps=2,
        val_every=2,
        max_tokens=8,
        progress=False,
    )
    result = trainer.fit(data.load_tasks("train", 3), val_tasks=data.load_tasks("val", 1))
    assert result.steps == 2 and result.stopped_by == "max_steps"
    assert [h["reward_mean"] for h in result.history] == [0.0, 0.0]
    assert result.val_before == 0.0 and result.val_after == 0.0
    assert result.final_model is not None and (result.final_model / "config.json").exists()


@needs_langchain
def test_your_own_database_and_questions(tmp_path: Path) -> None:
    import sqlite3

    from sql_langchain.agent import ask

    db_file = tmp_path / "shop.sqlite"
    con = sqlite3.connect(db_file)
    con.executescript(
        "CREATE TABLE Maker (MakerId INTEGER PRIMARY KEY, Name TEXT);"
        "CREATE TABLE Gadget (GadgetId INTEGER PRIMARY KEY, Name TEXT, MakerId INTEGER REFERENCES Maker (MakerId));"
        "INSERT INTO Maker VALUES (1, 'Acme'); INSERT INTO Gadget VALUES (1, 'Rocket', 1), (2, 'Anvil', 1);"
    )
    con.commit()
    con.close()
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": "How many gadgets are there?", "gold_sql": "SELECT COUNT(*) FROM Gadget",
                    "split": "test"}) + "\n"
        + json.dumps({"question": "Name every maker.", "gold_sql": "SELECT Name FROM Maker"}) + "\n"
    )
    assert data.describe_schema(db_file) == "Gadget(GadgetId, Name, MakerId -> Maker)\nMaker(MakerId, Name)"
    [task] = data.load_tasks("test", questions=questions, db=db_file)
    assert task["db"] == str(db_file.resolve()) and task["id"] == "q0001" and task["ordered"] is False
    assert [t["question"] for t in data.load_tasks("train", questions=questions)] == ["Name every maker."]
    assert score(db_file, "SELECT count(GadgetId) FROM Gadget", task) == 1.0

    model = scripted("```sql\nSELECT COUNT(*) FROM Gadget\n```", "There are 2 gadgets.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emit_reward outside a tracerl run only warns
        state = ask(model, task["question"], db_file)
    assert "Gadget(GadgetId, Name, MakerId -> Maker)" in str(state["messages"][0].content)  # the user's schema
    assert state["rows"] == [(2,)]  # the query ran on the user's file
    with pytest.raises(FileNotFoundError, match="no SQLite database at"):
        data.load_tasks("test", questions=questions, db=tmp_path / "missing.sqlite")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no sql"}) + "\n")
    with pytest.raises(ValueError, match="needs 'question' and 'gold_sql'"):
        data.load_questions(bad)


def test_the_recipe_validates_on_every_difficulty_and_reports_by_difficulty() -> None:
    """The val file lists its easy questions first; the recipe's 10 validation questions must not be all easy."""
    from collections import Counter

    from sql_langchain.recipe import build, parse_args

    recipe = build(parse_args([]))
    assert Counter(t["difficulty"] for t in recipe.val) == {"easy": 4, "medium": 3, "hard": 3}
    assert recipe.breakdown == "difficulty" and len(recipe.test) == 28
    assert {t["difficulty"] for t in recipe.rl_train or []} == {"easy", "medium"}  # the measured defaults
    assert (recipe.demos, recipe.grpo_minutes, recipe.grpo_options["gamma"]) == (114, 15.0, 0.5)
    assert recipe.grpo_trainer_options["dynamic_sampling"] is True
    # both roles served by the model being trained, only the query writer's calls trained
    assert recipe.roles == {"sql_writer": None, "answer_writer": None}
    assert recipe.grpo_options["train_models"] == ["sql_writer"]
    assert not any("valid_sql_reward" in t for t in recipe.rl_train or [])  # the agent's own weight
    # --valid-sql-reward travels in the RL questions only, where the agent reads it
    off = build(parse_args(["--valid-sql-reward", "0"]))
    assert [t["question"] for t in off.rl_train or []] == [t["question"] for t in recipe.rl_train or []]
    assert all(t["valid_sql_reward"] == 0.0 for t in off.rl_train or [])
    assert not any("valid_sql_reward" in t for t in [*off.train, *off.val, *off.test])
    assert not any("schema_reward" in t for t in recipe.rl_train or [])  # off unless asked for
    schema = build(parse_args(["--schema-reward", "0.3"]))
    assert all(t["schema_reward"] == 0.3 for t in schema.rl_train or [])
    assert not any("schema_reward" in t for t in [*schema.train, *schema.val, *schema.test])

    # --rl-undemonstrated: RL on the easy and medium train questions the warm start was not shown
    half = build(parse_args(["--demos", "57", "--rl-undemonstrated"]))
    shown = {t["question"] for t in half.train[:57]}
    assert Counter(t["difficulty"] for t in half.train[:57]) == {"easy": 20, "medium": 21, "hard": 16}
    rl = [t["question"] for t in half.rl_train or []]
    assert rl and not shown & set(rl) and len(rl) == 39 + 43 - 20 - 21
    with pytest.raises(SystemExit, match="--demos 57"):
        build(parse_args(["--rl-undemonstrated"]))  # 114 demonstrations leave none
