"""The tracing API (emit_*), its context rules, span identities, batched writes, the LLM handle and @agent."""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import warnings

import pytest

from tracerl.agent import LLM, AgentRef, agent, agent_ref, load_agent
from tracerl.errors import ConfigError, InvalidInput
from tracerl.store.memory import MemoryStore
from tracerl.store.order import new_seq
from tracerl.tracing import (
    SpanWriter,
    TraceContext,
    TracingWarning,
    activate,
    emit_error,
    emit_message,
    emit_reward,
    emit_span,
)
from tracerl.types import RolloutSpec, Span, SpanKind


def collecting(rollout_id: str = "ro-1", attempt_id: str = "at-1") -> tuple[TraceContext, list[Span]]:
    spans: list[Span] = []
    return TraceContext(rollout_id, attempt_id, spans.append), spans


# -- emit inside and outside a run ------------------------------------------------------------------------


def test_emits_record_spans_of_the_active_attempt() -> None:
    ctx, spans = collecting()
    with activate(ctx):
        emit_reward(0.5)
        emit_reward(1, name="valid_sql")
        emit_message("retrying", step=2)
        emit_span("search", {"query": "cats"}, kind="tool")
        emit_span("note", {"k": [1, 2]})
    assert [(s.kind, s.name) for s in spans] == [
        (SpanKind.REWARD, "reward"),
        (SpanKind.REWARD, "valid_sql"),
        (SpanKind.MESSAGE, "message"),
        (SpanKind.TOOL, "search"),
        (SpanKind.CUSTOM, "note"),
    ]
    assert {(s.rollout_id, s.attempt_id) for s in spans} == {("ro-1", "at-1")}
    assert spans[1].attributes == {"value": 1.0}
    assert spans[2].attributes == {"text": "retrying", "step": 2}
    assert spans[3].attributes == {"query": "cats"}
    assert len({s.seq for s in spans}) == len(spans)  # distinct identities (the store gives the order)
    assert len({s.seq for s in spans}) == 5


def test_emit_error_records_exception_with_traceback() -> None:
    ctx, spans = collecting()

    def fail() -> None:
        raise KeyError("missing column")

    with activate(ctx):
        try:
            fail()
        except KeyError as e:
            emit_error(e)
        emit_error("plain text problem")
    assert spans[0].kind is SpanKind.ERROR and spans[0].name == "KeyError"
    assert spans[0].attributes["message"] == "'missing column'"
    assert "in fail" in spans[0].attributes["traceback"]
    assert spans[1].attributes == {"type": "error", "message": "plain text problem"}


def test_emit_outside_a_run_warns_and_records_nothing() -> None:
    with pytest.warns(TracingWarning, match="outside an agent run"):
        assert emit_reward(1.0) is None
    with pytest.warns(TracingWarning):
        assert emit_message("hello") is None


def test_emit_after_the_run_ended_is_dropped() -> None:
    ctx, spans = collecting()
    with activate(ctx):
        emit_reward(1.0)
    with pytest.warns(TracingWarning):
        ctx.record(SpanKind.REWARD, "late", {"value": 2.0})
    assert len(spans) == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1.0", None])
def test_bad_reward_is_refused_even_outside_a_run(bad: object) -> None:
    with pytest.raises(InvalidInput, match="reward must be a finite number"):
        emit_reward(bad)  # type: ignore[arg-type]


def test_non_json_attributes_are_refused_with_the_key() -> None:
    ctx, spans = collecting()
    with activate(ctx):
        with pytest.raises(InvalidInput, match="'when' is datetime"):
            import datetime

            emit_message("x", when=datetime.datetime.now())
        with pytest.raises(InvalidInput, match="kind must be 'custom' or 'tool'"):
            emit_span("x", kind="llm_call")
    assert spans == []


def test_final_reward_is_remembered_for_agents_returning_none() -> None:
    ctx, _ = collecting()
    with activate(ctx):
        emit_reward(0.2, name="step")
        assert ctx.final_reward is None
        emit_reward(0.7, name="final")
    assert ctx.final_reward == 0.7


# -- context rules: asyncio tasks, threads ----------------------------------------------------------------


def test_concurrent_asyncio_runs_never_mix() -> None:
    a, spans_a = collecting("ro-a", "at-a")
    b, spans_b = collecting("ro-b", "at-b")

    async def helper(label: str, i: int) -> None:
        await asyncio.sleep(0.001 * (i % 3))
        emit_message(label, i=i)

    async def run(ctx: TraceContext, label: str) -> None:
        with activate(ctx):
            # nested tasks inherit the context of the task that created them
            await asyncio.gather(*(helper(label, i) for i in range(10)))

    async def main() -> None:
        await asyncio.gather(run(a, "a"), run(b, "b"))

    asyncio.run(main())
    assert sorted(s.attributes["i"] for s in spans_a) == list(range(10))
    assert {s.attributes["text"] for s in spans_a} == {"a"}
    assert {s.attributes["text"] for s in spans_b} == {"b"}
    assert {s.attempt_id for s in spans_b} == {"at-b"}


def test_thread_with_copied_context_records_into_its_run() -> None:
    a, spans_a = collecting("ro-a", "at-a")
    b, spans_b = collecting("ro-b", "at-b")
    with activate(a):
        ctx_a = contextvars.copy_context()
        with activate(b):  # both runs are alive at once, as in an in-process evaluator
            ctx_b = contextvars.copy_context()
            threads = [
                threading.Thread(target=ctx_a.run, args=(emit_reward, 1.0)),
                threading.Thread(target=ctx_b.run, args=(emit_reward, 2.0)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    assert [s.attributes["value"] for s in spans_a] == [1.0]
    assert [s.attributes["value"] for s in spans_b] == [2.0]


def test_plain_thread_falls_back_to_the_single_active_run() -> None:
    ctx, spans = collecting()
    with activate(ctx):
        t = threading.Thread(target=emit_reward, args=(0.3,))  # no context copied
        t.start()
        t.join()
    assert [s.attributes["value"] for s in spans] == [0.3]


def test_plain_thread_with_two_active_runs_is_not_guessed() -> None:
    a, spans_a = collecting("ro-a", "at-a")
    b, spans_b = collecting("ro-b", "at-b")
    caught: list[warnings.WarningMessage] = []

    def plain() -> None:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            emit_reward(1.0)
        caught.extend(w)

    entered = threading.Barrier(3)
    done = threading.Event()

    def hold(ctx: TraceContext) -> None:
        with activate(ctx):
            entered.wait()
            done.wait(5)

    holders = [threading.Thread(target=hold, args=(c,)) for c in (a, b)]
    for h in holders:
        h.start()
    entered.wait()
    t = threading.Thread(target=plain)
    t.start()
    t.join()
    done.set()
    for h in holders:
        h.join()
    assert spans_a == [] and spans_b == []
    assert any("several runs are active" in str(w.message) for w in caught)


# -- span identities ---------------------------------------------------------------------------------------


def test_seqs_are_random_json_exact_identities() -> None:
    seqs = [new_seq() for _ in range(1000)]
    assert len(set(seqs)) == 1000 and all(0 <= s < 2**53 for s in seqs)  # exact in JSON numbers
    assert seqs != sorted(seqs)  # an identity, not an order: the store orders spans


def test_a_span_whose_seq_another_writer_took_is_moved_not_lost() -> None:
    store = MemoryStore()
    store.enqueue([RolloutSpec(task={})])
    claim = store.claim("w", lease_s=30)
    assert claim is not None
    aid = claim.attempt.attempt_id
    # the gateway (another process, by a one-in-2^53 chance) already wrote an llm_call span under this seq
    seq = new_seq()
    store.add_spans([Span(aid, seq, SpanKind.LLM_CALL, name="chat")])
    writer = SpanWriter(store)
    writer.add(Span(aid, seq, SpanKind.REWARD, name="r", attributes={"value": 1.0}))
    writer.add(Span(aid, new_seq(), SpanKind.MESSAGE, name="message", attributes={"text": "x"}))
    assert writer.flush() == 2
    spans = store.get_spans(attempt_id=aid)
    assert [(s.kind, s.name) for s in spans] == [
        (SpanKind.LLM_CALL, "chat"),
        (SpanKind.MESSAGE, "message"),
        (SpanKind.REWARD, "r"),  # moved to a fresh seq, stored after the others
    ]
    assert spans[2].seq != seq
    # writing the same spans again (a retry of an acknowledged write) adds nothing and moves nothing
    for span in spans[1:]:
        writer.add(span)
    assert writer.flush() == 0
    assert len(store.get_spans(attempt_id=aid)) == 3


# -- batched writes -----------------------------------------------------------------------------------------


def test_span_writer_batches_and_flush_writes_the_rest() -> None:
    store = MemoryStore()
    [r] = store.enqueue([RolloutSpec(task={})])
    claim = store.claim("w", lease_s=30)
    assert claim is not None
    aid = claim.attempt.attempt_id
    writer = SpanWriter(store, batch_size=3, max_delay_s=60)
    ctx = TraceContext(r.rollout_id, aid, writer.add)
    with activate(ctx):
        emit_reward(0.1)
        emit_reward(0.2)
        assert store.get_spans(attempt_id=aid) == []  # buffered
        assert writer.due_in() is not None and writer.due_in() > 0  # type: ignore[operator]
        emit_reward(0.3)  # third span: the batch is written
        assert len(store.get_spans(attempt_id=aid)) == 3
        emit_reward(0.4)
    assert writer.flush() == 1
    assert writer.flush() == 0
    assert [s.attributes["value"] for s in store.get_spans(attempt_id=aid)] == [0.1, 0.2, 0.3, 0.4]
    assert {s.rollout_id for s in store.get_spans(attempt_id=aid)} == {r.rollout_id}


def test_span_writer_says_when_its_oldest_span_is_due() -> None:
    store = MemoryStore()
    writer = SpanWriter(store, max_delay_s=0.0)
    assert writer.due_in() is None
    writer.add(Span("at-x", new_seq(), SpanKind.MESSAGE))
    assert writer.due_in() <= 0  # type: ignore[operator]


# -- the LLM handle and the agent decorator ------------------------------------------------------------------


def test_llm_handle_names_the_attempt_in_its_base_url() -> None:
    llm = LLM("http://127.0.0.1:8000/", "ro-1", "at-2", "tiny", temperature=0.7, max_tokens=64)
    assert llm.base_url == "http://127.0.0.1:8000/r/ro-1/at-2/v1"
    assert llm.sampling == {"temperature": 0.7, "max_tokens": 64}
    with pytest.raises(ConfigError, match="--gateway"):
        _ = LLM(None, "ro-1", "at-2", "tiny").base_url


def test_agent_decorator_returns_the_function_and_checks_its_signature() -> None:
    def f(task: dict, llm: LLM) -> float:
        return 1.0

    assert agent(f) is f and f({}, None) == 1.0  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"two positional arguments \(task, llm\)"):

        @agent
        def g(task: dict) -> float:
            return 0.0


def test_agent_ref_from_strings_and_functions() -> None:
    assert agent_ref("pkg.mod:fn") == AgentRef("pkg.mod", "fn")
    assert str(agent_ref("pkg.mod:Cls.fn")) == "pkg.mod:Cls.fn"
    assert agent_ref(emit_reward) == AgentRef("tracerl.tracing", "emit_reward")
    assert load_agent(AgentRef("tracerl.tracing", "emit_reward")) is emit_reward
    for bad in ("no_colon", "mod:", ":fn", "mod:not-a-name"):
        with pytest.raises(ConfigError, match="module:function"):
            agent_ref(bad)
    with pytest.raises(ConfigError, match="top level"):
        agent_ref(lambda task, llm: 1.0)
    with pytest.raises(ConfigError, match="cannot load agent no_such_module_xyz:fn"):
        load_agent(AgentRef("no_such_module_xyz", "fn"))
