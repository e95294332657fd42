"""Task sources of a run: JSONL files and built-in datasets, and the demo tasks' rewards."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracerl.errors import ConfigError
from tracerl.tasks.arithmetic import messages_for, score
from tracerl.tasks.toy import digit_fraction


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



@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("47 + 25 = 72\nAnswer: 72", 1.0),
        ("Answer: -33", 1.0),
        ("Answer: 33", 0.5),  # right format, wrong number
        ("some thinking\nAnswer: 72.\n\n", 1.0),  # trailing period and blank lines are fine
        ("Answer: 72\nbut maybe not", 0.0),  # the answer must be the last line
        ("The answer is 72", 0.0),
        ("", 0.0),
    ],
)
def test_arithmetic_reward_is_half_format_half_correct(reply: str, expected: float) -> None:
    answer = "-33" if "-33" in reply or reply == "Answer: 33" else "72"
    assert score(reply, answer) == expected


def test_arithmetic_prompt_is_one_shot() -> None:
    messages = messages_for("Calculate 50 - 19.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"].splitlines()[-1] == "Answer: 72" and messages[-1]["content"] == "Calculate 50 - 19."


def test_toy_reward_is_the_digit_share() -> None:
    assert digit_fraction("123") == 1.0
    assert digit_fraction("12 ab") == 0.5  # spaces do not count
    assert digit_fraction("") == 0.0
