"""Task sources of a run: JSONL files and built-in datasets, and the demo tasks' rewards."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracerl.errors import ConfigError
from tracerl.tasks.arithmetic import breakdown, messages_for, score
from tracerl.tasks.toy import digit_fraction
from tracerl.train.data import interleaved_order


def test_tasks_load_from_jsonl_or_a_builtin_name(tmp_path: Path) -> None:
    from tracerl.train.data import load_tasks

    path = tmp_path / "t.jsonl"
    path.write_text('{"q": 1}\n\n{"q": 2}\n')
    assert load_tasks(str(path)) == [{"q": 1}, {"q": 2}]
    assert len(load_tasks("demo-toy:val:5")) == 5
    train, val = load_tasks("demo-arithmetic:train:300"), load_tasks("demo-arithmetic:val")
    assert len(val) == 48 and {t["question"] for t in train}.isdisjoint(t["question"] for t in val)
    path.write_text('{"q": 1}\n[1, 2]\n')
    with pytest.raises(ConfigError, match=r"t.jsonl:2 is a list"):
        load_tasks(str(path))
    with pytest.raises(ConfigError, match="demo-toy:train"):
        load_tasks("gsm8k:train")


def test_jsonl_objects_come_with_their_line_numbers(tmp_path: Path) -> None:
    from tracerl.train.data import read_jsonl_lines

    path = tmp_path / "q.jsonl"
    path.write_text('{"q": 1}\n\n  \n{"q": 2}\n')
    assert read_jsonl_lines(path, what="question") == [(1, {"q": 1}), (4, {"q": 2})]
    path.write_text('{"q": 1}\n{"q": \n')
    with pytest.raises(ConfigError, match=r"q\.jsonl:2 is not valid JSON"):
        read_jsonl_lines(path)
    path.write_text("\n")
    with pytest.raises(ConfigError, match=r"question file .* is empty"):
        read_jsonl_lines(path, what="question")
    with pytest.raises(ConfigError, match=r"question file .* does not exist"):
        read_jsonl_lines(tmp_path / "missing.jsonl", what="question")



@pytest.mark.parametrize(
    ("reply", "answer", "expected"),
    [
        ("47 + 25 = 72\nAnswer: 72", "72", 1.0),
        ("Answer: -33", "-33", 1.0),
        ("Answer: 33", "-33", 0.1),  # the answer line, the wrong number: 0.1
        ("some thinking\nAnswer: 72.\n\n", "72", 1.0),  # trailing period and blank lines are fine
        ("Answer: 72\nbut maybe not", "72", 0.0),  # the answer must be the last line
        ("The answer is 72", "72", 0.0),
        ("", "72", 0.0),
    ],
)
def test_arithmetic_reward_is_mostly_for_the_right_number(reply: str, answer: str, expected: float) -> None:
    assert score(reply, answer) == expected


def test_breakdown_counts_answer_lines_and_right_answers_from_the_rewards() -> None:
    rewards = [score(r, "72") for r in ("Answer: 72", "Answer: 71", "72", "x\nAnswer: 72", "Answer: 70")]
    assert breakdown(rewards) == (4, 2)


def test_demo_tasks_are_sums_of_small_numbers_with_the_right_answers() -> None:
    import re

    from tracerl.tasks.arithmetic import make_tasks

    for task in make_tasks("val", 48) + make_tasks("train", 200):
        a, b = map(int, re.fullmatch(r"Calculate (\d{1,3}) \+ (\d{1,3})\.", task["question"]).groups())  # type: ignore[union-attr]
        assert int(task["answer"]) == a + b


def test_arithmetic_prompt_is_one_shot() -> None:
    messages = messages_for("Calculate 50 + 19.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"].splitlines()[-1] == "Answer: 72" and messages[-1]["content"] == "Calculate 50 + 19."


def test_toy_reward_is_the_digit_share() -> None:
    assert digit_fraction("123") == 1.0
    assert digit_fraction("12 ab") == 0.5  # spaces do not count
    assert digit_fraction("") == 0.0


def test_interleaved_order_puts_each_kind_in_its_share_of_every_prefix() -> None:
    # 4 a at 1/8, 3/8, 5/8, 7/8 of the way; 2 b at 1/4, 3/4: a b a a b a
    assert interleaved_order(["a", "a", "b", "a", "a", "b"]) == [0, 2, 1, 3, 5, 4]
    assert interleaved_order([2, 2, 2, 1, 1, 1]) == [0, 3, 1, 4, 2, 5]  # equal shares alternate, first seen first
    assert interleaved_order(["x", "x"]) == [0, 1] and interleaved_order([]) == []
