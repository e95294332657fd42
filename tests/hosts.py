"""Test hosts made of Linux network namespaces, so "several machines" can be tested on one.

    with Hosts(["store", "runner-a", "runner-b"]) as hosts:     # needs root and `ip netns`
        hosts.ip("store")                                      # 10.214.K.2, the store host's address
        proc = hosts.popen("store", [sys.executable, "-m", "tracerl", "serve", ...])
        hosts.cut("runner-a")                                  # pull runner-a's cable
        hosts.mend("runner-a")

Each host is a namespace with its own loopback and one veth pair to a hub namespace holding a bridge; the
root namespace (where the test itself runs: the "trainer" host) is plugged into the same bridge at
``10.214.K.1``. The /24 is a private range picked so it is not in use on this machine; nothing is routed
outside it and no sysctl of the root namespace is changed. :meth:`Hosts.cut` sets the hub end of a host's
veth down, so the host stays up but its packets go nowhere, as when a cable is pulled.

:class:`TcpForwarder` lets the hosts reach a service of the root namespace that listens only on 127.0.0.1
(PostgreSQL here): it listens on the root's bridge address and copies bytes both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

SUBNET_PREFIX = "10.214"


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can): not root, no ``ip``, or refused."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"trprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Hosts:
    """Namespaces joined by a bridge; see the module docstring."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        tag = f"{os.getpid() % 100000}"
        self._ns = {n: f"tr{tag}{i}" for i, n in enumerate(self.names)}
        self._hub = f"tr{tag}h"
        self._hub_end = {n: f"tr{tag}h{i}" for i, n in enumerate(self.names)}
        self._subnet = self._free_subnet()
        self._procs: list[subprocess.Popen[Any]] = []

    def ip(self, name: str) -> str:
        """The address of host ``name`` (``root`` is the test's own namespace)."""
        if name == "root":
            return f"{self._subnet}.1"
        return f"{self._subnet}.{self.names.index(name) + 2}"

    def __enter__(self) -> Hosts:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _free_subnet(self) -> str:
        used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
        free = [k for k in range(2, 250) if f" {SUBNET_PREFIX}.{k}." not in used]
        return f"{SUBNET_PREFIX}.{random.choice(free)}"

    def _build(self) -> None:
        hub, bridge = self._hub, "br0"
        _ip("netns", "add", hub)
        _ip("-n", hub, "link", "add", bridge, "type", "bridge")
        _ip("-n", hub, "link", "set", bridge, "up")
        root_end = f"{self._hub}r"
        _ip("link", "add", f"{root_end}x", "type", "veth", "peer", "name", root_end, "netns", hub)
        _ip("-n", hub, "link", "set", root_end, "master", bridge, "up")
        _ip("addr", "add", f"{self.ip('root')}/24", "dev", f"{root_end}x")
        _ip("link", "set", f"{root_end}x", "up")
        for name in self.names:
            ns, end = self._ns[name], self._hub_end[name]
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", end, "netns", hub)
            _ip("-n", hub, "link", "set", end, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.ip(name)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def popen(self, name: str, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside host ``name`` (killed, with its children, by :meth:`close`)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self._ns[name], *cmd], start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def cut(self, name: str) -> None:
        """Disconnect host ``name`` from every other host (its hub-side link goes down)."""
        _ip("-n", self._hub, "link", "set", self._hub_end[name], "down")

    def mend(self, name: str) -> None:
        _ip("-n", self._hub, "link", "set", self._hub_end[name], "up")

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        for ns in [*self._ns.values(), self._hub]:  # deleting a namespace deletes its veth ends (and peers)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class TcpForwarder:
    """Listen on ``host:0`` and forward each connection to ``target``; :meth:`drop` closes one peer's."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.host, self.target = host, target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._peers: dict[str, list[asyncio.StreamWriter]] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-forwarder", daemon=True)

    def __enter__(self) -> TcpForwarder:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"TCP forwarder on {self.host} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def drop(self, peer_ip: str) -> None:
        """Close every connection from ``peer_ip`` (what TCP keep-alive does, later, after a link dies)."""

        def close() -> None:
            for w in self._peers.pop(peer_ip, []):
                w.close()

        self._loop.call_soon_threadsafe(close)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._peers.setdefault(peer, []).extend([writer, up_writer])

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
