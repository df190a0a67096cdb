"""A throwaway ``redis-server`` (Debian's) for the durable peers of the core throughput.

It listens on a free port of 127.0.0.1 and keeps its files in a fresh temporary directory,
removed when it stops. Durable as Redis's documentation recommends: the append-only file,
written before every reply and flushed to disk every second (``appendfsync everysec``), the
same class of durability as SQLite's ``synchronous=NORMAL`` in WAL mode (a crash of the
process loses nothing, a power cut at most the last second); no RDB snapshots.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil

from bench.common import free_port, wait_until


def redis_version() -> str | None:
    """Return the installed redis-server's version, or ``None`` when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    words = subprocess.run([binary, "--version"], capture_output=True, text=True,
                           check=True).stdout.split()
    return next((w[2:] for w in words if w.startswith("v=")), None)


class RedisServer:
    """``redis-server`` on 127.0.0.1 in a scratch directory; a context manager."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        where = Path(self._dir.name)
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(where),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--daemonize", "no", "--logfile", str(where / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_until(self._ready, 30, 0.05):
            log = (where / "redis.log").read_text(errors="replace")[-2000:]
            self.__exit__()
            raise RuntimeError(f"redis-server did not come up:\n{log}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        try:
            return self.command("PING") == "+PONG"
        except OSError:
            return False

    def command(self, *words: str) -> str:
        """Send one inline command; return the first line of the reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.makefile("rb").readline().decode().rstrip("\r\n")

    def flush(self) -> None:
        """Remove every key: each run starts with an empty server."""
        reply = self.command("FLUSHALL", "SYNC")
        if reply != "+OK":
            raise RuntimeError(f"FLUSHALL answered {reply!r}")

    def cpu_s(self) -> float:
        """Return the CPU time (user and system) the server has used so far."""
        assert self.proc is not None
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis-server writes its files and exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
