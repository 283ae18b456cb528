"""What the OS-layer red-team hacks aim at (`Targets`): used by test_redteam_os.py and
benchmarks/soak.py, which check afterwards that nothing was reached."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

VICTIM = b"reference outputs of another evaluation".ljust(64, b".")


class Targets:
    """What the hacks aim at: a folder standing for /dev/shm (another evaluation's output file) and
    the shared Triton cache, a TCP listener and a UDP port on loopback, and a count of SIGWINCH
    received here."""

    def __init__(self) -> None:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="kernelgym-redteam-", dir=base)
        os.makedirs(os.path.join(self.dir, "kernelgym-outputs-victim"))
        os.makedirs(os.path.join(self.dir, "cache"))
        self.victim = os.path.join(self.dir, "kernelgym-outputs-victim", "0.bin")
        with open(self.victim, "wb") as fh:
            fh.write(VICTIM)
        self.connections = 0
        self.signals = 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self.port = self._srv.getsockname()[1]
        self.datagrams = 0
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.settimeout(0.2)
        self.udp_port = self._udp.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        self._udp_thread = threading.Thread(target=self._receive, daemon=True)
        self._udp_thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                self._udp.recvfrom(2048)
            except OSError:
                continue
            self.datagrams += 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1

    @contextlib.contextmanager
    def armed(self) -> Iterator[Targets]:
        env = {"KERNELGYM_REDTEAM_DIR": self.dir, "KERNELGYM_REDTEAM_PORT": str(self.port),
               "KERNELGYM_REDTEAM_UDP_PORT": str(self.udp_port),
               # Workers are forked from a template, so the evaluator is not their parent: name it.
               "KERNELGYM_REDTEAM_PID": str(os.getpid())}
        old_env = {k: os.environ.get(k) for k in env}
        old_handler = signal.signal(signal.SIGWINCH, self._on_signal)
        os.environ.update(env)
        try:
            yield self
        finally:
            signal.signal(signal.SIGWINCH, old_handler)
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def untouched(self) -> list[str]:
        """What escaped (empty when nothing did)."""
        bad = []
        with open(self.victim, "rb") as fh:
            if fh.read() != VICTIM:
                bad.append("the victim output file was changed")
        if os.listdir(os.path.join(self.dir, "cache")):
            bad.append(f"files appeared in the shared Triton cache: {os.listdir(os.path.join(self.dir, 'cache'))}")
        if self.connections:
            bad.append(f"the listener accepted {self.connections} connection(s)")
        if self.datagrams:
            bad.append(f"the UDP port received {self.datagrams} datagram(s)")
        if self.signals:
            bad.append(f"the evaluator received {self.signals} SIGWINCH")
        return bad

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        self._thread.join(timeout=5)
        self._udp_thread.join(timeout=5)
        self._udp.close()
        shutil.rmtree(self.dir, ignore_errors=True)
