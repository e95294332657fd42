"""What a new user meets first: the README's commands, ``tracerl --help``, a mistyped store path, the
package's extras. Each promises only what exists and fails with a line that names the fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def tracerl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRACERL_TOKEN"}
    return subprocess.run([sys.executable, "-m", "tracerl", *args], capture_output=True, text=True, timeout=100,
                          cwd=cwd, env=env)  # fmt: skip


def fenced_blocks(markdown: str) -> list[list[str]]:
    """The non-empty, non-comment lines of each fenced code block, in order."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.S | re.M)
    return [[ln for ln in b.splitlines() if ln.strip() and not ln.lstrip().startswith("#")] for b in blocks]


def test_readme_starts_with_two_blocks_of_one_command_each_install_demo_then_install_tests() -> None:
    """Pasting the first block runs the demo, pasting the second the tests — never both at once."""
    demo, tests = fenced_blocks((ROOT / "README.md").read_text())[:2]
    assert len(demo) == 1 and len(tests) == 1, (demo, tests)
    assert demo[0].startswith("pip install ") and demo[0].endswith("&& tracerl demo")
    assert tests[0].startswith("pip install ") and tests[0].endswith("&& python -m pytest -q")
    assert "dev" in re.search(r'-e "\.\[([a-z,]+)\]"', tests[0]).group(1).split(",")  # type: ignore[union-attr]


def test_help_promises_only_what_exists() -> None:
    out = tracerl("--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout.lower()
    for missing in ("dashboard", "prompt optimization", "prompt optimisation"):
        assert missing not in text, f"`tracerl --help` promises a {missing}, which tracerl does not have"
    for command in ("demo", "serve", "runner", "train", "export", "bench"):
        assert command in text


def test_export_refuses_a_store_file_that_does_not_exist(tmp_path: Path) -> None:
    out = tracerl("export", "--store", "sqlite:///mistyped.db", "--out", "t.jsonl", cwd=tmp_path)
    assert out.returncode == 1
    assert "mistyped.db" in out.stderr and "does not exist" in out.stderr, out.stderr
    assert not (tmp_path / "mistyped.db").exists()  # nothing was created
    assert not (tmp_path / "t.jsonl").exists()


def test_every_extra_is_installed_by_a_documented_command_and_package_data_exists() -> None:
    """An extra nobody installs, or package data that matches no file, has nothing behind it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    commands = (ROOT / "README.md").read_text() + (ROOT / ".ci" / "run").read_text()
    installed = {e for group in re.findall(r'-e "\.\[([a-z,]+)\]"', commands) for e in group.split(",")}
    unused = set(project["project"]["optional-dependencies"]) - installed
    assert not unused, f"extras {sorted(unused)} are installed by no command in README.md or .ci/run"
    for package, globs in project["tool"]["setuptools"]["package-data"].items():
        for pattern in globs:
            assert list((ROOT / "src" / package).glob(pattern)), f"package data {package}/{pattern} matches no file"

