"""Fixtures shared by every test directory."""

from fixtures_models import tiny_engine, tiny_model, tiny_model_dir  # noqa: F401  (pytest finds them here)
