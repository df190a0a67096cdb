"""Live job events without the buffering worker: a thread holds each stream (werkzeug's server).

The Flask dev server, a REPL or the tests' own servers have no event loop to take a stream
over; iterating the stream then blocks between events and heartbeats, and ends as it does
under gunicorn. Also: the feed ends with its job system, and the settings are read once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests
from werkzeug.serving import BaseWSGIServer, make_server

from actors import JobSystem
from actors.model.errors import SettingsError
from tests.sse_client import SseClient
from tests.standin import PythonApiStandIn
from web import AppSettings, WebSettings, create_app, load_settings
from web.events import service
from web.sse import StreamSettings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served(job_system: JobSystem) -> Iterator[BaseWSGIServer]:
    app = create_app(AppSettings(core=job_system.settings, web=WebSettings(),
                                 streams=StreamSettings(heartbeat_s=0.2)),
                     job_system=job_system)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkzeug", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(10)
    service(app).close()


def test_a_thread_held_stream_follows_a_job_to_its_end(
        served: BaseWSGIServer, standin: PythonApiStandIn) -> None:
    url = f"http://127.0.0.1:{served.server_port}"
    standin.hold("ask-question")
    with SseClient(url, "/api/queue/events") as everything:  # auth off: the local admin
        assert everything.next_event().name == "snapshot"
        idle = SseClient(url, "/api/queue/events")  # a second stream, held by another thread
        idle.next_event()
        job = requests.post(f"{url}/api/interactions/d/questions", timeout=10, json={
            "question": "Threads?", "companyName": "acme"}).json()["data"]
        with SseClient(url, job["eventsUrl"]) as one:
            first = one.next_event()
            assert first.data["id"] == job["jobId"]
            one.wait_comment("keepalive")  # heartbeats from the thread that holds it
            standin.release("ask-question")
            rest = one.events_to_end()
        assert [first.name, *[e.name for e in rest]][-1] == "completed"
        seen = []
        while "completed" not in seen:
            seen.append(everything.next_event().name)
        idle.close()


def test_stream_settings_are_read_with_the_others() -> None:
    read = load_settings({"APP_ENV": "development", "EVENTS_HEARTBEAT_MS": "5000",
                          "EVENTS_MAX_STREAMS_PER_CALLER": "4", "EVENTS_POLL_MS": "250"},
                         dotenv_path=None)
    assert read.streams == StreamSettings(heartbeat_s=5.0, max_per_caller=4, poll_s=0.25)
    with pytest.raises(SettingsError) as bad:
        load_settings({"APP_ENV": "development", "EVENTS_HEARTBEAT_MS": "0",
                       "EVENTS_MAX_STREAMS": "x"}, dotenv_path=None)
    assert any("EVENTS_HEARTBEAT_MS" in p for p in bad.value.problems)
    assert any("EVENTS_MAX_STREAMS" in p for p in bad.value.problems)
