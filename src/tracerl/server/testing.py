"""Start a real ``tracerl serve`` subprocess on loopback, for tests and benchmarks.

    with start_server("sqlite:///tmp/x.db") as server:
        store = HttpStore(server.url)
        ...
        server.kill()       # SIGKILL, as a crash would
        server.restart()    # same port, same store

The server's output goes to a log file (``server.log_path``); its tail is included in the error when the
server does not come up. The token travels in the ``TRACERL_TOKEN`` environment variable, not argv.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


class ServerProcess:
    """One ``python -m tracerl serve`` child process. Use :func:`start_server` to make one."""

    def __init__(
        self, store_url: str, *, token: str | None = None, port: int = 0, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.store_url = store_url
        self.token = token
        self.port = port
        self.extra_args = extra_args
        self._dir = tempfile.TemporaryDirectory(prefix="tracerl-server-")
        self.log_path = Path(self._dir.name) / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        """Start the process and wait until ``/healthz`` answers (``RuntimeError`` with its log if not)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("TRACERL_TOKEN", None)
        if self.token:
            env["TRACERL_TOKEN"] = self.token
        cmd = [sys.executable, "-m", "tracerl", "serve", "--store", self.store_url, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), *self.extra_args]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing after we return
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tracerl serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.port == 0:
                found = _LISTENING.search(self.log_path.read_bytes()[offset:])
                if found:
                    self.port = int(found.group(1))
            if self.port and _healthy(self.port):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"tracerl serve did not become healthy within {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The last ``chars`` characters of the server's output."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-chars:].decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout_s``. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL, as a crash or the OOM killer would. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def restart(self, timeout_s: float = 60.0) -> ServerProcess:
        """Stop (if running) and start again on the same port with the same store."""
        self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_server(
    store_url: str, *, token: str | None = None, port: int = 0, extra_args: tuple[str, ...] = ()
) -> ServerProcess:
    """Start ``tracerl serve`` for ``store_url`` on 127.0.0.1 (a free port if ``port`` is 0) and wait
    until it is healthy. The returned :class:`ServerProcess` is also a context manager."""
    return ServerProcess(store_url, token=token, port=port, extra_args=extra_args).start()


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()
