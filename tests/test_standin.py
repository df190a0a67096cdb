"""The Python API stand-in over real HTTP: bodies, scripting, holds, hangs, trickle, stop."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import requests

from tests.standin import DEMO_VIDEO_URL, ENDPOINTS, PythonApiStandIn, Reply

VIDEO = {"video_url": "https://www.loom.com/share/abc", "company_name": "acme", "source": "loom",
         "meeting_link": None, "bucket_name": "acme-bucket"}
QUESTION = {"question": "What is QuDemo?", "company_name": "acme"}
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    # Request it before `standin`: fixtures tear down in reverse, so the stand-in stops (dropping
    # held requests) before the pool waits for its threads.
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def _post(url: str, body: object) -> requests.Response:
    """One request on its own connection (requests.post opens and closes a session)."""
    return requests.post(url, json=body, timeout=10)


def _status(future: Future[requests.Response]) -> int:
    return future.result(timeout=10).status_code


# -- default bodies -------------------------------------------------------------------------------


def test_process_video_default_body(standin: PythonApiStandIn, session: requests.Session) -> None:
    r = session.post(f"{standin.url}/process-video/acme", json=VIDEO, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert body["success"] is True
    assert body["company_name"] == "acme"
    assert body["video_url"] == VIDEO["video_url"]
    assert body["message"]
    assert body["result"] == {
        "success": True, "video_url": VIDEO["video_url"], "company_name": "acme",
        "title": "Demo video", "chunks_created": 12, "vectors_stored": 12, "word_count": 1500,
        "language": "en", "method": "whisper",
    }


def test_ask_question_default_body_and_set_answer(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    url = f"{standin.url}/ask-question"
    assert session.post(url, json=QUESTION, timeout=5).json() == {
        "success": True, "answer": "This is the answer.", "sources": [DEMO_VIDEO_URL],
        "video_url": DEMO_VIDEO_URL, "start": 12.5, "end": 30.0,
    }
    standin.set_answer("QuDemo answers questions about demo videos.")
    assert session.post(url, json=QUESTION, timeout=5).json()["answer"] == (
        "QuDemo answers questions about demo videos."
    )


def test_health_default_body(standin: PythonApiStandIn, session: requests.Session) -> None:
    body = session.get(f"{standin.url}/health", timeout=5).json()
    assert body["status"] == "healthy"
    assert body["whisper_model_loaded"] is True
    assert body["whisper_model_status"] == "loaded"
    assert body["timestamp"]


def test_unknown_path_and_wrong_method(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    r = session.get(f"{standin.url}/nope", timeout=5)
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    assert session.post(f"{standin.url}/process-video", json=VIDEO, timeout=5).status_code == 404
    assert session.get(f"{standin.url}/ask-question", timeout=5).status_code == 405
    assert standin.calls() == []


# -- bad bodies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/process-video/acme", {"json": {"company_name": "acme"}}),
        ("/process-video/acme", {"data": b"{not json", "headers": JSON_HEADERS}),
        ("/process-video/acme", {"json": ["not", "an", "object"]}),
        ("/ask-question", {"json": {"question": "Why?"}}),
        ("/ask-question", {"json": {"company_name": "acme"}}),
        ("/ask-question", {"json": {"question": 42, "company_name": "acme"}}),
        ("/ask-question", {"data": b""}),
    ],
)
def test_bad_body_is_422_and_keeps_the_script(
    standin: PythonApiStandIn, session: requests.Session, path: str, kwargs: dict
) -> None:
    endpoint = path.split("/")[1]
    standin.script(endpoint, Reply(status=500))
    r = session.post(f"{standin.url}{path}", timeout=5, **kwargs)
    assert r.status_code == 422
    assert r.json()["detail"]
    # The connection stays usable and the scripted reply is still waiting for a valid request.
    good = VIDEO if endpoint == "process-video" else QUESTION
    assert session.post(f"{standin.url}{path}", json=good, timeout=5).status_code == 500


# -- scripting ------------------------------------------------------------------------------------


def test_scripted_replies_are_used_in_order_then_default(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    url = f"{standin.url}/process-video/acme"
    failed = {"success": True, "message": "failed", "company_name": "acme",
              "video_url": VIDEO["video_url"], "result": None}
    standin.script("process-video", Reply(status=500, body={"detail": "boom"}), Reply(body=failed))
    standin.script("process-video", Reply(raw_body=b"<html>not json</html>"))

    first = session.post(url, json=VIDEO, timeout=5)
    assert (first.status_code, first.json()) == (500, {"detail": "boom"})
    assert session.post(url, json=VIDEO, timeout=5).json() == failed
    third = session.post(url, json=VIDEO, timeout=5)
    assert third.text == "<html>not json</html>"
    with pytest.raises(requests.JSONDecodeError):
        third.json()
    assert session.post(url, json=VIDEO, timeout=5).json()["result"]["title"] == "Demo video"


def test_scripted_error_without_body_gets_a_detail(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    standin.script("ask-question", Reply(status=503))
    r = session.post(f"{standin.url}/ask-question", json=QUESTION, timeout=5)
    assert (r.status_code, r.json()) == (503, {"detail": "Service Unavailable"})


def test_retry_after_header_passes_through(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    standin.script("ask-question", Reply(status=429, headers={"Retry-After": "1"}))
    r = session.post(f"{standin.url}/ask-question", json=QUESTION, timeout=5)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"


def test_latency_and_delay_hold_the_answer_back(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    standin.set_latency("health", 0.2)
    standin.script("ask-question", Reply(delay_s=0.2))
    started = time.monotonic()
    assert session.get(f"{standin.url}/health", timeout=5).status_code == 200
    assert session.post(f"{standin.url}/ask-question", json=QUESTION, timeout=5).ok
    assert time.monotonic() - started >= 0.4


# -- hold, hang, trickle --------------------------------------------------------------------------


def test_hold_release_counts_concurrent_requests(
    pool: ThreadPoolExecutor, standin: PythonApiStandIn, session: requests.Session
) -> None:
    standin.hold("process-video")
    url = f"{standin.url}/process-video/acme"
    futures = [pool.submit(_post, url, VIDEO) for _ in range(3)]

    assert standin.wait_in_flight("process-video", 3)
    assert standin.max_in_flight("process-video") == 3
    # Other endpoints keep answering while one is held.
    assert session.get(f"{standin.url}/health", timeout=5).ok
    assert standin.wait_for(lambda s: s.in_flight("health") == 0)
    assert standin.in_flight("process-video") == 3

    standin.release("process-video")
    assert [_status(f) for f in futures] == [200, 200, 200]
    assert standin.wait_for(lambda s: s.in_flight("process-video") == 0)
    assert standin.max_in_flight("process-video") == 3
    assert all(c.finished_at is not None for c in standin.calls("process-video"))

    # Released means released: the next request is answered at once.
    assert session.post(url, json=VIDEO, timeout=5).ok
    assert standin.max_in_flight("process-video") == 3


def test_hang_then_release_closes_without_reply(
    pool: ThreadPoolExecutor, standin: PythonApiStandIn
) -> None:
    standin.script("ask-question", Reply(hang=True))
    future = pool.submit(_post, f"{standin.url}/ask-question", QUESTION)
    assert standin.wait_in_flight("ask-question", 1)
    assert not standin.wait_calls("ask-question", 2, timeout=0.05)  # wait_for times out -> False

    standin.release("ask-question")
    with pytest.raises(requests.ConnectionError):
        future.result(timeout=10)
    assert standin.wait_for(lambda s: s.in_flight("ask-question") == 0)


def test_trickle_delivers_the_full_body(standin: PythonApiStandIn) -> None:
    body = {"detail": "slow but complete", "n": list(range(5))}
    standin.script("ask-question", Reply(status=500, body=body, trickle_interval_s=0.05))
    with requests.post(
        f"{standin.url}/ask-question", json=QUESTION, timeout=10, stream=True
    ) as r:
        assert r.status_code == 500
        assert standin.in_flight("ask-question") == 1  # headers are here, the body is not
        assert r.json() == body
    assert standin.wait_for(lambda s: s.in_flight("ask-question") == 0)


def test_client_leaving_mid_trickle_does_not_break_the_server(
    standin: PythonApiStandIn, session: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    standin.script("health", Reply(trickle_interval_s=0.01, body={"pad": "x" * 500}))
    with requests.get(f"{standin.url}/health", timeout=10, stream=True) as r:
        assert r.raw.read(1) == b"{"
    assert standin.wait_for(lambda s: s.in_flight("health") == 0)
    assert session.get(f"{standin.url}/health", timeout=5).json()["status"] == "healthy"
    assert [rec for rec in caplog.records if rec.levelno >= logging.WARNING] == []


def test_a_delayed_reply_stays_in_flight_after_the_client_leaves(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    # Like uvicorn/FastAPI, the stand-in does not stop a handler when its client disconnects:
    # the abandoned request keeps counting, from the stand-in's own side, until its delay ends.
    delay_s = 1.5
    standin.script("ask-question", Reply(delay_s=delay_s))
    body = json.dumps(QUESTION).encode()
    with socket.create_connection(("127.0.0.1", standin.port), timeout=5) as sock:
        sock.sendall(b"POST /ask-question HTTP/1.1\r\nHost: stand-in\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert standin.wait_in_flight("ask-question", 1)
    # The client is gone, mid-delay.
    assert not standin.wait_for(lambda s: s.in_flight("ask-question") == 0, timeout=0.2)
    assert standin.in_flight("ask-question") == 1
    # A request sent now runs beside the abandoned one, and is counted on top of it.
    assert session.post(f"{standin.url}/ask-question", json=QUESTION, timeout=5).ok
    assert standin.max_unanswered("ask-question") == 2
    assert standin.max_in_flight("ask-question") == 2
    assert standin.in_flight("ask-question") == 1

    assert standin.wait_for(lambda s: s.in_flight("ask-question") == 0, timeout=5)
    abandoned, beside = standin.calls("ask-question")
    assert abandoned.finished_at is not None and beside.finished_at is not None
    assert abandoned.finished_at - abandoned.started_at >= delay_s
    assert abandoned.started_at < beside.started_at < beside.finished_at < abandoned.finished_at


# -- memory ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory_mb", "status"),
    [(500, "ok"), (1399.9, "ok"), (1400, "warning"), (1899, "warning"), (1900, "critical"),
     (2500, "critical")],
)
def test_memory_status_thresholds(
    standin: PythonApiStandIn, session: requests.Session, memory_mb: float, status: str
) -> None:
    standin.set_memory(memory_mb)
    body = session.get(f"{standin.url}/memory-status", timeout=5).json()
    assert body["memory_mb"] == memory_mb
    assert body["status"] == status
    assert (body["memory_threshold_mb"], body["cleanup_threshold_mb"]) == (1900, 1400)
    assert body["timestamp"]


def test_memory_status_explicit_error_and_reset(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    url = f"{standin.url}/memory-status"
    assert session.get(url, timeout=5).json()["memory_mb"] == 500
    standin.set_memory(100, status="critical")
    assert session.get(url, timeout=5).json()["status"] == "critical"
    standin.set_memory(None)
    body = session.get(url, timeout=5).json()
    assert body["status"] == "error"
    assert body["error"]
    standin.reset()
    assert session.get(url, timeout=5).json() | {"timestamp": None} == {
        "memory_mb": 500, "memory_threshold_mb": 1900, "cleanup_threshold_mb": 1400,
        "status": "ok", "timestamp": None,
    }


# -- observation, reset, lifecycle ---------------------------------------------------------------


def test_calls_are_recorded_in_arrival_order(
    standin: PythonApiStandIn, session: requests.Session
) -> None:
    session.get(f"{standin.url}/health", timeout=5)
    session.post(f"{standin.url}/ask-question", json=QUESTION, timeout=5)
    session.post(f"{standin.url}/process-video/acme%20inc", json=VIDEO, timeout=5)
    session.get(f"{standin.url}/memory-status", timeout=5)
    assert standin.wait_for(lambda s: all(c.finished_at for c in s.calls()))

    calls = standin.calls()
    assert [c.endpoint for c in calls] == ["health", "ask-question", "process-video",
                                           "memory-status"]
    assert [c.index for c in calls] == [0, 1, 2, 3]
    assert [c.index for c in standin.calls("process-video")] == [2]
    video = calls[2]
    assert (video.path, video.body) == ("/process-video/acme%20inc", VIDEO)
    assert calls[0].body is None
    assert all(c.finished_at is not None and c.finished_at >= c.started_at for c in calls)
    assert session.post(f"{standin.url}/process-video/acme%20inc", json=VIDEO,
                        timeout=5).json()["company_name"] == "acme inc"


def test_reset_clears_state_and_releases_holds(
    pool: ThreadPoolExecutor, standin: PythonApiStandIn, session: requests.Session
) -> None:
    standin.script("health", Reply(status=500))
    standin.set_latency("ask-question", 30)
    standin.set_answer("custom")
    standin.hold("process-video")
    held = pool.submit(_post, f"{standin.url}/process-video/acme", VIDEO)
    assert standin.wait_in_flight("process-video", 1)

    standin.reset()
    assert _status(held) == 200
    assert standin.wait_for(lambda s: s.in_flight("process-video") == 0)
    assert standin.calls() == []
    assert session.get(f"{standin.url}/health", timeout=5).status_code == 200
    assert session.post(f"{standin.url}/ask-question", json=QUESTION,
                        timeout=5).json()["answer"] == "This is the answer."
    assert standin.calls()[0].index == 0
    assert standin.max_in_flight("process-video") >= 1  # reset only restarts the high-water mark
    assert standin.wait_for(lambda s: not any(s.in_flight(ep) for ep in ENDPOINTS))
    standin.reset()
    assert [standin.max_in_flight(ep) for ep in ENDPOINTS] == [0, 0, 0, 0]


def test_unknown_endpoint_name_is_rejected(standin: PythonApiStandIn) -> None:
    with pytest.raises(ValueError, match="unknown endpoint"):
        standin.hold("process_video")


def test_stop_returns_while_requests_are_held_or_hanging(pool: ThreadPoolExecutor) -> None:
    standin = PythonApiStandIn().start()
    url = standin.url
    standin.hold("process-video")
    standin.script("ask-question", Reply(hang=True))
    standin.script("health", Reply(trickle_interval_s=1.0))
    futures = [
        pool.submit(_post, f"{url}/process-video/acme", VIDEO),
        pool.submit(_post, f"{url}/ask-question", QUESTION),
        pool.submit(lambda: requests.get(f"{url}/health", timeout=10).json()),
    ]
    assert standin.wait_for(lambda s: all(s.in_flight(ep) == 1 for ep in ENDPOINTS[:3]))

    with requests.Session() as idle:  # an idle keep-alive connection must not block stop() either
        assert idle.get(f"{url}/memory-status", timeout=5).ok
        standin.stop()
    standin.stop()  # idempotent

    for future in futures[:2]:
        with pytest.raises(requests.ConnectionError):
            future.result(timeout=10)
    with pytest.raises(requests.RequestException):  # the trickled body was cut short
        futures[2].result(timeout=10)
    assert all(standin.in_flight(ep) == 0 for ep in ENDPOINTS)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=5)


def test_stop_without_start_is_harmless() -> None:
    PythonApiStandIn().stop()
