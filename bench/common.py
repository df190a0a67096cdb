"""What every benchmark shares: the machine record, results files, percentiles, processes.

Every benchmark talks to 127.0.0.1 only, and starts what it measures itself:

* ``StandInProcess``: the test suite's stand-in of the Python API (``tests/standin.py``)
  in its own process, so that it never competes for the measured process's GIL, with
  request logging off;
* ``GunicornProcess``: ``gunicorn -c gunicorn.conf.py <app>`` (the shipped configuration)
  on a free port, in a scratch directory (so no developer ``.env`` is read).
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
_results_dir = RESULTS


def results_dir() -> Path:
    """Return where results are written and read (``bench/results`` unless redirected)."""
    return _results_dir


def use_results_dir(path: Path) -> None:
    """Write and read results in ``path`` from now on (smoke runs keep the published ones)."""
    global _results_dir
    _results_dir = path

_STANDIN_CODE = """
import logging, sys
logging.disable(logging.INFO)
from tests.standin import PythonApiStandIn
standin = PythonApiStandIn("127.0.0.1", 0)
standin.set_latency("ask-question", float(sys.argv[1]))
standin.set_latency("process-video", float(sys.argv[2]))
standin.start()
print(standin.port, flush=True)
sys.stdin.read()  # until the benchmark closes our stdin (or dies)
standin.stop()
"""


def machine() -> dict[str, Any]:
    """Describe this machine and run: date, platform, CPUs, Python."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def write_result(name: str, result: Mapping[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the machine record; return its path."""
    results_dir().mkdir(parents=True, exist_ok=True)
    path = results_dir() / f"{name}.json"
    document = {"benchmark": name, "machine": machine(), **result}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def read_result(name: str) -> dict[str, Any] | None:
    """Return ``bench/results/<name>.json``, or ``None`` when it was never written."""
    path = results_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def ratio(value: float, baseline: float) -> float | None:
    """Return ``value / baseline`` rounded to 3 places, or ``None`` without a baseline."""
    if not baseline or baseline != baseline:
        return None
    return round(value / baseline, 3)


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02
               ) -> bool:
    """Poll ``predicate`` until true or ``timeout_s`` passes; return whether it held."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause.wait(interval_s)
    return bool(predicate())


def rss_mb(pid: int) -> float:
    """Return the resident memory of process ``pid`` in MB."""
    return float(psutil.Process(pid).memory_info().rss) / 2**20


class StandInProcess:
    """The Python API stand-in (``tests.standin``) in a child process on 127.0.0.1."""

    def __init__(self, latency_qa_s: float = 0.0, latency_video_s: float = 0.0) -> None:
        self.latencies = (latency_qa_s, latency_video_s)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> StandInProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _STANDIN_CODE, *map(str, self.latencies)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().strip()
        if not port.isdigit():
            self.__exit__()
            raise RuntimeError("the stand-in did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class GunicornProcess:
    """``gunicorn -c gunicorn.conf.py <app>`` on 127.0.0.1 in ``workdir``, as shipped."""

    def __init__(self, app: str, workdir: Path, env: Mapping[str, str]) -> None:
        self.app = app
        self.workdir = workdir
        self.port = free_port()
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        self.env = {**base, "HOST": "127.0.0.1", "PORT": str(self.port),
                    "PYTHONPATH": str(REPO), **env}
        self.log_path = workdir / f"gunicorn-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GunicornProcess:
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py"),
                 "--pythonpath", str(REPO), self.app],
                cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        if not wait_until(self._live, 60, 0.05):
            self.__exit__()
            raise RuntimeError(f"gunicorn ({self.app}) did not come up:\n{self.log()[-3000:]}")
        return self

    def _live(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def worker_pid(self) -> int:
        """Return the pid of gunicorn's (one) worker process."""
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {len(children)}")
        return int(children[0].pid)

    def log(self) -> str:
        """Return what gunicorn and the app wrote."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
