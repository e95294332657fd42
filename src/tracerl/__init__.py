"""tracerl: improve existing AI agents with RL and prompt optimization, without changing their code.

The package imports lightly (no torch, transformers or FastAPI at import time); heavy parts load on first
use of the names that need them.

    import tracerl
    store = tracerl.connect("sqlite:///runs/demo.db")
"""

from __future__ import annotations

from tracerl.errors import TracerlError
from tracerl.store import Store, connect

__version__ = "0.1.0"
__all__ = ["Store", "TracerlError", "__version__", "connect"]
