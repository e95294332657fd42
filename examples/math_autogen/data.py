"""The example's tasks: math word problems and arithmetic from ``reasoning-gym``, split train/val/test.

    from math_autogen.data import make_tasks
    train = make_tasks("train")                                  # both sources, every train task
    val = make_tasks("val", sources=("basic_arithmetic",), n=20)  # the first 20 arithmetic val tasks

Each task is ``{"id": "gsm_symbolic-test-007", "source": "gsm_symbolic", "question": "...", "answer": "288"}``
(``answer`` is the gold number as text; rewards compare numbers, see :mod:`math_autogen.reward`); the
arithmetic sources add ``"expression"``, the gold calculator input (``"-477 + 559"``), which the recipe's
gold demonstrations use. Your own questions: :func:`load_questions` reads a JSONL file of
``{"question", "answer"}`` objects (``id``, ``source`` and ``expression`` optional).

Sources (generated offline, from fixed seeds, by ``reasoning-gym``'s own generators; nothing is downloaded):

* ``gsm_symbolic``: GSM8K-style grade-school word problems with the numbers re-drawn from each problem's
  symbolic template ("At John's house, there is 3 times as much kiwi as apple...");
* ``basic_arithmetic``: 2-3 terms of 1-3 digits with ``+ - *`` and parentheses, phrased as a question
  ("What is -618 * -986 - 840?"): easy to state, hard to do in the head, easy with the calculator;
* ``easy_arithmetic``: the same generator with 2 terms of 1-2 digits and ``+ -`` ("What is 73 - 16?"):
  small models sometimes get these right without the tool, so GRPO has a signal from the start;
* ``long_arithmetic``: 3-4 terms of 2-3 digits with ``+ - *`` and parentheses ("Solve 722 - 330 + -768 -
  779."): a longer expression to copy into the calculator, where a warm-started 135M model still slips, so
  the RL stage has something to learn (added after the others: their splits are unchanged).

For each source a pool of :data:`POOL_SIZE` items is generated from :data:`SEED`; duplicate questions are
dropped (also across sources: a question an earlier source of :data:`SOURCES` has is skipped); the
first :data:`SPLIT_SIZES` ``["test"]`` distinct questions are the test split, the next ``["val"]`` the
validation split, the rest the train split. So the splits never share a question, and the
same call returns the same tasks on every machine. (gsm_symbolic draws its problems from a fixed set of
templates, so held-out questions can share a template with training ones, with other numbers and names.)
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError
from tracerl.train.data import read_jsonl_lines

SEED = 20_251_125
POOL_SIZE = 600
SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"test": 100, "val": 50}
SOURCES = ("gsm_symbolic", "basic_arithmetic", "easy_arithmetic", "long_arithmetic")

# source -> (reasoning-gym generator, its config fields)
_GENERATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "gsm_symbolic": ("gsm_symbolic", {}),
    "basic_arithmetic": (
        "basic_arithmetic",
        {
            "min_terms": 2,
            "max_terms": 3,
            "min_digits": 1,
            "max_digits": 3,
            "operators": ("+", "-", "*"),
            "allow_parentheses": True,
            "allow_negation": False,
            "format_style": "natural",
        },
    ),
    "easy_arithmetic": (
        "basic_arithmetic",
        {
            "min_terms": 2,
            "max_terms": 2,
            "min_digits": 1,
            "max_digits": 2,
            "operators": ("+", "-"),
            "allow_parentheses": False,
            "allow_negation": False,
            "format_style": "natural",
        },
    ),
    "long_arithmetic": (
        "basic_arithmetic",
        {
            "min_terms": 3,
            "max_terms": 4,
            "min_digits": 2,
            "max_digits": 3,
            "operators": ("+", "-", "*"),
            "allow_parentheses": True,
            "allow_negation": False,
            "format_style": "natural",
        },
    ),
}


def make_tasks(split: str, *, sources: tuple[str, ...] = SOURCES, n: int | None = None) -> list[dict[str, Any]]:
    """The tasks of ``split`` from ``sources``, source by source, each source's first ``n`` (all by default)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ConfigError(f"unknown source(s) {unknown or list(sources)}; use some of {list(SOURCES)}")
    tasks: list[dict[str, Any]] = []
    for source in sources:
        pool = _all_splits()[source][split]
        if n is not None and n > len(pool):
            raise ConfigError(f"{source} has {len(pool)} {split} tasks, asked for {n}")
        tasks.extend(dict(t) for t in pool[:n])
    return tasks


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """Tasks from a JSONL file, one ``{"question": str, "answer": number-as-text}`` object a line (``id``,
    ``source``, ``expression`` optional); a clear error names the line that is not such an object."""
    from math_autogen.reward import parse_number

    tasks: list[dict[str, Any]] = []
    for n, item in read_jsonl_lines(path, what="question"):
        if not isinstance(item.get("question"), str):
            raise ConfigError(f"{path}:{n} needs a 'question' string, got {str(item)[:120]!r}")
        answer = str(item.get("answer", ""))
        if parse_number(answer) is None:
            raise ConfigError(f"{path}:{n}: 'answer' must be a number (e.g. \"288\"), got {item.get('answer')!r}")
        task = {"id": str(item.get("id", f"{Path(path).stem}-{n:04d}")), "source": str(item.get("source", "file")),
                "question": item["question"], "answer": answer}
        if isinstance(item.get("expression"), str):
            task["expression"] = item["expression"]
        tasks.append(task)
    return tasks


@cache
def _all_splits() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{source: {"test": [...], "val": [...], "train": [...]}}`` (rules in the module docstring).

    Sources are generated in :data:`SOURCES` order and a question already taken by an earlier source is
    skipped, so no question is in two sources (two arithmetic sources can draw the same one).
    """
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError("this example needs reasoning-gym: pip install reasoning-gym") from None
    seen: set[str] = set()
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for source in SOURCES:
        generator, settings = _GENERATORS[source]
        dataset = reasoning_gym.create_dataset(generator, size=POOL_SIZE, seed=SEED, **settings)
        distinct: list[tuple[str, str, str | None]] = []
        for i in range(POOL_SIZE):
            item = dataset[i]
            if item["question"] not in seen:
                seen.add(item["question"])
                distinct.append((item["question"], str(item["answer"]), item["metadata"].get("expression")))
        n_test, n_val = SPLIT_SIZES["test"], SPLIT_SIZES["val"]
        bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, len(distinct))}
        out[source] = {
            split: [
                {"id": f"{source}-{split}-{i:03d}", "source": source, "question": q, "answer": a}
                | ({"expression": x} if x else {})
                for i, (q, a, x) in enumerate(distinct[lo:hi])
            ]
            for split, (lo, hi) in bounds.items()
        }
    return out
