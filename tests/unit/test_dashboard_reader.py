"""The dashboard's reads: the rollouts table (SQL and generic paths agree), credit per call on hand-computed
numbers, resource diffs, run discovery. Real sqlite and memory stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracerl.algorithms.grpo import GRPO
from tracerl.bench.dashboard import populate
from tracerl.errors import InvalidInput, NotFound
from tracerl.metrics import MetricsLogger
from tracerl.server.dashboard import reader
from tracerl.store import Store, connect
from tracerl.types import AttemptStatus, RolloutSpec, Span, SpanKind


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The same 80 rollouts (same seed) in a sqlite store and a memory store."""
    db = tmp_path_factory.mktemp("dash") / "s.db"
    out = []
    for url in (f"sqlite:///{db}", "memory://"):
        s = connect(url)
        populate(s, 80, detailed=4, seed=3)
        out.append(s)
    yield out
    for s in out:
        s.close()


def _table(store: Store, **params: str) -> dict:  # type: ignore[type-arg]
    return reader.rollout_table(store, reader.TableQuery.from_params(params))


@pytest.mark.parametrize("sort", reader.SORT_KEYS)
@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_sql_and_generic_tables_sort_the_same(stores: list[Store], sort: str, direction: str) -> None:
    sqlite, memory = stores
    key = {"created": "task", "version": "resources_version", "duration": None}.get(sort, sort)
    for params in ({}, {"status": "succeeded"}, {"mode": "val"}):
        a = _table(sqlite, sort=sort, dir=direction, limit="500", **params)
        b = _table(memory, sort=sort, dir=direction, limit="500", **params)
        assert a["total"] == b["total"] == len(a["items"])
        if key is not None:  # durations differ between the two stores (wall clock); the rest is identical
            assert [r[key] for r in a["items"]] == [r[key] for r in b["items"]]
        values = [r[{"created": "created_at", "duration": "duration_s", "version": "resources_version"}.get(sort, sort)]
                  for r in a["items"]]
        present = [v for v in values if v is not None]
        assert present == sorted(present, reverse=direction == "desc")
        assert values[len(present):] == [None] * (len(values) - len(present))  # None last either way


def test_table_filters_and_pages(stores: list[Store]) -> None:
    sqlite, _ = stores
    everything = _table(sqlite, limit="500")
    failed = [r for r in everything["items"] if r["status"] == "failed"]
    page = _table(sqlite, status="failed", sort="reward")
    assert page["total"] == len(failed) > 0 and {r["status"] for r in page["items"]} == {"failed"}
    first, second = _table(sqlite, limit="10"), _table(sqlite, limit="10", offset="10")
    assert [r["rollout_id"] for r in first["items"] + second["items"]] == [
        r["rollout_id"] for r in everything["items"][:20]
    ]
    assert _table(sqlite, version="2")["total"] == sum(r["resources_version"] == 2 for r in everything["items"])


def test_counts_by_mode_and_status_agree_across_backends(stores: list[Store]) -> None:
    sqlite, memory = stores
    counts = reader.rollout_counts(sqlite)
    assert counts == reader.rollout_counts(memory)
    assert sum(sum(by.values()) for by in counts.values()) == 80 + 2 + 3  # finished + running + queued
    assert counts["train"]["queued"] + counts["val"]["queued"] == 3


@pytest.mark.parametrize(
    ("params", "message"),
    [({"sort": "name"}, "sort='name' is not one of"), ({"status": "done"}, "status='done'"),
     ({"dir": "up"}, "dir='up'"), ({"limit": "5000"}, "limit in"), ({"offset": "x"}, "offset='x' is not an integer")],
)
def test_bad_table_parameters_are_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        reader.TableQuery.from_params(params)


def _record(store: Store, group: str, final: float, *, two_calls: bool) -> str:
    """A finished rollout: llm call at seq 0, (reward 0.1 at seq 1, llm call at seq 2,) final reward R."""
    [r] = store.enqueue([RolloutSpec(task={"g": group}, group_id=group)])
    claim = store.claim("w")
    assert claim is not None and claim.rollout.rollout_id == r.rollout_id
    aid = claim.attempt.attempt_id
    spans = [Span(aid, 0, SpanKind.LLM_CALL, prompt_ids=[1, 2], response_ids=[3], logprobs=[-0.5])]
    if two_calls:
        spans += [Span(aid, 1, SpanKind.REWARD, name="step", attributes={"value": 0.1}),
                  Span(aid, 2, SpanKind.LLM_CALL, prompt_ids=[1, 2, 3, 4], response_ids=[5, 6], logprobs=[-1.0, -2.0])]
    store.add_spans(spans)
    store.finish(aid, AttemptStatus.SUCCEEDED, reward=final)
    return r.rollout_id


def test_credit_per_call_matches_hand_computed_numbers() -> None:
    store = connect("memory://")
    a = _record(store, "g", 1.0, two_calls=True)
    _record(store, "g", 0.0, two_calls=False)
    rollout = store.get_rollout(a)

    # uniform: G = R for every call; scores [1, 0], μ = 0.5, σ = 0.5, A = (1 − 0.5) / (0.5 + 1e-4)
    uniform = reader.call_credit(store, rollout, returns="uniform", gamma=1.0, advantage="grpo")
    assert [c["seq"] for c in uniform["calls"]] == [0, 2]
    assert [c["return"] for c in uniform["calls"]] == [1.0, 1.0]
    assert [c["advantage"] for c in uniform["calls"]] == pytest.approx([0.5 / 0.5001] * 2)

    # step, γ = 0.5: call 1 gets its reward 0.1 plus γ·R = 0.6, call 2 gets R = 1; the other rollout's one
    # call gets 0. Scores [0.6, 0]: μ = 0.3, σ = 0.3, so A = [(0.6 − 0.3), (1 − 0.3)] / 0.3001
    step = reader.call_credit(store, rollout, returns="step", gamma=0.5, advantage="grpo")
    assert [c["return"] for c in step["calls"]] == pytest.approx([0.6, 1.0])
    assert [c["advantage"] for c in step["calls"]] == pytest.approx([0.3 / 0.3001, 0.7 / 0.3001])
    assert step["group_size"] == 2 and step["note"] == ""

    # two rollouts with the same reward: no signal, and the page says why
    b = _record(store, "flat", 1.0, two_calls=False)
    _record(store, "flat", 1.0, two_calls=False)
    flat = reader.call_credit(store, store.get_rollout(b), returns="uniform", gamma=1.0, advantage="grpo")
    assert flat["calls"] == [] and "zero reward variance" in flat["note"]
    with pytest.raises(InvalidInput, match="returns='gae'"):
        reader.call_credit(store, rollout, returns="gae", gamma=1.0, advantage="grpo")


def test_rollout_detail_holds_calls_rewards_and_attempts(stores: list[Store]) -> None:
    sqlite, _ = stores
    rid = _table(sqlite, sort="created", dir="asc", limit="1")["items"][0]["rollout_id"]
    d = reader.rollout_detail(sqlite, rid)
    spans = d["attempts"][-1]["spans"]
    assert [s["kind"] for s in spans] == ["custom", "llm_call", "tool", "reward", "llm_call"]
    first = spans[1]["call"]
    assert first["tool_calls"][0]["function"]["name"] == "add"
    assert first["completion_tokens"] == len(first["response_ids"]) == len(first["logprobs"])
    assert spans[3]["attributes"] == {"value": 0.1}
    assert [c["seq"] for c in d["credit"]["calls"]] == [1, 4]
    with pytest.raises(NotFound):
        reader.rollout_detail(sqlite, "ro-none")


def test_resource_history_diffs_each_version_against_the_one_before() -> None:
    store = connect("memory://")
    store.put_resource("prompts", {"system": "Be brief."})
    store.put_resource("prompts", {"system": "Be brief. Answer with a number."})
    h = reader.resource_history(store, "prompts")
    assert [v["version"] for v in h["versions"]] == [1, 2]
    assert h["versions"][1]["diff"] == [
        "@@ -1,3 +1,3 @@", " {", '-  "system": "Be brief."', '+  "system": "Be brief. Answer with a number."', " }"
    ]
    assert reader.resource_names(store) == ["prompts"]


def test_the_credit_mode_is_the_newest_runs(tmp_path: Path) -> None:
    assert reader.run_credit_mode(tmp_path)["returns"] == "uniform"  # no run: the trainer's defaults
    sft = {"name": "sft", "lr": 1e-5}
    grpo = GRPO(model="tiny-random", group_size=4, returns="discounted", gamma=0.9, advantage="rloo")
    MetricsLogger(tmp_path / "a", config={"stages": [sft, grpo.to_json()]}).close()
    assert reader.run_credit_mode(tmp_path) == {
        "returns": "discounted", "gamma": 0.9, "advantage": "rloo", "source": "run a"}


def test_runs_are_found_and_only_listed_runs_are_read(tmp_path: Path) -> None:
    m = MetricsLogger(tmp_path / "exp" / "run1", append=False)
    m.log("train", 1, {"reward_mean": 0.25})
    m.close()
    runs = reader.find_runs(tmp_path)
    assert [r["path"] for r in runs] == ["exp/run1"]
    assert reader.run_metrics(tmp_path, "exp/run1")["records"][0]["reward_mean"] == 0.25
    with pytest.raises(NotFound, match=r"no run '\.\./etc'"):
        reader.run_metrics(tmp_path, "../etc")


def test_a_tokenizer_folder_that_cannot_load_is_named(tmp_path: Path) -> None:
    from tracerl.errors import ConfigError
    from tracerl.server.run import dashboard_tokenizer

    assert dashboard_tokenizer(None) is None
    with pytest.raises(ConfigError, match=r"--tokenizer '.*nothing-here'.*leave --tokenizer out"):
        dashboard_tokenizer(str(tmp_path / "nothing-here"))
