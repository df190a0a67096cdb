"""The README's pasteable blocks run as written, beside a server started as the README says.

One shell session runs the Quick start's curl, the REST API's and the operator CLI's blocks
in README order (so ``JOB_ID`` set by one block is used by the next), against gunicorn in
development mode; the REPL block runs in the same directory while that server holds its
SQLite store. The only change made to a block is the address: the README's ports 5000 and
5001 become the test server's and the Python API stand-in's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gunicorn_server import GunicornServer
from tests.standin import PythonApiStandIn

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SHELL_SECTIONS = ("Quick start", "Submit work", "Retrying a submission safely",
                  "Follow, cancel, retry, list", "Queues and health", "Operator CLI")
"""The sections whose ``bash`` blocks talk to a running server (README order)."""
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def sections() -> Iterator[tuple[str, str, str]]:
    """Yield (section title, block language, block text) for every fenced block."""
    title = ""
    position = 0
    text = README.read_text()
    for match in FENCE.finditer(text):
        for heading in re.finditer(r"^#{2,3} (.+)$", text[position:match.start()], re.M):
            title = heading.group(1)
        position = match.end()
        yield title, match.group(1), match.group(2)


def shell_blocks() -> list[str]:
    found = []
    for title, language, block in sections():
        if language != "bash" or not title.startswith(SHELL_SECTIONS):
            continue
        if "gunicorn" in block or "pip install" in block or "tests.standin" in block:
            continue  # the start-up commands themselves (the fixtures do those)
        found.append(block)
    return found


def repl_block() -> str:
    (block,) = [b for t, lang, b in sections() if t == "Using it from a Python REPL"
                and lang == "python"]
    return block


@pytest.fixture
def standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as server:
        server.set_latency("process-video", 0.2)
        yield server


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory like a checkout: ``.venv`` is this test's virtual environment."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


@pytest.fixture
def server(workdir: Path, standin: PythonApiStandIn) -> Iterator[GunicornServer]:
    # As the Quick start runs it: APP_ENV=development, embedded defaults (SQLite in ./data).
    gunicorn = GunicornServer(workdir, {"PYTHON_API_BASE_URL": standin.url,
                                        "GUNICORN_ACCESS_LOG": ""}).start()
    yield gunicorn
    gunicorn.stop()


def addressed(block: str, server: GunicornServer, standin: PythonApiStandIn) -> str:
    return (block.replace("localhost:5000", f"localhost:{server.port}")
            .replace("127.0.0.1:5000", f"127.0.0.1:{server.port}")
            .replace("http://127.0.0.1:5001", standin.url))


def shell_env() -> dict[str, str]:
    """What a user's shell has: a PATH, a HOME; the checkout importable as ``wsgi``."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {**{k: v for k, v in os.environ.items() if k in keep}, "PYTHONPATH": str(REPO),
            "JWT_SECRET": "readme-secret-0123456789abcdef0123456789abcdef"}


def test_the_shell_blocks_run_as_written(server: GunicornServer, standin: PythonApiStandIn,
                                          workdir: Path) -> None:
    blocks = shell_blocks()
    assert len(blocks) >= 6, "the README's REST API and CLI blocks were not found"
    script = "set -euo pipefail\n" + "\n".join(addressed(b, server, standin) for b in blocks)
    done = subprocess.run(["bash", "-c", script], cwd=workdir, env=shell_env(),
                          capture_output=True, text=True, timeout=150)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "internal server error" not in output, output
    # The Submit block's echo "$JOB_ID" (curl's answers end without a newline).
    echoed = re.search(r"(?:^|})([0-9a-f]{32})$", done.stdout, re.M)
    assert echoed, output
    job_id = echoed.group(1)
    assert f'"id":"{job_id}"' in output.replace(" ", "")  # the Follow block read that job
    assert "paused=yes" in output and "paused=no" in output  # the CLI paused and resumed
    assert re.search(r"^ey[\w-]+\.[\w-]+\.[\w-]+$", output, re.M), output  # a minted token


def test_the_repl_block_runs_as_written_beside_the_server(
        server: GunicornServer, standin: PythonApiStandIn, workdir: Path) -> None:
    lines = [line[4:] for line in addressed(repl_block(), server, standin).splitlines()
             if line.startswith((">>> ", "... "))]
    script = "\n".join(lines)
    done = subprocess.run([sys.executable, "-c", script], cwd=workdir,
                          env={**shell_env(), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # It used the stand-in, not the server's store: the server is still alone with its jobs.
    assert standin.calls("ask-question")
    assert server.request("GET", "/health/live").status_code == 200
