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


class Page:
    """The dashboard in the browser: bounded waits on what it shows, and the API beside it."""

    def __init__(self, driver: Any, server: GunicornServer) -> None:
        self.driver = driver
        self.server = server
        self.headers = {"Authorization": f"Bearer {ADMIN}"}

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # The page redraws its rows on every refresh: an element found a moment ago may be
        # gone when it is read, so a stale reference means "look again".
        wait = WebDriverWait(self.driver, WAIT_S,
                             ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(lambda _: condition(), message=what)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def absent(self, css: str) -> bool:
        from selenium.webdriver.common.by import By

        return not self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, element_id: str) -> str:
        return str(self.find(f"#{element_id}").text)

    def shows(self, element_id: str, expected: str) -> None:
        self.until(lambda: self.text(element_id) == expected, f"#{element_id} == {expected!r}")

    def sign_in(self, path: str = "/dashboard?refresh=0.3") -> None:
        """Open the page; authentication is on, so it asks for the admin token first."""
        self.driver.get(self.server.url + path)
        self.until(lambda: self.find("#token-form").is_displayed(), "token form shown")
        self.driver.get_log("browser")  # drop what an earlier page (and server) logged
        self.find("#token-input").send_keys(ADMIN)
        self.find("#token-save").click()
        self.shows("system-state", "accepting jobs")

    def submit(self, path: str, body: dict[str, Any], user: str | None = None) -> str:
        headers = self.headers if user is None else {"Authorization": f"Bearer {token(user)}"}
        reply = self.server.request("POST", path, json=body, headers=headers)
        assert reply.status_code == 202, reply.text
        return str(reply.json()["data"]["jobId"])

    def video(self, name: str, user: str | None = None) -> str:
        return self.submit("/api/video/process", {
            "video_url": youtube_url(name), "company_name": "acme"}, user)

    def question(self, text: str, user: str | None = None, company: str = "acme") -> str:
        return self.submit("/api/interactions/demo-1/questions",
                           {"question": text, "companyName": company}, user)

    def no_problems(self, *expected: str) -> None:
        """Nothing was refused by the page's Content-Security-Policy, nothing failed to load.

        The page's first 401 (before the token) is expected, and so is each of ``expected``.
        """
        problems = [entry["message"] for entry in self.driver.get_log("browser")
                    if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]]
        allowed = ("401", *expected)
        assert not [p for p in problems if not any(a in p for a in allowed)], problems


def test_dashboard_shows_the_queues_live_and_pauses_dispatch(
        driver: Any, server: GunicornServer, standin: PythonApiStandIn) -> None:
    from selenium.webdriver.common.by import By

    page = Page(driver, server)
    until, text, shows = page.until, page.text, page.shows
    headers = page.headers
    video, question = page.video, page.question

    # Authentication is on: the page asks for an admin token, then shows the data.
    page.sign_in()
    shows("qa-completed", "0")
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

    page.no_problems()


def test_dashboard_says_what_jobs_are_and_retries_a_failure(
        driver: Any, server: GunicornServer, standin: PythonApiStandIn) -> None:
    page = Page(driver, server)
    page.sign_in()
    page.shows("qa-failed", "0")

    # A question fails for good: its row names its company, its first words and its owner.
    standin.script("ask-question", Reply(status=400, body={"detail": "unknown company"}))
    failed = page.question("Which of the plans fits a team of five people working remotely "
                           "across three time zones?", user="alice", company="Acme Corp")
    page.shows("qa-failed", "1")
    row = f'#failure-rows tr[data-job-id="{failed}"]'
    page.until(lambda: page.find(row + " td.what").text
               == "Which of the plans fits a team of five people working\u2026",
               "the question's first words, cut between words")
    page.until(lambda: page.find(row + " td.company").text == "Acme Corp", "its company")
    page.until(lambda: page.find(row + " td.owner").text == "alice", "its owner")
    page.until(lambda: "unknown company" in page.find(row + " td.error-text").text,
               "its error")

    # A video fails; the same video sent again runs: its row names its company, its
    # canonical URL and its owner, and retrying the failed one is refused (409, a duplicate).
    standin.script("process-video", Reply(status=400, body={"detail": "private video"}))
    failed_video = page.video("dash-what", user="bob")
    page.shows("video-failed", "1")
    standin.hold("process-video")
    running = page.video("dash-what", user="bob")
    assert standin.wait_in_flight("process-video", 1, timeout=10)
    running_row = f'#running-rows tr[data-job-id="{running}"]'
    # The running rows are drawn anew on every poll: each cell is read inside a wait.
    page.until(lambda: page.find(running_row + " td.what").text == youtube_url("dash-what"),
               "the running video's URL")
    page.until(lambda: page.find(running_row + " td.company").text == "acme",
               "the running video's company")
    page.until(lambda: page.find(running_row + " td.owner").text == "bob",
               "the running video's owner")
    video_row = f'#failure-rows tr[data-job-id="{failed_video}"]'
    page.until(lambda: page.find(video_row + " button.retry").click() or True, "Retry clicked")
    refused = page.until(lambda: page.find(video_row + " .outcome.bad").text, "the refusal")
    assert "already queued or processing" in refused, refused  # the reply's error
    assert page.text("retry-note") == f"Retry of video job {failed_video}: {refused}"
    assert len(standin.calls("process-video")) == 2
    standin.release("process-video")
    page.shows("video-completed", "1")

    # Retry: the stand-in sees the question a second time, and answers it this time.
    assert len(standin.calls("ask-question")) == 1
    page.until(lambda: page.find(row + " button.retry").click() or True, "Retry clicked")
    page.until(lambda: page.text("retry-note") == f"Retry of qa job {failed}: queued again",
               "the retry's outcome")
    assert standin.wait_for(lambda s: len(s.calls("ask-question")) == 2, 10)
    page.shows("qa-completed", "1")
    page.shows("qa-failed", "0")
    page.until(lambda: page.absent(row), "the retried job no longer among the failures")
    assert not page.absent(video_row)  # the refused retry left the video failed
    job = server.request("GET", f"/api/queue/jobs/qa/{failed}", headers=page.headers).json()
    assert job["data"]["status"] == "completed" and job["data"]["attempts"] == 1
    page.no_problems(f"/{failed_video}/retry - Failed to load resource: the server responded "
                     "with a status of 409")


FOLLOW_JOB = """
// The README's example ("Live job events"), as a page of this origin runs it: submit with
// the API token, then follow the job with EventSource and the 202's short-lived eventsUrl.
const [jwt, body] = arguments;
const followed = window.followed = {reply: null, events: [], errors: []};
fetch("/api/interactions/demo-1/questions", {
  method: "POST", headers: {"Content-Type": "application/json", Authorization: `Bearer ${jwt}`},
  body: JSON.stringify(body),
}).then((res) => res.json()).then((reply) => {
  followed.reply = reply;
  const events = followed.source = new EventSource(reply.data.eventsUrl);
  for (const state of ["queued", "processing", "retrying", "completed", "failed", "cancelled"]) {
    events.addEventListener(state, (e) => followed.events.push(
      {type: e.type, status: JSON.parse(e.data).status, id: e.lastEventId}));
  }
  // After the terminal event the server ends the stream; EventSource reconnects with
  // Last-Event-ID, gets 204 and stops for good: readyState CLOSED.
  events.onerror = () => followed.errors.push(events.readyState);
}, (error) => { followed.reply = String(error); });
"""


def test_a_page_follows_a_job_through_event_source(
        driver: Any, server: GunicornServer, standin: PythonApiStandIn) -> None:
    page = Page(driver, server)
    page.sign_in()
    csp = server.request("GET", "/dashboard").headers["Content-Security-Policy"]
    assert "connect-src 'self'" in csp, csp  # EventSource and fetch are connect-src

    def seen() -> list[tuple[str, str]]:
        events = driver.execute_script("return window.followed.events")
        return [(event["type"], event["status"]) for event in events]

    # Questions wait (paused) until the stream is open, so that "queued" is seen live.
    pause = server.request("POST", "/api/queue/qa/pause", headers=page.headers)
    assert pause.status_code == 200, pause.text
    driver.execute_script(FOLLOW_JOB, ADMIN, {"question": "What are the main features?",
                                              "companyName": "acme"})
    page.until(lambda: driver.execute_script("return window.followed.reply"), "the 202 reply")
    reply = driver.execute_script("return window.followed.reply")
    assert isinstance(reply, dict) and reply["success"], reply
    data = reply["data"]
    assert data["eventsUrl"] == (f"/api/queue/jobs/qa/{data['jobId']}/events"
                                 f"?access_token={data['eventsToken']}")
    page.until(lambda: seen() == [("queued", "queued")], "the job's first event: queued")

    # Dispatched: the stand-in holds the question, so the job stays processing.
    standin.hold("ask-question")
    try:
        resume = server.request("POST", "/api/queue/qa/resume", headers=page.headers)
        assert resume.status_code == 200, resume.text
        assert standin.wait_in_flight("ask-question", 1, timeout=10)
        page.until(lambda: seen()[-1:] == [("processing", "processing")], "processing")
        assert driver.execute_script("return window.followed.source.readyState") == 1  # OPEN
    finally:
        standin.release("ask-question")

    # Answered: "completed" is the last event, and the stream ends for good.
    page.until(lambda: seen()[-1:] == [("completed", "completed")], "completed")
    page.until(lambda: driver.execute_script("return window.followed.source.readyState") == 2,
               "EventSource closed after the end (204 on its reconnect)")
    assert seen() == [("queued", "queued"), ("processing", "processing"),
                      ("completed", "completed")]
    ids = [int(e["id"]) for e in driver.execute_script("return window.followed.events")]
    assert ids == sorted(set(ids)), ids  # every event has its place in the log, in order
    job = server.request("GET", f"/api/queue/jobs/qa/{data['jobId']}", headers=page.headers)
    assert job.json()["data"]["status"] == "completed"
    page.no_problems()


def test_dashboard_shows_companies_and_capacity(
        driver: Any, server: GunicornServer, standin: PythonApiStandIn) -> None:
    page = Page(driver, server)
    page.sign_in()

    # Capacity: the one instance starts at the adaptive minimum, and says so.
    capacity = '#capacity-rows tr[data-instance="1"]'
    page.until(lambda: page.find(capacity + " td.limit").text == "2", "the instance's limit")
    page.until(lambda: page.find(capacity + " td.reason").text == "start: the operator minimum",
               "why the limit is where it is")

    # Two companies: acme's video runs (one video at a time), globex's waits behind it.
    standin.hold("process-video")
    try:
        page.video("dash-acme", user="alice")
        assert standin.wait_in_flight("process-video", 1, timeout=10)
        page.submit("/api/video/process", {"video_url": youtube_url("dash-globex"),
                                           "company_name": "globex"}, user="bob")
        acme, globex = ('#company-rows tr[data-company="acme"]',
                        '#company-rows tr[data-company="globex"]')
        # The rows are drawn anew on every poll: each cell is read inside a wait.
        page.until(lambda: page.find(acme + " td.video-running").text == "1", "acme running")
        page.until(lambda: page.find(acme + " td.video-share").text == "100% (fair 50%)",
                   "acme's share of the running videos")
        page.until(lambda: page.find(globex + " td.video-waiting").text == "1",
                   "globex waiting")
        page.until(lambda: page.find(globex + " td.video-running").text == "0",
                   "globex not running")
        page.until(lambda: "video 2" in page.text("companies-count"), "two with video work")
    finally:
        standin.release("process-video")
    page.shows("video-completed", "2")
    page.until(lambda: page.absent("#company-rows tr"), "no company with work left")
    page.no_problems()
