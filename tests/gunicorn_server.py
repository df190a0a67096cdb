"""Run the real server under gunicorn on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GunicornServer:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` in a subprocess, bound to 127.0.0.1.

    It runs in ``workdir`` (so no developer ``.env`` is read and data files land
    in the test's temporary directory), with only the variables the test gives
    plus what a process needs to run.
    """

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"gunicorn-{self.port}.log"
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        self.env = {**base, "HOST": "127.0.0.1", "PORT": str(self.port),
                    "PYTHONPATH": str(REPO), "APP_ENV": "development", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    def start(self, timeout_s: float = 30.0) -> GunicornServer:
        """Start gunicorn and wait until ``/health/live`` answers."""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"),
             "--pythonpath", str(REPO), "wsgi:app"],
            cwd=self.workdir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a crash test can kill it whole
        )
        if not self.wait_until(self._live, timeout_s):
            self.stop()
            raise RuntimeError(f"gunicorn did not come up; log:\n{self.log()}")
        return self

    def _live(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.proc.returncode}; log:\n{self.log()}")
        try:
            return self.session.get(self.url + "/health/live", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            # The master accepts before the worker has booted: on a busy machine the first
            # probe can wait longer than its timeout. Not up yet; ask again.
            return False

    def wait_until(self, predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
        """Poll ``predicate`` until it is true or ``timeout_s`` passes (the server is remote)."""
        done = threading.Event()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            done.wait(interval_s)
        return bool(predicate())

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request to the server."""
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.url + path, **kwargs)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal to the gunicorn master."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill_all(self) -> None:
        """SIGKILL the master and its worker at once: a crash, no shutdown code runs."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        """Wait for the master to exit; return its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def log(self) -> str:
        """Return what gunicorn and the app wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it hangs) and close files."""
        self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()

