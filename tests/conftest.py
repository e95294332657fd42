"""Fixtures shared by every test directory."""

from fixtures_models import tiny_engine, tiny_model, tiny_model_dir  # noqa: F401  (pytest finds them here)


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Tests marked ``gpu`` run only where CUDA is available (skipped, with the reason, elsewhere)."""
    import pytest

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
