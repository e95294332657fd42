"""``tracerl runner --config FILE``: the runner's settings from the ``[runner]`` table of a TOML file.

    [runner]                                   # examples/cluster/runner.toml
    agent = "my_agents:sql_agent"
    store = "postgresql://tracerl@db.internal:5432/tracerl"
    gateway = "http://trainer-0.internal:8000"
    workers = 8                                # -n
    lease = 30
    app_dir = "/srv/agents"                    # relative paths are resolved against the file's folder

The keys are the long option names (``max_tokens`` or ``max-tokens``; ``workers`` for ``-n``); an option
given on the command line wins over the file (unless it repeats the option's default, which the file then
overrides). ``token`` is refused: a secret does not belong in a file
that gets copied around, so it comes from ``TRACERL_TOKEN`` (or ``--token``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tracerl.config import read_toml
from tracerl.errors import ConfigError

#: key → the types its value may have
KEYS: dict[str, tuple[type, ...]] = {
    "agent": (str,), "store": (str,), "gateway": (str,), "workers": (int,), "timeout": (int, float),
    "lease": (int, float), "grace": (int, float), "mode": (list,), "model": (str,), "api_key": (str,),
    "temperature": (int, float), "max_tokens": (int,), "app_dir": (str,), "ray": (str,), "actors": (int,),
    "actor_cpus": (int, float), "ray_working_dir": (str,), "prefetch": (int,),
}  # fmt: skip


def load_runner_file(path: str | Path) -> dict[str, Any]:
    """The ``[runner]`` table of ``path``, checked, with relative folders resolved against the file's folder."""
    path = Path(path)
    data = read_toml(path, "runner config")
    table = data.get("runner")
    if not isinstance(table, dict):
        raise ConfigError(f"runner config {str(path)!r} has no [runner] table; put the settings under [runner]")
    out: dict[str, Any] = {}
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key == "token":
            raise ConfigError(
                f"{str(path)!r} sets token: keep the secret out of the file and set TRACERL_TOKEN in the runner's "
                "environment (or pass --token)"
            )
        if key not in KEYS:
            raise ConfigError(
                f"unknown key {raw_key!r} in [runner] of {str(path)!r}; the known keys are {sorted(KEYS)}"
            )
        if isinstance(value, bool) or not isinstance(value, KEYS[key]):
            kinds = " or ".join(t.__name__ for t in KEYS[key])
            raise ConfigError(f"[runner] {raw_key} in {str(path)!r} must be a {kinds}, got {value!r}")
        out[key] = value
    if isinstance(out.get("mode"), list) and not all(m in ("train", "val", "test") for m in out["mode"]):
        raise ConfigError(f"[runner] mode in {str(path)!r} must list train/val/test, got {out['mode']!r}")
    for key in ("app_dir", "ray_working_dir"):
        if key in out and not Path(out[key]).is_absolute():
            out[key] = str((path.parent / out[key]).resolve())
    return out
