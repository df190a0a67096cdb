"""The dashboard in real headless Chromium, against the real server under gunicorn.

Chromium and its driver come from Debian's packages (``chromium``, ``chromium-driver``),
driven through selenium with both paths given, so nothing is downloaded. Without them the
test is skipped, except under ``CI=true``, where a skip would hide a missing browser and
fails instead (``.ci/run`` installs them). The screenshot lands in ``tests/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gunicorn_server import REPO, GunicornServer
from tests.standin import PythonApiStandIn, Reply
from tests.url_corpus import youtube_url
from tests.web_support import SECRET, token

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1100")
ARTIFACTS = REPO / "tests" / "artifacts"
ADMIN = token("root", role="admin")
WAIT_S = 15


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true: CI must run this test, not skip it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so this is a failure, not a skip "
                    "(.ci/run installs chromium and chromium-driver)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (apt-get install chromium "
                    "chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as server:
        yield server


@pytest.fixture
def server(standin: PythonApiStandIn, tmp_path: Path) -> Iterator[GunicornServer]:
    env = {"PYTHON_API_BASE_URL": standin.url, "JWT_SECRET": SECRET, "QUEUE_STORE": "memory",
           "QUEUE_MAX_CONCURRENT_VIDEOS": "1", "MEMORY_CHECK_INTERVAL_MS": "500",
           "GUNICORN_ACCESS_LOG": ""}
    gunicorn = GunicornServer(tmp_path, env).start()
    yield gunicorn
    gunicorn.stop()


def test_dashboard_shows_the_queues_live_and_pauses_dispatch(
        driver: Any, server: GunicornServer, standin: PythonApiStandIn) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def until(condition: Callable[[], Any], what: str) -> Any:
        # The page redraws its rows on every refresh: an element found a moment ago may be
        # gone when it is read, so a stale reference means "look again".
        wait = WebDriverWait(driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(lambda _: condition(), message=what)

    def text(element_id: str) -> str:
        return str(driver.find_element(By.ID, element_id).text)

    def shows(element_id: str, expected: str) -> None:
        until(lambda: text(element_id) == expected, f"#{element_id} == {expected!r}")

    headers = {"Authorization": f"Bearer {ADMIN}"}

    def submit(path: str, body: dict[str, Any]) -> str:
        reply = server.request("POST", path, json=body, headers=headers)
        assert reply.status_code == 202, reply.text
        return str(reply.json()["data"]["jobId"])

    def video(name: str) -> str:
        return submit("/api/video/process", {
            "video_url": youtube_url(name), "company_name": "acme"})

    def question(text: str) -> str:
        return submit("/api/interactions/demo-1/questions",
                      {"question": text, "companyName": "acme"})

    # Authentication is on: the page asks for an admin token, then shows the data.
    driver.get(server.url + "/dashboard?refresh=0.3")
    until(lambda: driver.find_element(By.ID, "token-form").is_displayed(), "token form shown")
    driver.find_element(By.ID, "token-input").send_keys(ADMIN)
    driver.find_element(By.ID, "token-save").click()
    shows("qa-completed", "0")
    shows("system-state", "accepting jobs")
    until(lambda: "500 MB" in text("python-memory"), "the Python API's memory reading")

    # Numbers change as jobs run: one question fails for good, one completes.
    standin.script("ask-question", Reply(status=400, body={"detail": "unknown company"}))
    failed = question("Which plans exist?")
    shows("qa-failed", "1")
    until(lambda: failed in text("failure-rows") and "unknown company" in text("failure-rows"),
          "the failure listed with its error")
    question("What are the main features?")
    shows("qa-completed", "1")

    # A running video shows with its age.
    standin.hold("process-video")
    running = video("dash-running")
    assert standin.wait_in_flight("process-video", 1, timeout=10)
    shows("video-running", "1")
    until(lambda: running in text("running-rows"), "the running job listed")

    # Pause: a new video waits, and the stand-in sees no new call, while Q&A goes on.
    shows("video-toggle", "Pause")
    driver.find_element(By.ID, "video-toggle").click()
    shows("video-state", "paused")
    shows("video-toggle", "Resume")
    waiting = video("dash-waiting")
    shows("video-waiting", "1")
    question("Does it work offline?")  # dispatched after the video was queued ...
    shows("qa-completed", "2")  # ... so the video would have gone out by now, unpaused
    assert len(standin.calls("process-video")) == 1
    status = server.request("GET", f"/api/queue/jobs/video/{waiting}", headers=headers)
    assert status.json()["data"]["status"] == "queued"
    until(lambda: "s" in driver.find_element(By.CSS_SELECTOR, "#running-rows td.age").text,
          "the running job's age")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))

    # Resume: the waiting video is dispatched once the running one is done.
    standin.release("process-video")
    driver.find_element(By.ID, "video-toggle").click()
    shows("video-state", "dispatching")
    shows("video-completed", "2")
    assert len(standin.calls("process-video")) == 2
    shows("video-waiting", "0")

    # Nothing was refused by the page's Content-Security-Policy, nothing failed to load.
    problems = [entry["message"] for entry in driver.get_log("browser")
                if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]]
    assert not [p for p in problems if "401" not in p], problems
