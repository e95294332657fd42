"""The AutoGen math example (``examples/math_autogen``): calculator, reward, data, the agent end to end, training.

The end-to-end tests run the unchanged AutoGen agent (``AssistantAgent`` over ``OpenAIChatCompletionClient``)
in a runner worker process against the gateway and the tiny random model. A random model only writes
garbage, so to see AutoGen's whole tool loop the model is then taught, by a closed-form edit of its output
layer (:func:`teach`), to emit the calculator call after the prompt AutoGen actually sent, and then the
final answer after the prompt holding the tool result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from fixtures_models import teach

pytest.importorskip("autogen_agentchat")
pytest.importorskip("autogen_ext.models.openai")
pytest.importorskip("reasoning_gym")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``math_autogen`` importable here and in the runner's worker processes (they inherit ``sys.path``)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))


# -- calculator ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("(12 + 30) * 3 / 4", "31.5"),
        ("47 * 25", "1175"),
        ("-618 * -986 - 840", "608508"),
        ("2/3", "0.6666666667"),
        ("0.1 + 0.2", "0.3"),  # exact, not 0.30000000000000004
        ("10 // 3 + 10 % 3", "4"),
        ("2 ** -2", "0.25"),
        ("-2 ** 2", "-4"),
        ("3 ^ 2", "9"),
        ("1,234 + 1", "1235"),
        ("6 × 7 ÷ 2", "21"),
    ],
)
def test_calculator_evaluates_arithmetic_exactly(expression: str, value: str) -> None:
    from math_autogen.calculator import calculate

    assert calculate(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('ls')", "is not allowed"),
        ("open('/etc/passwd').read()", "is not allowed"),
        ("x + 1", "'x' is not allowed"),
        ("(1).real", "is not allowed"),
        ("[1, 2][0]", "is not allowed"),
        ("lambda: 1", "is not allowed"),
        ("'a' * 3", "'a' is not a number"),
        ("True + 1", "True is not a number"),
        ("1 < 2", "is not allowed"),
        ("1 / 0", "division by zero"),
        ("5 % (2 - 2)", "division by zero"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 400", "too large"),
        ("(10 ** 90) ** 90", "more than 300 digits"),
        ("2 ** 0.5", "not an integer"),
        ("1 +", "not an arithmetic expression"),
        ("", "empty"),
        ("1" * 301, "limit is 300"),
    ],
)
def test_calculator_refuses_anything_but_bounded_arithmetic(expression: str, message: str) -> None:
    from math_autogen.calculator import CalculatorError, evaluate

    with pytest.raises(CalculatorError, match=message):
        evaluate(expression)


def test_calculator_tool_reports_errors_to_the_model_instead_of_raising() -> None:
    from math_autogen.agent import calculator

    assert calculator("6 * 7") == "42"
    assert calculator("__import__('os')").startswith("Error: ") and "not allowed" in calculator("os.getcwd()")


# -- reward ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "gold", "reward"),
    [
        ("She has 30 - 12 = 18 left.\nAnswer: 18", "18", 1.0),
        ("Answer: 18.0", "18", 1.0),
        ("**Answer:** 18", "18", 1.0),
        ("Answer: $1,234", "1234", 1.0),
        ("Answer: 3/4", "0.75", 1.0),
        ("Answer: -41", "-41", 1.0),
        ("First 5 then 12, so Answer: 7. (Check: 12 - 5 = 7, not 8)", "7", 1.0),  # first number after marker
        ("The combined total is 288.", "288", 1.0),  # no marker: the last number
        ("Answer: 17", "18", 0.0),
        ("Answer: 18.5", "18", 0.0),
        ("Answer: 41", "-41", 0.0),
        ("Answer: 18 is what I first thought. Answer: 19", "18", 0.0),  # the last marker counts
        ("I cannot solve this.", "3", 0.0),
        ("", "3", 0.0),
        ("Answer: 1687.5", "1687.5", 1.0),
    ],
)
def test_reward_is_exact_numeric_match_of_the_final_answer(reply: str, gold: str, reward: float) -> None:
    from math_autogen.reward import score

    assert score(reply, gold) == reward


def test_answer_extraction_and_bad_gold() -> None:
    from math_autogen.reward import extract_answer, score

    assert extract_answer("2 - 3 = -1") == Fraction(-1)
    assert extract_answer("no number here") is None
    with pytest.raises(ValueError, match="'many' is not a number"):
        score("Answer: 3", "many")


# -- data ------------------------------------------------------------------------------------------------


def test_tasks_are_deterministic_disjoint_and_numeric() -> None:
    from math_autogen.data import make_tasks
    from math_autogen.reward import parse_number

    splits = {s: make_tasks(s) for s in ("train", "val", "test")}
    assert {s: len(t) for s, t in splits.items()} == {"train": 1755, "val": 200, "test": 400}
    questions = {s: {t["question"] for t in tasks} for s, tasks in splits.items()}
    assert not questions["train"] & questions["val"] and not questions["train"] & questions["test"]
    assert not questions["val"] & questions["test"]
    assert all(parse_number(t["answer"]) is not None for tasks in splits.values() for t in tasks)
    assert {t["source"] for t in splits["test"]} == {"gsm_symbolic", "basic_arithmetic", "easy_arithmetic",
                                                  "long_arithmetic"}
    again = make_tasks("val", sources=("basic_arithmetic",), n=3)
    assert again == [t for t in splits["val"] if t["source"] == "basic_arithmetic"][:3]
    assert again[0]["id"] == "basic_arithmetic-val-000"


def test_bad_split_or_source_is_refused() -> None:
    from math_autogen.data import make_tasks

    from tracerl.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        make_tasks("dev")
    with pytest.raises(ConfigError, match=r"unknown source\(s\) \['gsm8k'\]"):
        make_tasks("train", sources=("gsm8k",))
    with pytest.raises(ConfigError, match="has 50 val tasks, asked for 51"):
        make_tasks("val", sources=("gsm_symbolic",), n=51)


# -- the agent end to end --------------------------------------------------------------------------------


class Setup:
    """A gateway over the test's own copy of the tiny model, a sqlite store, and a runner with 1 worker."""

    def __init__(self, model: Any, tokenizer: Any, store: Any, url: str, gateway_url: str) -> None:
        self.model, self.tokenizer, self.store, self.url, self.gateway_url = model, tokenizer, store, url, gateway_url

    def run(self, task: dict[str, Any], **metadata: Any) -> tuple[Any, list[Any]]:
        """Run the agent once on ``task`` (with rollout ``metadata``): the finished rollout and its llm_call spans."""
        from tracerl.types import RolloutSpec, RolloutStatus, SpanKind

        [rollout] = self.store.enqueue([RolloutSpec(task=task, max_attempts=1, metadata=metadata)])
        [done] = self.store.wait([rollout.rollout_id], timeout_s=120)
        assert done.status is RolloutStatus.SUCCEEDED, done.error
        spans = self.store.get_spans(rollout_id=done.rollout_id)
        return done, [s for s in spans if s.kind is SpanKind.LLM_CALL]

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]


@pytest.fixture
def setup(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Setup]:
    import asyncio

    import tracerl
    from tracerl.engines.hf import HFEngine
    from tracerl.engines.models import load_model
    from tracerl.gateway.app import start_gateway
    from tracerl.runner import Runner

    model, tokenizer = load_model(tiny_model_dir)  # our own copy: teach() changes its weights
    engine = HFEngine(model, tokenizer, "tiny-random", max_batch_size=4)
    url = f"sqlite:///{tmp_path}/math.db"
    store = tracerl.connect(url)
    gateway = start_gateway(store, engine, model_name="tiny-random")
    sampling = {"temperature": 0.0, "max_tokens": 48}
    try:
        with Runner("math_autogen.agent:math_agent", url, gateway.url, model="tiny-random", sampling=sampling):
            yield Setup(model, tokenizer, store, url, gateway.url)
    finally:
        gateway.stop()
        store.close()
        asyncio.run(engine.aclose())


TASK = {
    "id": "t1",
    "question": "A crate holds 12 boxes of 7 pencils. How many pencils are in the crate?",
    "answer": "84",
}
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "12 * 7"}}\n</tool_call>'
FINAL = "12 * 7 = 84\nAnswer: 84"


def test_autogen_agent_runs_its_tool_loop_through_the_gateway(setup: Setup) -> None:
    from math_autogen.agent import SYSTEM_MESSAGE
    from math_autogen.reward import score

    # 1. the random model: AutoGen makes one call, gets garbage text back, the reward is scored on it
    rollout, [call] = setup.run(TASK)
    request = call.attributes["request"]
    assert request["messages"][0] == {"role": "system", "content": SYSTEM_MESSAGE}
    assert request["messages"][-1]["content"] == TASK["question"]
    assert [t["function"]["name"] for t in request["tools"]] == ["calculator"]
    assert call.prompt_ids and call.response_ids and len(call.logprobs or []) == len(call.response_ids)
    text = setup.tokenizer.decode(call.response_ids, skip_special_tokens=True)
    assert rollout.reward == score(text, TASK["answer"])

    # 2. taught to call the calculator: AutoGen parses the call, runs the tool, sends the result back
    first_prompt = list(call.prompt_ids)
    teach(setup.model, [(first_prompt, setup.ids(CALL))])
    rollout, calls = setup.run(TASK)
    assert len(calls) == 2
    assert calls[0].prompt_ids == first_prompt
    [tool_call] = calls[0].attributes["response"]["choices"][0]["message"]["tool_calls"]
    assert json.loads(tool_call["function"]["arguments"]) == {"expression": "12 * 7"}
    tool_result = calls[1].attributes["request"]["messages"][-1]
    assert tool_result["role"] == "tool" and tool_result["content"] == "84"  # the calculator really ran
    assert tool_result["tool_call_id"] == tool_call["id"]
    assert calls[1].prompt_ids[: len(first_prompt)] == first_prompt  # the transcript grows, no re-tokenizing

    # 3. taught the final answer too: the whole exchange earns the reward
    teach(setup.model, [(first_prompt, setup.ids(CALL)), (list(calls[1].prompt_ids), setup.ids(FINAL))])
    rollout, calls = setup.run(TASK)
    assert len(calls) == 2 and rollout.reward == 1.0
    assert setup.tokenizer.decode(calls[1].response_ids, skip_special_tokens=True) == FINAL
    assert all(c.response_ids and len(c.logprobs or []) == len(c.response_ids) for c in calls)


def test_gateway_serves_an_optimized_prompt_to_the_unchanged_autogen_agent(setup: Setup) -> None:
    """APO's substitution with AutoGen: its system message (sent with the calculator's schema) is matched by
    its exact text, replaced, and demonstrations are inserted after it — on every call of the tool loop — and
    the token ids the model saw are those of the substituted prompt."""
    from math_autogen.agent import SYSTEM_MESSAGE

    from tracerl.prompts import PROMPTS_RESOURCE, prompt_key

    better = "Solve it. End with one line 'Answer: <number>'."
    demos = [{"role": "user", "content": "What is 44 - 13?"}, {"role": "assistant", "content": "Answer: 31"}]
    key = prompt_key(SYSTEM_MESSAGE)
    version = setup.store.put_resource(PROMPTS_RESOURCE, {"prompts": {key: {"text": better, "demos": demos}}}).version

    _, [plain] = setup.run(TASK)  # no prompts version: served exactly as AutoGen sent it
    assert "prompts" not in plain.attributes
    _, [call] = setup.run(TASK, prompts_version=version)
    assert call.attributes["prompts"] == {"version": version, "key": key, "demos": 2}
    request = call.attributes["request"]
    assert request["messages"][:3] == [{"role": "system", "content": better}, *demos]
    assert request["messages"][3]["content"] == TASK["question"] and request["tools"]
    served = setup.tokenizer.decode(call.prompt_ids)
    assert better in served and "What is 44 - 13?" in served and "Answer: 31" in served
    assert SYSTEM_MESSAGE not in served and '"name": "calculator"' in served  # the tool schema is still rendered
    assert served.index(better) < served.index("What is 44 - 13?") < served.index(TASK["question"])
    assert SYSTEM_MESSAGE in setup.tokenizer.decode(plain.prompt_ids)

    # the tool loop: the call after the tool result is substituted the same way and extends the first prompt
    teach(setup.model, [(list(call.prompt_ids), setup.ids(CALL))])
    _, calls = setup.run(TASK, prompts_version=version)
    assert len(calls) == 2 and calls[1].attributes["request"]["messages"][-1]["content"] == "84"
    assert all(c.attributes["prompts"]["key"] == key for c in calls)
    assert calls[1].prompt_ids[: len(call.prompt_ids)] == call.prompt_ids


# -- training --------------------------------------------------------------------------------------------


def test_short_training_run_with_train_py(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``train.py`` end to end with the tiny model: two GRPO steps, validation before and after, and every
    rollout's AutoGen calls recorded with token ids in the run's store."""
    from math_autogen import train

    from tracerl.types import Mode, RolloutQuery, SpanKind

    run_dir = tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--n-train", "4", "--n-val", "1", "--group-size", "2"]
    args += ["--batch-size", "1", "--max-steps", "2", "--max-tokens", "8", "--runners", "2"]
    result = train.main([*args, "--run-dir", str(run_dir), "--val-every", "0", "--no-progress"])

    assert result.steps == 2 and result.stopped_by == "max_steps"
    assert result.val_before is not None and result.val_after is not None
    assert (run_dir / "final" / "config.json").exists()
    import tracerl

    store = tracerl.connect(f"sqlite:///{run_dir / 'store.db'}")
    try:
        rollouts = store.query_rollouts(RolloutQuery(mode=Mode.TRAIN, limit=100)).items
        assert len(rollouts) == 2 * 1 * 2 and all(r.status.value == "succeeded" for r in rollouts)
        assert {r.task["source"] for r in rollouts} == {"easy_arithmetic"}
        for r in rollouts:
            assert r.reward in (0.0, 1.0)
            calls = [s for s in store.get_spans(rollout_id=r.rollout_id) if s.kind is SpanKind.LLM_CALL]
            assert calls and all(c.prompt_ids and c.response_ids for c in calls)
            assert all(len(c.response_ids or []) <= 8 for c in calls)
    finally:
        store.close()


def test_your_own_questions_file(tmp_path: Path) -> None:
    from math_autogen import calculator as calc
    from math_autogen.data import load_questions, make_tasks

    from tracerl.errors import ConfigError

    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "What is 2 + 3?", "answer": "5", "expression": "2 + 3"}\n\n'
        '{"question": "Half of 9?", "answer": "4.5", "id": "h"}\n'
    )
    assert load_questions(path) == [
        {"id": "q-0001", "source": "file", "question": "What is 2 + 3?", "answer": "5", "expression": "2 + 3"},
        {"id": "h", "source": "file", "question": "Half of 9?", "answer": "4.5"},
    ]
    path.write_text('{"question": "What is 2 + 3?", "answer": "five"}\n')
    with pytest.raises(ConfigError, match=r"q\.jsonl:1: 'answer' must be a number"):
        load_questions(path)
    # the arithmetic sources carry the gold calculator input the recipe's demonstrations use
    task = make_tasks("train", sources=("basic_arithmetic",), n=1)[0]
    assert calc.calculate(task["expression"]) == task["answer"]


def test_recipe_curriculum_defaults_and_a_curriculum_outside_the_sources_is_refused() -> None:
    import re

    from math_autogen import calculator
    from math_autogen.data import make_tasks
    from math_autogen.recipe import main, parse_args
    from recipes import rl_trainer_options

    args = parse_args([])
    assert args.sources == ["easy_arithmetic", "basic_arithmetic", "long_arithmetic"] and args.grpo_minutes == 12.0
    assert args.rl_sources == ["basic_arithmetic", "long_arithmetic"] and args.demos == 12 and args.rl_temperature == 1
    # the RL stage samples dynamically (DAPO) by default, with the shared cap; --no-dynamic-sampling turns it off
    assert rl_trainer_options(args) == {"dynamic_sampling": True, "max_sampled_groups": 4.0}
    assert rl_trainer_options(parse_args(["--no-dynamic-sampling"])) == {}
    with pytest.raises(SystemExit, match="--rl-sources long_arithmetic: none is in --sources easy_arithmetic"):
        main(["--sources", "easy_arithmetic", "--rl-sources", "long_arithmetic", "--write-config"])
    # long_arithmetic: 3-4 numbers a question, each with a gold calculator expression that gives its answer
    for task in make_tasks("test", sources=("long_arithmetic",), n=20):
        assert 3 <= len(re.findall(r"-?\d+", task["expression"])) <= 4, task
        assert calculator.calculate(task["expression"]) == task["answer"]
