"""Fixtures shared by every test directory."""

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures_models import tiny_engine, tiny_model, tiny_model_dir  # noqa: F401  (pytest finds them here)


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Tests marked ``gpu`` run only where CUDA is available (skipped, with the reason, elsewhere)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def agent_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], Path]:
    """``agent_module(name, source)`` writes ``source`` (dedented) as module ``name`` into a folder that this test
    puts on ``sys.path`` (runner processes import agents by ``"name:function"`` from there); returns the folder."""
    folder = tmp_path / "agent_modules"

    def write(name: str, source: str) -> Path:
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(folder))
        return folder

    return write
