"""The search logic of APO, exactly, against a scripted OpenAI-compatible critic on loopback.

Candidates are scored by a rule (a task needs one word in the prompt, or one demonstration), so every beam,
Pareto front, merge and budget stop below is worked out by hand in the test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from scripted_critic import CRITIQUE_TOKENS, EDIT_TOKENS, MERGE_TOKENS, scripted_critic
from tracerl.algorithms.apo_critic import Critic, CriticConfig, Run
from tracerl.algorithms.apo_search import Candidate, Example, Scored, Search, SearchConfig, merge_pair, pareto_front
from tracerl.errors import ConfigError


def word_scorer(needs: Sequence[str]):  # type: ignore[no-untyped-def]
    """Task t scores 1 when the word needs[t] is in the prompt."""

    def score(todo: list[tuple[Candidate, list[int]]]) -> list[list[Scored]]:
        return [[Scored(float(needs[t] in c.text.split()), Run(f"task {t}", float(needs[t] in c.text.split())))
                 for t in ts] for c, ts in todo]  # fmt: skip

    return score


def critic(url: str) -> Critic:
    return Critic(CriticConfig(url=url, model="critic"))


def test_beam_keeps_the_best_beam_width_on_the_minibatch() -> None:
    with scripted_critic(["alpha", "beta", "gamma", "zeta", "delta", "zeta"]) as (url, script):
        cfg = SearchConfig(strategy="beam", beam_width=2, branch_factor=2, val_batch=4)
        s = Search(cfg, "base", 4, word_scorer(["alpha", "beta", "gamma", "delta"]), critic(url))
        s.step([Example(Run("train run", 0.0))])
        # c1 "base alpha" and c2 "base beta" score 1/4; the seed 0/4
        assert s.beam == ["c1", "c2"]
        s.step([])
        # c3 "base gamma" (from c1), c4 "base zeta", c5 "base delta" (from c2), c6 "base zeta"
        assert [(c.id, c.text, c.parents) for c in s.candidates[3:]] == [
            ("c3", "base gamma", ["c1"]), ("c4", "base zeta", ["c1"]), ("c5", "base delta", ["c2"]),
            ("c6", "base zeta", ["c2"]),
        ]  # fmt: skip
        # all of c1, c2, c3, c5 score 1/4; c4, c6 0/4: ties keep the older
        assert s.beam == ["c1", "c2"]
        assert s.get("c3").critique == "critique 3"
        assert s.critic_tokens == 6 * (CRITIQUE_TOKENS + EDIT_TOKENS)
        assert s.rollouts_used == 3 * 4 + 4 * 4  # scores are cached: c1 and c2 are not scored again
        assert "train run" in script.requests[0]  # the critic read the step's scored train rollout


def test_beam_ranks_by_mean_minibatch_score() -> None:
    with scripted_critic(["alpha", "beta", "alpha", "gamma"]) as (url, _):
        needs = ["alpha", "alpha", "beta", "gamma"]
        s = Search(SearchConfig(strategy="beam", beam_width=1, branch_factor=2, val_batch=4), "base", 4,
                   word_scorer(needs), critic(url))  # fmt: skip
        s.step([])
        assert s.beam == ["c1"] and s.get("c1").mean() == 0.5  # "base alpha" 2/4 beats "base beta" 1/4
        s.step([])
        assert s.beam == ["c1"]  # "base alpha" again ties c1 (the older stays), "base gamma" 1/4
        assert s.best().text == "base alpha"


def test_gepa_front_mutation_and_merge() -> None:
    with scripted_critic(["alpha", "beta", "gamma"]) as (url, _):
        cfg = SearchConfig(strategy="gepa", val_batch=3, merge_every=2)
        s = Search(cfg, "base", 3, word_scorer(["alpha", "beta", "beta"]), critic(url))
        s.step([])
        assert s.get("c1").text == "base alpha" and s.get("c1").scores == {0: 1.0, 1: 0.0, 2: 0.0}
        assert s.front() == {"c1": 3}  # the seed (0, 0, 0) is dominated
        s.step([])
        assert s.get("c2").text == "base beta" and s.get("c2").status == "scored"  # 2/3 beats its parent's 1/3
        merged = s.get("c3")  # step 2 is a merge step: c1 wins task 0, c2 tasks 1 and 2
        assert (merged.origin, merged.parents, merged.text) == ("merge", ["c1", "c2"], "base alpha beta")
        assert merged.scores == {0: 1.0, 1: 1.0, 2: 1.0} and s.front() == {"c3": 3} and s.best().id == "c3"
        s.step([])
        assert s.get("c4").text == "base gamma" and s.get("c4").status == "rejected"  # 0 < 1 on the minibatch
        assert s.critic_tokens == 3 * (CRITIQUE_TOKENS + EDIT_TOKENS) + MERGE_TOKENS


def test_pareto_front_by_hand() -> None:
    def cand(cid: str, *scores: float) -> Candidate:
        return Candidate(id=cid, text=cid, scores=dict(enumerate(scores)))

    a, b, c, d = cand("a", 1, 0, 0), cand("b", 0, 1, 1), cand("c", 0, 1, 0), cand("d", 1, 0, 0)
    e = cand("e", 0.5, 0.5, 0.5)
    # winners: task 0 {a, d}, task 1 {b, c}, task 2 {b}; c is dominated by b, d repeats a, e wins nothing
    assert pareto_front([a, b, c, d, e], range(3)) == {"a": 1, "b": 2}
    assert merge_pair([a, b], {"a": 1, "b": 2}, range(3)) == (a, b)
    assert merge_pair([a, d], {"a": 1, "d": 1}, range(3)) is None


def test_budgets_stop_before_they_are_exceeded() -> None:
    needs = ["alpha", "beta", "gamma", "delta"]
    with scripted_critic(["alpha", "beta", "gamma", "delta", "zeta", "eta"]) as (url, _):
        s = Search(SearchConfig(strategy="beam", beam_width=2, branch_factor=2, val_batch=4, max_rollouts=12),
                   "base", 4, word_scorer(needs), critic(url))  # fmt: skip
        s.step([])
        assert s.rollouts_used == 12 and s.stopped is None
        s.step([])  # 2 new prompts per beam member would need 16 more rollouts
        assert s.stopped == "max_rollouts" and s.rollouts_used == 12 and s.beam == ["c1", "c2"]
        assert s.step([]) == [] and s.steps == 2
    with scripted_critic(["alpha", "beta", "gamma", "delta", "zeta", "eta"]) as (url, _):
        s = Search(SearchConfig(strategy="beam", beam_width=2, branch_factor=2, val_batch=4,
                                max_critic_tokens=2 * (CRITIQUE_TOKENS + EDIT_TOKENS) + 1),
                   "base", 4, word_scorer(needs), critic(url))  # fmt: skip
        s.step([])
        s.step([])  # one critique fits under the cap, then the editor call does not
        assert s.stopped == "max_critic_tokens"
        assert s.critic_tokens == 3 * CRITIQUE_TOKENS + 2 * EDIT_TOKENS
        assert len(s.candidates) == 3


def demo_scorer(todo: list[tuple[Candidate, list[int]]]) -> list[list[Scored]]:
    """Task t scores 1 when a demonstration asks "q{t}"."""
    out = []
    for c, ts in todo:
        asked = {m["content"] for m in c.demos if m["role"] == "user"}
        out.append([Scored(float(f"q{t}" in asked), Run("", 0.0)) for t in ts])
    return out


@pytest.mark.parametrize("search", ["random", "pareto"])
def test_demo_search_uses_only_successful_rollouts(search: str) -> None:
    cfg = SearchConfig(strategy="demos", demo_search=search, num_candidates=3, max_demos=2, seed=1)
    s = Search(cfg, "base", 3, demo_scorer, None)
    examples = [Example(Run("", 1.0), ("q0", "a0")), Example(Run("", 1.0), ("q1", "a1")),
                Example(Run("", 0.0), ("q2", "a2"))]  # fmt: skip
    for _ in range(4):
        s.step(examples)
    assert s.demo_pool == [("q0", "a0"), ("q1", "a1")]  # q2's rollout failed: never a demonstration
    for c in s.candidates[1:]:
        assert c.text == "base" and 2 <= len(c.demos) <= 4 and len(c.scores) == 3
        assert c.mean() == sum(f"q{t}" in [m["content"] for m in c.demos] for t in range(3)) / 3
    best = s.best()
    assert best.mean() == max(c.mean() for c in s.candidates) == 2 / 3
    if search == "random":  # 4 ordered sets exist ([q0], [q1], [q0, q1], [q1, q0]); none is tried twice
        sets = [tuple(m["content"] for m in c.demos) for c in s.candidates[1:]]
        assert len(sets) == len(set(sets)) == 4
    assert s.rollouts_used == 3 * (len(s.candidates))


def test_bad_settings_fail_before_any_rollout() -> None:
    with pytest.raises(ConfigError, match="needs validation tasks"):
        Search(SearchConfig(), "base", 0, demo_scorer, None)
    with pytest.raises(ConfigError, match="needs a critic"):
        Search(SearchConfig(strategy="gepa"), "base", 2, demo_scorer, None)
    with pytest.raises(ConfigError, match="does not answer"):
        critic("http://127.0.0.1:9/v1").check()


@pytest.mark.parametrize("search", ["random", "pareto"])
def test_a_resumed_search_continues_exactly(search: str) -> None:
    cfg = SearchConfig(strategy="demos", demo_search=search, num_candidates=2, max_demos=2, seed=3)
    examples = [Example(Run("", 1.0), (f"q{i}", f"a{i}")) for i in range(4)]
    straight = Search(cfg, "base", 4, demo_scorer, None)
    for _ in range(4):
        straight.step(examples)
    first = Search(cfg, "base", 4, demo_scorer, None)
    for _ in range(2):
        first.step(examples)
    saved = json.loads(json.dumps(first.to_json()))
    resumed = Search(cfg, "base", 4, demo_scorer, None)
    resumed.load_json(saved)
    for _ in range(2):
        resumed.step(examples)
    assert resumed.to_json() == straight.to_json()
