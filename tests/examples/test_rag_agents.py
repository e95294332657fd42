"""The RAG example (``examples/rag_agents``): an OpenAI Agents SDK agent with a BM25 search tool.

* the generated world, its splits and the BM25 search, on their own;
* the reward (SQuAD-normalised F1 / EM) on hand-written cases;
* the unchanged agent end to end: runner worker processes run it, the SDK makes its Chat Completions calls
  through the gateway to the tiny random model, and every call is recorded as an ``llm_call`` span with
  token ids. A random model never calls a tool, so the model is first taught (closed-form edit of its
  output layer, as in ``tests/integration/test_gateway_tools.py``) to answer the SDK's first request with
  a ``search`` call: the SDK then really executes the tool and sends the article back;
* the same agent streamed (``Runner.run_streamed``) with ``parallel_tool_calls`` set, which the gateway
  must accept;
* one short GRPO run on the agent.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents")  # openai-agents, in the `examples` extra
pytest.importorskip("bm25s")
pytest.importorskip("fastapi")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:  # runner worker processes inherit this sys.path
    sys.path.insert(0, str(EXAMPLES))

from agents import ModelSettings, Runner  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402
from rag_agents import data  # noqa: E402
from rag_agents.agent import EVIDENCE_REWARD, INSTRUCTIONS, answer, build_agent, conversation  # noqa: E402
from rag_agents.data import Document  # noqa: E402
from rag_agents.retrieval import Index, default_index  # noqa: E402
from rag_agents.reward import exact_match, extract_answer, f1, normalize_answer, score  # noqa: E402

import tracerl  # noqa: E402
from fixtures_models import teach  # noqa: E402
from tracerl.store.base import Store  # noqa: E402
from tracerl.types import RolloutSpec, RolloutStatus, Span, SpanKind  # noqa: E402

MODEL = "tiny-random"
AGENT = "rag_agents.agent:rag_agent"

# -- data -------------------------------------------------------------------------------------------------


def test_world_is_the_same_every_time_and_the_splits_are_disjoint() -> None:
    tasks = {split: data.make_tasks(split) for split in data.SPLITS}
    assert {s: len(t) for s, t in tasks.items()} == {"train": 200, "val": 40, "test": 60}
    questions = [t["question"] for ts in tasks.values() for t in ts]
    assert len(set(questions)) == len(questions) == 300  # no question in two splits
    for split, ts in tasks.items():
        one_hop = sum(t["hops"] == 1 for t in ts)
        assert one_hop == round(len(ts) / 3), split
    # regenerated from scratch (not the cached copy), the same world comes out
    data.world.cache_clear()
    data.corpus.cache_clear()
    data._splits.cache_clear()
    assert data.make_tasks("val") == tasks["val"]
    assert len(data.corpus()) == 16 + 24 + 60 and len({d.title for d in data.corpus()}) == 100


def test_each_question_needs_exactly_its_evidence() -> None:
    """The answer is in the last evidence article; for 2-hop questions it is not in the first one, which
    names the second (the bridge), so two lookups are needed."""
    articles = {d.title: d.text for d in data.corpus()}
    for split in data.SPLITS:
        for task in data.make_tasks(split):
            evidence = [articles[title] for title in task["evidence"]]
            assert task["answers"][0] in evidence[-1], task
            if task["hops"] == 2:
                bridge = task["evidence"][1]
                assert bridge in evidence[0] and task["answers"][0] not in evidence[0], task
                assert bridge not in task["question"], task


def test_bad_split_or_size_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="use one of"):
        data.make_tasks("dev")
    with pytest.raises(ValueError, match=r"n must be in \[1, 40\]"):
        data.make_tasks("val", 41)


# -- retrieval --------------------------------------------------------------------------------------------

HANDWRITTEN = [
    Document("Tolva", "Tolva is a city in Marsland, on the river Ebro. Tolva was founded in 1120."),
    Document("Ana Berg", "Ana Berg is a pilot born in 1971 in Tolva. She works for Quellith Systems."),
    Document("Quellith Systems", "Quellith Systems is a glassmaking company founded in 1890 by Ivo Lind."),
    Document("Ivo Lind", "Ivo Lind is a painter born in 1850 in Osk. He works for Quellith Systems."),
    Document("Osk", "Osk is a city in Norland, on the river Lune. Osk was founded in 1402."),
]


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("Ana Berg", "Ana Berg"),
        ("Where was Ana Berg born?", "Ana Berg"),
        ("Tolva", "Tolva"),  # the city's own article beats the person born there (Tolva twice, short doc)
        ("river Lune", "Osk"),
        ("Who founded Quellith Systems?", "Quellith Systems"),
        ("IVO LIND painter", "Ivo Lind"),
    ],
)
def test_bm25_ranks_the_right_article_first(query: str, best: str) -> None:
    hits = Index(HANDWRITTEN).search(query, k=3)
    assert hits[0].title == best, [h.title for h in hits]
    assert len(hits) <= 3


def test_bm25_finds_nothing_for_unknown_words_and_refuses_bad_input() -> None:
    index = Index(HANDWRITTEN)
    assert index.search("zeppelin submarine") == []
    assert index.search("the of and") == []  # stop words only
    with pytest.raises(ValueError, match="k must be"):
        index.search("Osk", k=0)
    with pytest.raises(ValueError, match="empty corpus"):
        Index([])


def test_a_search_that_brings_a_needed_article_earns_the_evidence_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-hop task: the question's search brings the first evidence article (+0.2), searching it again earns
    nothing, the bridge name brings the second (+0.2); a tool without the task's evidence records nothing."""
    from agents.tool_context import ToolContext
    from rag_agents.agent import search_tool

    emitted: list[tuple[str | None, float]] = []
    monkeypatch.setattr(tracerl, "emit_reward", lambda value, name=None: emitted.append((name, value)))
    task = next(t for t in data.make_tasks("val") if t["hops"] == 2)
    ctx = ToolContext(context=None, tool_name="search", tool_call_id="c1", tool_arguments="{}")

    def run(tool: Any, *queries: str) -> list[tuple[str | None, float]]:
        emitted.clear()
        for q in queries:
            asyncio.run(tool.on_invoke_tool(ctx, json.dumps({"query": q})))
        return list(emitted)

    tool = search_tool(evidence=task["evidence"])
    got = run(tool, task["question"], task["question"], task["evidence"][1])
    assert got == [("evidence", EVIDENCE_REWARD), ("evidence", EVIDENCE_REWARD)] and EVIDENCE_REWARD == 0.2
    assert run(search_tool(evidence=task["evidence"]), "zeppelin") == []  # nothing needed found
    assert run(search_tool(), task["question"], task["evidence"][1]) == []  # no evidence given: no reward
    # the task's weights: 0.05 per needed article, 0.1 off for a search that brings in none
    weighted = search_tool(evidence=task["evidence"], evidence_reward=0.05, search_cost=0.1)
    got = run(weighted, task["question"], task["question"], "zeppelin", task["evidence"][1])
    assert got == [("evidence", 0.05), ("search_cost", -0.1), ("search_cost", -0.1), ("evidence", 0.05)]


def test_search_tool_returns_the_article_each_hop_needs() -> None:
    """Through the SDK's own tool invocation: the question finds the first article, the bridge name the
    second, for every question of the corpus."""
    from agents.tool_context import ToolContext
    from rag_agents.agent import search, search_tool

    async def call(query: str) -> str:
        ctx = ToolContext(context=None, tool_name="search", tool_call_id="c1", tool_arguments="{}")
        return str(await search.on_invoke_tool(ctx, json.dumps({"query": query})))

    articles = {d.title: d.text for d in data.corpus()}
    task = next(t for t in data.make_tasks("val") if t["hops"] == 2)
    first = asyncio.run(call(task["question"]))
    assert first.startswith(f"[1] {task['evidence'][0]}\n{articles[task['evidence'][0]]}")
    second = asyncio.run(call(task["evidence"][1]))
    assert second.startswith(f"[1] {task['evidence'][1]}\n")
    assert "No article matches" in asyncio.run(call("zeppelin"))
    assert second.count("\n\n[") == 2  # three articles by default (TOP_K)
    ctx = ToolContext(context=None, tool_name="search", tool_call_id="c2", tool_arguments="{}")
    only = asyncio.run(search_tool(top_k=1).on_invoke_tool(ctx, json.dumps({"query": task["evidence"][1]})))
    assert only == f"[1] {task['evidence'][1]}\n{articles[task['evidence'][1]]}"  # the needed article alone
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        search_tool(top_k=0)
    index = default_index()
    for split in data.SPLITS:
        for t in data.make_tasks(split):
            assert index.search(t["question"], k=1)[0].title == t["evidence"][0], t
            assert index.search(t["evidence"][-1], k=1)[0].title == t["evidence"][-1], t


# -- reward -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Quellith Systems.", "quellith systems"),
        ("  an   Osk!  ", "osk"),
        ("Theatre of A Dorvik", "theatre of dorvik"),  # articles only as whole words
        ("1,890", "1890"),
    ],
)
def test_normalize_answer_as_squad_does(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("reply", "answers", "reward"),
    [
        ("Answer: Marsland", ["Marsland"], 1.0),
        ("I searched Ana Berg, then Tolva.\nAnswer: the Marsland.", ["Marsland"], 1.0),
        ("answer:Quellith", ["Quellith Systems", "Quellith"], 1.0),  # an alias counts fully
        ("Answer: Quellith Holdings", ["Quellith Systems", "Quellith"], 2 * 1 / (2 + 1)),  # best alias
        ("Answer: Ana", ["Ana Berg"], 2 * 1 / (1 + 2)),
        ("Marsland", ["Marsland"], 1.0),  # no marker: the whole reply is the answer
        ("It is Marsland", ["Marsland"], 2 * 1 / (3 + 1)),
        ("Answer: Norland\nAnswer: Marsland", ["Marsland"], 1.0),  # the last marker wins
        ("Answer:", ["Marsland"], 0.0),
        ("", ["Marsland"], 0.0),
        ("Answer: 1890", ["1891"], 0.0),
    ],
)
def test_reward_is_f1_of_the_extracted_answer(reply: str, answers: list[str], reward: float) -> None:
    assert score(reply, answers) == pytest.approx(reward)


def test_exact_match_and_extraction() -> None:
    assert exact_match("the Marsland", ["Marsland"]) == 1.0
    assert exact_match("Marsland river", ["Marsland"]) == 0.0
    assert exact_match("", [""]) == 0.0
    assert extract_answer("thinking...\nAnswer: Osk\nthanks") == "Osk"
    assert f1("a the", ["the"]) == 0.0  # nothing left after normalisation
    with pytest.raises(ValueError, match="gold answer"):
        score("Answer: Osk", [])


# -- the agent against the gateway ------------------------------------------------------------------------




@dataclass
class Env:
    """A gateway serving a tiny model taught to answer ``task`` with ``search(query=<its first entity>)``."""

    task: dict[str, Any]
    query: str
    store: Store
    store_url: str
    gateway_url: str
    side_store: Store  # for in-process calls made outside any runner
    side_url: str  # a second gateway on the same engine, recording into side_store

    def side_base_url(self) -> tuple[str, str]:
        """A base_url of a fresh claimed attempt of ``side_store``, and that attempt's id."""
        self.side_store.enqueue([RolloutSpec(task={})])
        claim = self.side_store.claim("test")
        assert claim is not None
        rid, aid = claim.rollout.rollout_id, claim.attempt.attempt_id
        return f"{self.side_url}/r/{rid}/{aid}/v1", aid


async def _run_in_process(base_url: str, question: str, settings: ModelSettings, *, streamed: bool) -> str:
    """The agent's own run (``answer``), or the same agent and input streamed, outside any runner."""
    async with AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        if not streamed:
            return await answer(question, client, MODEL, settings)
        result = Runner.run_streamed(build_agent(client, MODEL, settings), conversation(question), max_turns=2)
        async for _ in result.stream_events():
            pass
        return str(result.final_output)


@pytest.fixture(scope="module")
def env(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from tracerl.engines.hf import HFEngine
    from tracerl.engines.models import load_model
    from tracerl.gateway.app import start_gateway
    from tracerl.store.memory import MemoryStore

    model, tokenizer = load_model(tiny_model_dir)  # a private copy: its output layer is edited below
    engine = HFEngine(model, tokenizer, MODEL, max_batch_size=4)
    side_store = MemoryStore()
    side = start_gateway(side_store, engine, model_name=MODEL)
    url = f"sqlite:///{tmp_path_factory.mktemp('rag') / 'store.db'}"
    store = tracerl.connect(url)
    gateway = start_gateway(store, engine, model_name=MODEL)
    task = next(t for t in data.make_tasks("val") if t["hops"] == 2)
    query = task["evidence"][0]
    environment = Env(task, query, store, url, gateway.url, side_store, side.url)
    try:
        # what the SDK's first request renders to, exactly as the gateway tokenizes it
        base_url, aid = environment.side_base_url()
        asyncio.run(_run_in_process(base_url, task["question"], ModelSettings(max_tokens=2), streamed=False))
        [first] = side_store.get_spans(attempt_id=aid)
        call = json.dumps({"name": "search", "arguments": {"query": query}})
        target = tokenizer(f"<tool_call>\n{call}\n</tool_call><|im_end|>", add_special_tokens=False)["input_ids"]
        teach(model, [(list(first.prompt_ids or []), target)])
        yield environment
    finally:
        gateway.stop()
        side.stop()
        store.close()
        asyncio.run(engine.aclose())


def _calls(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.kind is SpanKind.LLM_CALL]


def test_agent_runs_unchanged_in_runner_processes_and_every_call_is_recorded(env: Env) -> None:
    from tracerl.runner import Runner as RolloutRunner

    [rollout] = env.store.enqueue([RolloutSpec(task=env.task, max_attempts=1)])
    sampling = {"max_tokens": 64, "temperature": 0.0}
    with RolloutRunner(AGENT, env.store_url, env.gateway_url, n_workers=1, model=MODEL, sampling=sampling):
        [done] = env.store.wait([rollout.rollout_id], timeout_s=120)
    assert done.status is RolloutStatus.SUCCEEDED, done.error

    spans = env.store.get_spans(rollout_id=done.rollout_id)
    first, second = _calls(spans)  # the taught tool call, then the (untaught, random) final answer
    for call in (first, second):
        assert call.prompt_ids and call.response_ids and len(call.logprobs or []) == len(call.response_ids)

    # turn 1: what the Agents SDK sent, and the tool call the gateway parsed out of the sampled tokens
    request = first.attributes["request"]
    assert request["model"] == MODEL and request["max_tokens"] == 64 and request["temperature"] == 0.0
    messages = request["messages"]
    assert messages[0] == {"role": "system", "content": INSTRUCTIONS}
    assert messages[-1] == {"role": "user", "content": env.task["question"]}
    # the worked examples (one search, then two), converted by the SDK into Chat Completions tool-call turns
    roles = [m["role"] for m in messages]
    one_search = ["user", "assistant", "tool", "assistant"]
    two_searches = ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert roles == ["system", *one_search, *two_searches, "user"]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "search", "arguments": '{"query": "Oskar Lund"}'}
    assert messages[3]["tool_call_id"] == messages[2]["tool_calls"][0]["id"] == "example_1"
    assert messages[6]["tool_calls"][0]["function"] == {"name": "search", "arguments": '{"query": "Ana Berg"}'}
    assert messages[4] == {"role": "assistant", "content": "Answer: Halvi Foods"}
    [tool] = request["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "search"
    assert tool["function"]["parameters"]["required"] == ["query"]
    assert not request.get("stream") and "parallel_tool_calls" not in request and "store" not in request
    [tool_call] = first.attributes["response"]["choices"][0]["message"]["tool_calls"]
    assert tool_call["function"]["name"] == "search"
    assert json.loads(tool_call["function"]["arguments"]) == {"query": env.query}

    # turn 2: the SDK ran the tool and sent the retrieved article back as a tool message
    assistant, result = second.attributes["request"]["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == tool_call["id"]
    article = next(d for d in data.corpus() if d.title == env.query)
    assert result["role"] == "tool" and result["tool_call_id"] == tool_call["id"]
    assert result["content"].startswith(f"[1] {article.title}\n{article.text}")
    before = (first.prompt_ids or []) + (first.response_ids or [])
    assert (second.prompt_ids or [])[: len(before)] == before  # the second prompt extends the first exactly

    # the search brought in the task's first evidence article: the `evidence` intermediate reward, recorded
    # between the call that asked for it and the next one (so `returns="step"` credits that call)
    rewards = [s for s in spans if s.kind is SpanKind.REWARD]
    assert [r.name for r in rewards] == ["evidence", "final"]
    shown = {line.split("] ", 1)[1] for line in result["content"].splitlines() if line.startswith("[")}
    assert env.query in shown
    value = EVIDENCE_REWARD * len(shown & set(env.task["evidence"]))
    assert rewards[0].attributes["value"] == pytest.approx(value)
    assert (first.position or 0) < (rewards[0].position or 0) < (second.position or 0)
    # the reward the agent returned is the F1 of the random model's final text
    reply = second.attributes["response"]["choices"][0]["message"]["content"] or ""
    assert done.reward == rewards[1].attributes["value"] == pytest.approx(score(reply, env.task["answers"]))


def test_streamed_run_with_parallel_tool_calls_is_accepted_and_runs_the_tool(env: Env) -> None:
    base_url, aid = env.side_base_url()
    settings = ModelSettings(temperature=0.0, max_tokens=64, parallel_tool_calls=True)
    asyncio.run(_run_in_process(base_url, env.task["question"], settings, streamed=True))
    first, second = _calls(env.side_store.get_spans(attempt_id=aid))
    request = first.attributes["request"]
    assert request["stream"] is True and request["parallel_tool_calls"] is True
    [tool_call] = first.attributes["response"]["choices"][0]["message"]["tool_calls"]
    assert json.loads(tool_call["function"]["arguments"]) == {"query": env.query}
    tool_message = second.attributes["request"]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"].startswith(f"[1] {env.query}\n")
    assert second.response_ids and len(second.logprobs or []) == len(second.response_ids)


# -- training ---------------------------------------------------------------------------------------------


def test_short_grpo_run_on_the_agent(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two GRPO steps through the whole path (runner processes, SDK, gateway, credit, update, new weights).

    The random model never names an invented city, so on the real gold answers every reward is 0 and every
    group would be skipped. Here the gold answer is the tiny model's own training vocabulary: any English
    word it samples overlaps a little, rewards are small but graded, and each step really updates.
    """
    from tracerl.engines.models import _WORD_TEXT  # the words the tiny tokenizer was trained on

    tasks = [{**t, "answers": [_WORD_TEXT]} for t in data.make_tasks("train", 4)]
    trainer = tracerl.Trainer(
        agent=AGENT,
        algorithm=tracerl.GRPO(model=str(tiny_model_dir), group_size=4, lr=1e-4, seed=0),
        runners=2,
        run_dir=str(tmp_path / "run"),
        batch_size=2,
        max_steps=2,
        val_every=0,
        max_tokens=16,
        seed=0,
        progress=False,
    )
    result = trainer.fit(tasks)
    assert result.steps == 2
    for h in result.history:
        assert h["failed_rollouts"] == 0 and h["groups"] == 2 and 0.0 <= h["reward_mean"] < 1.0
    # a group whose 4 rewards all happen to be 0 is skipped; the others update the served weights
    updates = sum(h["zero_variance_groups"] < h["groups"] for h in result.history)
    assert updates >= 1 and result.history[-1]["weights_version"] == updates, result.history
    assert all(h["transitions"] >= 4 for h in result.history if h["zero_variance_groups"] < h["groups"])
    assert result.final_model is not None and (result.final_model / "config.json").exists()


def test_your_own_corpus_and_questions(tmp_path: Path) -> None:
    from agents.tool_context import ToolContext
    from rag_agents.agent import search_tool
    from rag_agents.data import load_corpus, load_questions
    from rag_agents.retrieval import index_for

    corpus_file = tmp_path / "docs.jsonl"
    corpus_file.write_text(
        json.dumps({"id": "1", "title": "Zorblat", "text": "Zorblat is a moon of Quenta, mined for ice."}) + "\n"
        + json.dumps({"id": "2", "title": "Quenta", "text": "Quenta is a gas giant discovered in 2087."}) + "\n"
    )
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "When was the planet Zorblat orbits discovered?",
                                     "answers": "2087", "evidence": ["Zorblat", "Quenta"]}) + "\n")
    [task] = load_questions(questions, corpus=corpus_file)
    assert task["answers"] == ["2087"] and task["evidence"] == ["Zorblat", "Quenta"] and task["hops"] == 2
    assert task["corpus"] == str(corpus_file.resolve()) and task["id"] == "q0001"
    assert [d.title for d in load_corpus(corpus_file)] == ["Zorblat", "Quenta"]

    tool = search_tool(index_for(task["corpus"]))  # what the agent builds for a task that names a corpus
    ctx = ToolContext(context=None, tool_name="search", tool_call_id="c1", tool_arguments="{}")
    found = asyncio.run(tool.on_invoke_tool(ctx, json.dumps({"query": "Quenta gas giant"})))
    assert str(found).startswith("[1] Quenta\nQuenta is a gas giant discovered in 2087.")

    questions.write_text(json.dumps({"question": "no answers"}) + "\n")
    with pytest.raises(ValueError, match=r"q\.jsonl:1 needs a 'question' string and 'answers'"):
        load_questions(questions)


def test_recipe_defaults_are_the_measured_ones_and_dynamic_sampling_can_be_turned_off() -> None:
    from collections import Counter

    from rag_agents.recipe import build, parse_args
    from recipes import rl_trainer_options

    args = parse_args([])
    assert (args.grpo_minutes, args.n_test, args.n_val, args.returns, args.top_k) == (16.0, 40, 10, "total", 1)
    assert rl_trainer_options(args) == {"balance_by": "hops", "balance_trim": True, "dynamic_sampling": True,
                                        "max_sampled_groups": 4.0}
    assert rl_trainer_options(parse_args(["--no-dynamic-sampling", "--balance-by", ""])) == {}
    assert "balance_trim" not in rl_trainer_options(parse_args(["--no-balance-trim"]))
    assert parse_args(["--demos", "48"]).demos == 48
    # the default warm start: the first 16 1-hop and 32 2-hop train questions, taken in turn
    recipe = build(args)
    assert recipe.demos == 48 and Counter(t["hops"] for t in recipe.train[:48]) == {1: 16, 2: 32}
    assert recipe.grpo_options["returns"] == "total" and recipe.grpo_trainer_options["balance_by"] == "hops"
    assert all(t["evidence_reward"] == 0.1 for t in recipe.rl_train or [])
    assert all(t["top_k"] == 1 for t in [*recipe.train, *recipe.val, *recipe.test])
    with pytest.raises(SystemExit, match="--demos 24 and --demo-hops 8 16: give one"):
        build(parse_args(["--demos", "24", "--demo-hops", "8", "16"]))


def test_the_recipe_takes_questions_without_hop_counts_and_caps_the_default_mix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Your questions without ``evidence`` have no hop count: the recipe demonstrates the first 48 and does not
    balance by hops (the Trainer would refuse a ``balance_by`` field no task has); with evidence lists of two
    titles only, the default mix takes what there is: no 1-hop demonstrations, 32 2-hop ones."""
    from rag_agents.recipe import build, parse_args

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(json.dumps({"id": "1", "title": "Quenta", "text": "Quenta was discovered in 2087."}) + "\n")
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(
            json.dumps({"question": f"When was Quenta discovered? ({split} {i})", "answers": "2087"}) + "\n"
            for i in range(60)))
    files = ["--corpus", str(corpus), *(a for split in ("train", "val", "test")
                                         for a in (f"--{split}-questions", str(tmp_path / f"{split}.jsonl")))]
    recipe = build(parse_args(files))
    assert recipe.demos == 48 and not {"balance_by", "balance_trim"} & set(recipe.grpo_trainer_options)
    assert "some train questions have no 'evidence'" in capsys.readouterr().out
    assert [t["question"] for t in recipe.train] == [f"When was Quenta discovered? (train {i})" for i in range(60)]
    kept = build(parse_args([*files, "--demos", "10", "--balance-by", "source"])).grpo_trainer_options
    assert kept["balance_by"] == "source" and kept["balance_trim"]  # a field of yours is kept
    with pytest.raises(SystemExit, match="--demo-hops needs train questions with 'evidence'"):
        build(parse_args([*files, "--demo-hops", "4", "4"]))
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"question": f"q{i}", "answers": "2087", "evidence": ["Zorblat", "Quenta"]}) + "\n"
        for i in range(40)))
    two_hop = build(parse_args(files))
    assert two_hop.demos == 32 and all(t["hops"] == 2 for t in two_hop.train)


def test_the_recipe_can_balance_hops_in_demos_rl_and_validation() -> None:
    """Two thirds of the train questions are 2-hop; ``--balance-hops`` takes each kind in turn."""
    from collections import Counter

    from rag_agents.recipe import build, parse_args

    plain = build(parse_args(["--no-balance-hops", "--demos", "24", "--returns", "uniform"]))
    assert Counter(t["hops"] for t in plain.train) == {2: 133, 1: 67}
    assert [t["question"] for t in plain.rl_train or []] == [t["question"] for t in plain.train]
    recipe = build(parse_args(["--demos", "24"]))
    assert Counter(t["hops"] for t in recipe.train[: recipe.demos]) == {1: 12, 2: 12}
    assert Counter(t["hops"] for t in recipe.rl_train or []) == {1: 67, 2: 67}
    assert Counter(t["hops"] for t in recipe.val) == {1: 5, 2: 5}
    assert len(recipe.train) == 200 and recipe.test == plain.test  # every question kept; the test set unchanged
    assert plain.grpo_options["returns"] == "uniform"
    assert build(parse_args(["--returns", "step"])).grpo_options["returns"] == "step"  # the evidence reward counts
    assert build(parse_args(["--returns", "total"])).grpo_options["returns"] == "total"
    # the intermediate rewards' weights travel in the RL questions only, where the agent reads them
    shaped = build(parse_args(["--demos", "24", "--evidence-reward", "0.05", "--search-cost", "0.1"]))
    assert all(t["evidence_reward"] == 0.05 and t["search_cost"] == 0.1 for t in shaped.rl_train or [])
    assert [t["question"] for t in shaped.rl_train or []] == [t["question"] for t in recipe.rl_train or []]
    assert not any("search_cost" in t for t in [*shaped.train, *shaped.val, *shaped.test])
    # the search depth is the agent's, so every split carries it (demonstrations, RL and evaluation alike)
    three = build(parse_args(["--top-k", "3"]))
    assert all(t["top_k"] == 3 for t in [*three.train, *three.val, *three.test, *(three.rl_train or [])])
    with pytest.raises(SystemExit, match="--top-k 0"):
        build(parse_args(["--top-k", "0"]))


def test_the_recipe_can_choose_how_many_demonstrations_of_each_hop_count() -> None:
    """``--demo-hops 8 16`` demonstrates 8 1-hop and 16 2-hop questions; the RL, val and test questions stay."""
    from collections import Counter

    from rag_agents.recipe import build, parse_args

    balanced = build(parse_args(["--demos", "24"]))
    mixed = build(parse_args(["--demo-hops", "8", "16"]))
    assert mixed.demos == 24 and Counter(t["hops"] for t in mixed.train[:24]) == {1: 8, 2: 16}
    # the first of each kind: the balanced recipe's 12 + 12 demonstrations minus 4 1-hop, plus the next 4 2-hop
    first_two_hop = [t["question"] for t in balanced.train if t["hops"] == 2][:16]
    assert [t["question"] for t in mixed.train[:24] if t["hops"] == 2] == first_two_hop
    assert [t["question"] for t in mixed.rl_train or []] == [t["question"] for t in balanced.rl_train or []]
    assert sorted(t["question"] for t in mixed.train) == sorted(t["question"] for t in balanced.train)
    assert (mixed.val, mixed.test) == (balanced.val, balanced.test)
    only_two = build(parse_args(["--demo-hops", "0", "5"]))
    assert Counter(t["hops"] for t in only_two.train[: only_two.demos]) == {2: 5}
    with pytest.raises(SystemExit, match="80 demonstrations of 1-hop questions asked for; the train split has 67"):
        build(parse_args(["--demo-hops", "80", "1"]))
