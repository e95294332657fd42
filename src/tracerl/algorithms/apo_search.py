"""The search of prompt optimization: candidates, their per-task scores, and three strategies.

A :class:`Candidate` is a system prompt text plus demonstration turns, with its parent(s), the critique that
produced it and its score on each validation task (by task index). Scoring runs the unchanged agent: the
:data:`Scorer` the search is given takes candidates with the task indices still unscored for each, and
returns one :class:`Scored` per (candidate, task) — the reward and the run's transcript. Scores are cached:
with greedy decoding a (candidate, task) pair is scored once.

Strategies (one :meth:`Search.step` each; ``examples`` are the step's scored train rollouts):

* ``beam`` — textual-gradient beam search. For every prompt in the beam, the critic reads its lowest-reward
  runs and writes a critique, the editor rewrites the prompt ``branch_factor`` times; the beam and the new
  candidates are scored on one random validation minibatch of ``val_batch`` tasks, and the ``beam_width``
  best by mean minibatch score survive (ties: the older candidate first).
* ``gepa`` — a Pareto front over per-task validation scores. With :math:`s_c(t)` candidate *c*'s score on
  task *t* and :math:`W(t) = \\{c : s_c(t) = \\max_{c'} s_{c'}(t)\\}` the winners of *t*, the front is
  :math:`F = \\bigcup_t W(t)` less every member dominated by another member (:math:`s_{c'} \\ge s_c` on every
  task and :math:`>` on one); a parent is drawn from *F* with probability :math:`\\propto |\\{t : c \\in
  W(t)\\}|`. Reflective mutation: critique of the parent's runs → edited child, scored on a minibatch and
  kept (then scored on every validation task) only if its minibatch mean beats the parent's. Every
  ``merge_every`` steps, two front members that win on different tasks are merged by the editor.
* ``demos`` — demonstration search, no critic: a pool of (user, assistant) turns from successful train
  rollouts (reward ≥ ``demo_min_reward``); ``random`` search proposes ``num_candidates`` random sets of up to
  ``max_demos`` demos per step (never an ordered set it tried before), ``pareto`` search mutates a front
  member's set (one demo swapped or added). Every candidate is scored on every validation task.

Budgets: ``max_rollouts`` (scoring and train rollouts together) and ``max_critic_tokens``; the search
stops — :attr:`Search.stopped` says why — before a scoring or critic call that the budget cannot pay for.
The best candidate is the first by (mean score on the tasks it was scored on, −creation order); for
``beam``, the head of the beam.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tracerl.algorithms.apo_critic import Critic, Run
from tracerl.algorithms.base import JSON, json_object
from tracerl.errors import ConfigError

log = logging.getLogger(__name__)
STRATEGIES = ("beam", "gepa", "demos")
DEMO_SEARCHES = ("random", "pareto")


@dataclass
class Candidate:
    """One prompt the search tried (see the module docstring)."""

    id: str
    text: str
    demos: list[dict[str, str]] = field(default_factory=list[dict[str, str]])
    parents: list[str] = field(default_factory=list[str])
    origin: str = "seed"  # seed | edit | mutation | merge | demos
    critique: str | None = None
    step: int = 0
    scores: dict[int, float] = field(default_factory=dict[int, float])  # validation task index -> reward
    runs: dict[int, Run] = field(default_factory=dict[int, Run])  # validation task index -> its run (for the critic)
    status: str = "scored"  # scored | rejected | unscored
    prompts_version: int | None = None  # the prompts resource version it ran as

    def mean(self, tasks: Sequence[int] | None = None) -> float:
        """Mean score over ``tasks`` (default: every task it was scored on); 0 without scores."""
        idx = list(self.scores) if tasks is None else list(tasks)
        return sum(self.scores[i] for i in idx) / len(idx) if idx else 0.0

    def to_json(self) -> JSON:
        return {
            "id": self.id, "text": self.text, "demos": self.demos, "parents": self.parents, "origin": self.origin,
            "critique": self.critique, "step": self.step, "status": self.status, "mean": self.mean(),
            "scores": {str(k): v for k, v in sorted(self.scores.items())}, "prompts_version": self.prompts_version,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: JSON) -> Candidate:
        return cls(
            id=d["id"], text=d["text"], demos=list(d.get("demos") or []), parents=list(d.get("parents") or []),
            origin=d.get("origin", "seed"), critique=d.get("critique"), step=int(d.get("step", 0)),
            scores={int(k): float(v) for k, v in json_object(d.get("scores")).items()},
            status=d.get("status", "scored"), prompts_version=d.get("prompts_version"),
        )  # fmt: skip


@dataclass(frozen=True)
class Scored:
    """One scoring run: the candidate's reward on one validation task, and the run shown to the critic."""

    reward: float
    run: Run


#: scores candidates: ``[(candidate, task indices)]`` → per pair, one :class:`Scored` per index, in order
Scorer = Callable[[list[tuple[Candidate, list[int]]]], list[list[Scored]]]


@dataclass
class Example:
    """A scored train rollout: its run for the critic and, when it can serve as one, a demonstration."""

    run: Run
    demo: tuple[str, str] | None = None  # (user content, assistant content) of its first call


@dataclass
class SearchConfig:
    """The search's settings (validated by :class:`tracerl.algorithms.apo.APO`)."""

    strategy: str = "beam"
    beam_width: int = 2
    branch_factor: int = 2
    val_batch: int = 4
    feedback_runs: int = 4
    merge_every: int = 2
    demo_search: str = "random"
    num_candidates: int = 4
    max_demos: int = 2
    demo_min_reward: float = 1.0
    max_rollouts: int | None = None
    max_critic_tokens: int | None = None
    seed: int = 0


# -- pure helpers ------------------------------------------------------------------------------------------


def pareto_front(cands: Sequence[Candidate], tasks: Sequence[int]) -> dict[str, int]:
    """The Pareto front over ``tasks`` (see the module docstring): candidate id → number of tasks it wins.

    Every candidate must be scored on every task. A candidate whose score vector equals an older member's
    is left out (the older one stands for both); order follows ``cands``."""
    if not cands or not tasks:
        return {}
    best = {t: max(c.scores[t] for c in cands) for t in tasks}
    wins = {c.id: sum(c.scores[t] == best[t] for t in tasks) for c in cands}
    members = [c for c in cands if wins[c.id] > 0]
    front: dict[str, int] = {}
    seen: list[tuple[float, ...]] = []
    for c in members:
        vec = tuple(c.scores[t] for t in tasks)
        dominated = any(
            all(o.scores[t] >= c.scores[t] for t in tasks) and any(o.scores[t] > c.scores[t] for t in tasks)
            for o in members if o is not c
        )  # fmt: skip
        if not dominated and vec not in seen:
            front[c.id] = wins[c.id]
            seen.append(vec)
    return front


def merge_pair(
    cands: Sequence[Candidate], front: dict[str, int], tasks: Sequence[int]
) -> tuple[Candidate, Candidate] | None:
    """Two front members that each score strictly higher than the other on some task (the first such pair
    in front order), or None."""
    members = [c for c in cands if c.id in front]
    for i, a in enumerate(members):
        for b in members[i + 1 :]:
            if any(a.scores[t] > b.scores[t] for t in tasks) and any(b.scores[t] > a.scores[t] for t in tasks):
                return a, b
    return None


def _turns(demos: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """(user, assistant) pairs as alternating chat turns."""
    return [m for u, a in demos for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]


def _turns_key(turns: Sequence[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"]) for m in turns)


# -- the search -------------------------------------------------------------------------------------------


class Search:
    """State and steps of one prompt search (see the module docstring)."""

    def __init__(self, config: SearchConfig, seed_text: str, n_val: int, scorer: Scorer,
                 critic: Critic | None) -> None:  # fmt: skip
        if n_val < 1:
            raise ConfigError("prompt optimization needs validation tasks to score candidates on; give val_tasks")
        if config.strategy != "demos" and critic is None:
            raise ConfigError(f"strategy {config.strategy!r} needs a critic")
        self.config, self.n_val, self.scorer, self.critic = config, n_val, scorer, critic
        self.rng = random.Random(config.seed)
        self.candidates: list[Candidate] = []
        self.beam: list[str] = []
        self.demo_pool: list[tuple[str, str]] = []
        self.rollouts_used = 0
        self.steps = 0
        self.stopped: str | None = None
        seed = self.add(Candidate(id="c0", text=seed_text))
        self.beam = [seed.id]

    # -- bookkeeping ------------------------------------------------------------------------------------
    def add(self, cand: Candidate) -> Candidate:
        cand.id = f"c{len(self.candidates)}"
        cand.step = self.steps
        self.candidates.append(cand)
        return cand

    def get(self, cid: str) -> Candidate:
        return next(c for c in self.candidates if c.id == cid)

    @property
    def critic_tokens(self) -> int:
        return self.critic.tokens_used if self.critic is not None else 0

    def best(self) -> Candidate:
        """The best candidate so far (see the module docstring)."""
        if self.config.strategy == "beam":
            return self.get(self.beam[0])
        scored = [c for c in self.candidates if c.scores and c.status == "scored"]
        return max(scored, key=lambda c: (c.mean(), -int(c.id[1:]))) if scored else self.candidates[0]

    def count_rollouts(self, n: int) -> None:
        """Count ``n`` rollouts run outside the search (the train rollouts of a step)."""
        self.rollouts_used += n

    def can_roll(self, n: int) -> bool:
        cap = self.config.max_rollouts
        if cap is not None and self.rollouts_used + n > cap:
            self.stopped = self.stopped or "max_rollouts"
            return False
        return True

    def can_criticise(self) -> bool:
        cap = self.config.max_critic_tokens
        if cap is not None and self.critic_tokens >= cap:
            self.stopped = self.stopped or "max_critic_tokens"
            return False
        return True

    def score(self, cands: Sequence[Candidate], tasks: Sequence[int]) -> bool:
        """Score each of ``cands`` on ``tasks`` (only the missing pairs run); False (nothing run) when the
        rollout budget cannot pay for all of them."""
        todo = [(c, [t for t in tasks if t not in c.scores]) for c in cands]
        todo = [(c, ts) for c, ts in todo if ts]
        need = sum(len(ts) for _, ts in todo)
        if not need:
            return True
        if not self.can_roll(need):
            return False
        results = self.scorer(todo)
        self.rollouts_used += need
        for (c, ts), scored in zip(todo, results, strict=True):
            for t, s in zip(ts, scored, strict=True):
                c.scores[t], c.runs[t] = s.reward, s.run
        return True

    def minibatch(self) -> list[int]:
        k = min(self.config.val_batch, self.n_val)
        return sorted(self.rng.sample(range(self.n_val), k))

    def feedback(self, cand: Candidate, examples: Sequence[Example]) -> list[Run]:
        """The runs the critic reads for ``cand``: its scoring runs plus (for the best) the step's train runs,
        lowest reward first, at most ``feedback_runs``."""
        runs = list(cand.runs.values())
        if cand.id == self.best().id:
            runs += [e.run for e in examples]
        runs.sort(key=lambda r: r.reward)
        return runs[: self.config.feedback_runs]

    # -- one step ---------------------------------------------------------------------------------------
    def step(self, examples: Sequence[Example]) -> list[Candidate]:
        """One step of the strategy; returns the candidates it created. Does nothing once stopped."""
        if self.stopped:
            return []
        self.steps += 1
        for e in examples:
            if e.demo is not None and e.run.reward >= self.config.demo_min_reward and e.demo not in self.demo_pool:
                self.demo_pool.append(e.demo)
        before = len(self.candidates)
        if self.steps == 1 and not self.score([self.candidates[0]], self.first_tasks()):
            return []
        {"beam": self.beam_step, "gepa": self.gepa_step, "demos": self.demos_step}[self.config.strategy](examples)
        return self.candidates[before:]

    def first_tasks(self) -> list[int]:
        return list(range(self.n_val)) if self.config.strategy != "beam" else []

    def edit(self, parent: Candidate, examples: Sequence[Example], origin: str) -> Candidate | None:
        """Critique ``parent`` on its runs and rewrite it; None when the critic budget is spent."""
        assert self.critic is not None
        if not self.can_criticise():
            return None
        critique = self.critic.critique(parent.text, self.feedback(parent, examples))
        if not self.can_criticise():
            return None
        text = self.critic.edit(parent.text, critique)
        if not text:
            log.warning("the editor returned an empty prompt for %s; skipped", parent.id)
            return None
        return Candidate(id="", text=text, demos=list(parent.demos), parents=[parent.id], origin=origin,
                         critique=critique, status="unscored")  # fmt: skip

    def beam_step(self, examples: Sequence[Example]) -> None:
        new: list[Candidate] = []
        for cid in list(self.beam):
            for _ in range(self.config.branch_factor):
                child = self.edit(self.get(cid), examples, "edit")
                if child is None:
                    break
                new.append(self.add(child))
        batch = self.minibatch()
        pool = [self.get(c) for c in self.beam] + new
        if not self.score(pool, batch):
            return
        for c in new:
            c.status = "scored"
        ranked = sorted(pool, key=lambda c: (-c.mean(batch), int(c.id[1:])))
        self.beam = [c.id for c in ranked[: self.config.beam_width]]

    def front(self) -> dict[str, int]:
        pool = [c for c in self.candidates if c.status == "scored" and len(c.scores) == self.n_val]
        return pareto_front(pool, range(self.n_val))

    def pick_parent(self, front: dict[str, int]) -> Candidate:
        ids = list(front)
        return self.get(self.rng.choices(ids, weights=[front[i] for i in ids])[0])

    def gepa_step(self, examples: Sequence[Example]) -> None:
        all_tasks = list(range(self.n_val))
        parent = self.pick_parent(self.front())
        child = self.edit(parent, examples, "mutation")
        if child is not None:
            self.add(child)
            batch = self.minibatch()
            if not self.score([parent, child], batch):
                return
            if child.mean(batch) > parent.mean(batch):
                if not self.score([child], all_tasks):
                    return
                child.status = "scored"
            else:
                child.status = "rejected"
        front = self.front()
        pair = merge_pair([c for c in self.candidates if c.id in front], front, all_tasks)
        if pair is None or self.steps % self.config.merge_every or not self.can_criticise():
            return
        assert self.critic is not None
        a, b = pair
        merged = self.add(Candidate(id="", text=self.critic.merge(a.text, b.text), demos=list(a.demos),
                                    parents=[a.id, b.id], origin="merge", status="unscored"))  # fmt: skip
        if self.score([merged], all_tasks):
            merged.status = "scored"

    def demos_step(self, examples: Sequence[Example]) -> None:
        if not self.demo_pool:
            log.info("step %d: no successful train rollout yet to take demonstrations from", self.steps)
            return
        cfg, base = self.config, self.candidates[0].text
        if cfg.demo_search == "random":
            tried = {_turns_key(c.demos) for c in self.candidates}
            sets: list[tuple[list[tuple[str, str]], list[str]]] = []
            draws = 0
            while len(sets) < cfg.num_candidates and draws < 10 * cfg.num_candidates:  # no ordered set twice
                draws += 1
                demos = self.rng.sample(self.demo_pool, self.rng.randint(1, min(cfg.max_demos, len(self.demo_pool))))
                if _turns_key(_turns(demos)) not in tried:
                    tried.add(_turns_key(_turns(demos)))
                    sets.append((demos, ["c0"]))
        else:
            parent = self.pick_parent(self.front())
            pairs = zip(parent.demos[::2], parent.demos[1::2], strict=True)
            current = [(u["content"], a["content"]) for u, a in pairs]
            spare = [d for d in self.demo_pool if d not in current]
            if spare and (len(current) >= cfg.max_demos or (current and self.rng.random() < 0.5)):
                current[self.rng.randrange(len(current))] = self.rng.choice(spare)
            elif spare:
                current.append(self.rng.choice(spare))
            sets = [(current, [parent.id])]
        new: list[Candidate] = []
        for demos, parents in sets:
            new.append(self.add(Candidate(id="", text=base, demos=_turns(demos), parents=parents, origin="demos",
                                          status="unscored")))  # fmt: skip
        if self.score(new, range(self.n_val)):
            for c in new:
                c.status = "scored"

    # -- state ------------------------------------------------------------------------------------------
    def to_json(self) -> JSON:
        best = self.best()
        return {
            "strategy": self.config.strategy, "steps": self.steps, "best": best.id, "beam": self.beam,
            "rollouts_used": self.rollouts_used, "critic_tokens_used": self.critic_tokens,
            "stopped": self.stopped, "demo_pool": [list(d) for d in self.demo_pool],
            "rng": list(self.rng.getstate()[1]), "candidates": [c.to_json() for c in self.candidates],
        }  # fmt: skip

    def load_json(self, d: JSON) -> None:
        self.steps, self.beam, self.stopped = int(d["steps"]), list(d["beam"]), d.get("stopped")
        self.rollouts_used = int(d["rollouts_used"])
        if self.critic is not None:
            self.critic.tokens_used = int(d.get("critic_tokens_used", 0))
        self.demo_pool = [(u, a) for u, a in d.get("demo_pool", [])]
        self.candidates = [Candidate.from_json(c) for c in d["candidates"]]
        self.rng.setstate((3, tuple(d["rng"]), None))
