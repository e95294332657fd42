"""The runner's handle on one agent worker process (see :mod:`tracerl.runner.child` for the protocol).

The process is persistent: it imports the agent once and runs rollouts one after another, so a rollout
costs a message round trip, not an interpreter start. It runs in its own session (process group), so a
timeout kill also takes down whatever subprocesses the agent started, and the terminal's Ctrl-C reaches
only the runner, which decides what happens to running rollouts. (POSIX only: it passes the socket by file
descriptor and kills by process group.)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tracerl.agent import LLM, AgentRef
from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)


class WorkerDied(Exception):
    """The worker process exited (crashed, killed by the OS, or called ``os._exit``)."""


class AgentProcess:
    """Spawn with :meth:`start` (returns once the agent is imported), then :meth:`run` / :meth:`recv`."""

    def __init__(self, ref: AgentRef, *, start_timeout_s: float = 120.0) -> None:
        self.ref = ref
        self.start_timeout_s = start_timeout_s
        self.is_async = False
        self.ready = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        """Whether the process is running (it may still be importing the agent)."""
        return self._proc is not None and self._proc.poll() is None

    def spawn(self) -> None:
        """Start the interpreter and send the agent to import, without waiting (see :meth:`wait_ready`)."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # the folder holding the tracerl package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tracerl.runner.child", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send(("init", {"agent": self.ref, "sys_path": list(sys.path)}))

    def wait_ready(self, stop: threading.Event | None = None) -> bool:
        """Wait for the worker to import the agent; :class:`ConfigError` with the reason if it cannot.
        Returns ``False`` (still starting) as soon as ``stop`` is set, ``True`` once it is ready."""
        conn = self._require()
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while not conn.poll(min(0.25, max(0.0, deadline - time.monotonic()))):
                if stop is not None and stop.is_set():
                    return False
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"agent worker for {self.ref} did not start within {self.start_timeout_s:g}s "
                        "(is importing the agent's module very slow, or does it block at import time?)"
                    )
            kind, payload = conn.recv()
        except (EOFError, OSError):
            how = self._how_it_ended()
            raise ConfigError(f"agent worker for {self.ref} {how} while starting") from None
        except ConfigError:
            self.kill()
            raise
        if kind == "fatal":
            self.kill()
            raise ConfigError(str(payload))
        self.is_async = bool(payload["is_async"])
        self.ready = True
        logger.debug("agent worker %s ready for %s", payload["pid"], self.ref)
        return True

    def start(self) -> AgentProcess:
        self.spawn()
        self.wait_ready()
        return self

    def run(self, llm: LLM, task: dict[str, Any]) -> None:
        """Start a rollout; its spans and final result arrive through :meth:`recv`."""
        try:
            self._require().send(("run", llm, task))
        except OSError as e:
            raise WorkerDied(f"agent worker {self.pid} is gone ({e})") from None

    def ack(self) -> None:
        """Tell the worker its last span is stored (its ``emit_*`` call then returns)."""
        try:
            self._require().send(("ack",))
        except OSError as e:
            raise WorkerDied(f"agent worker {self.pid} is gone ({e})") from None

    def recv(self, timeout_s: float) -> tuple[str, Any] | None:
        """The next message (``("span", Span)`` or ``("done", result)``), or ``None`` after ``timeout_s``.
        Raises :class:`WorkerDied` if the process exited."""
        conn = self._require()
        try:
            if not conn.poll(max(0.0, timeout_s)):
                return None
            return conn.recv()
        except (EOFError, OSError):
            raise WorkerDied(f"agent worker {self._how_it_ended()} while running the agent") from None

    def _how_it_ended(self, timeout_s: float = 5.0) -> str:
        """After the worker's socket closed: wait up to ``timeout_s`` for it to exit, kill it (and its
        process group) either way, and say what happened, e.g. ``"exited with code 7"``."""
        code: int | None = None
        if self._proc is not None:
            try:
                code = self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                code = None
        self.kill()
        if code is None:
            return f"closed its connection but had not exited {timeout_s:g}s later, so it was killed"
        return f"exited with code {code}"

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (its process group)."""
        proc, self._proc = self._proc, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    def close(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout_s``."""
        if self._proc is None:
            return
        try:
            if self._conn is not None:
                self._conn.send(("exit",))
            self._proc.wait(timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def _require(self) -> Connection:
        if self._conn is None:
            raise WorkerDied("agent worker is not running")
        return self._conn
