"""Rate limits as clients meet them, over real HTTP on 127.0.0.1 (``web.limits``).

Per user with a valid token, per address otherwise; reads of one's jobs in their own large
budget; submissions strict; CORS preflights never counted. The app is served by werkzeug's
threaded server on a real socket and called with ``requests``, as a browser's fetch would.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from werkzeug.serving import WSGIRequestHandler, make_server

from actors import JobSystem
from tests.standin import PythonApiStandIn
from tests.web_support import QUESTION, SECRET, VIDEO, bearer, make_app, token
from web import WebSettings

ORIGIN = "https://app.qudemo.com"
ASK = "/api/interactions/int-1/questions"
SUBMISSIONS = ("/api/video/process", "/api/video/videos", ASK)


class _KeepAlive(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"  # one connection for thousands of polls, as a browser

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        """Write no access line: thousands of them would only slow the test."""


class Served:
    """The app on a real socket, and a ``requests`` session to call it with."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.session = requests.Session()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request; every call has a timeout, so a hang fails the test."""
        return self.session.request(method, self.url + path, timeout=10, **kwargs)


@contextlib.contextmanager
def serving(system: JobSystem, **web: Any) -> Iterator[Served]:
    """Serve ``make_app(system, **web)`` on 127.0.0.1 while in the block."""
    server = make_server("127.0.0.1", 0, make_app(system, **web), threaded=True,
                         request_handler=_KeepAlive)
    thread = threading.Thread(target=server.serve_forever, name="rate-budget-server")
    thread.start()
    client = Served(server.server_port)
    try:
        yield client
    finally:
        client.session.close()
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def submit(client: Served, path: str, headers: dict[str, str]) -> requests.Response:
    """Submit a question or a video on ``path``."""
    body = QUESTION if path == ASK else {**VIDEO, "source": "youtube"}
    return client.request("POST", path, json=body, headers=headers)


def assert_rate_limited(reply: requests.Response, limit: int) -> None:
    """Assert ``reply`` is the limiter's own 429: JSON, Retry-After, an empty budget."""
    assert reply.status_code == 429, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json()["success"] is False and "too many requests" in reply.json()["error"]
    assert 1 <= int(reply.headers["Retry-After"]) <= 900
    assert reply.headers["RateLimit-Remaining"] == "0"
    assert reply.headers["RateLimit-Limit"] == str(limit)


def test_following_jobs_every_second_never_meets_the_limit(
        job_system: JobSystem, standin: PythonApiStandIn) -> None:
    defaults = WebSettings()
    with serving(job_system, jwt_secret=SECRET) as client:
        alice = bearer("alice")
        jobs = []
        for _ in range(4):
            reply = submit(client, ASK, alice)
            assert reply.status_code == 202, reply.text
            jobs.append(reply.headers["Location"])
        # A client that polls each of its 4 jobs once a second and its job list every 10 s,
        # for 150 seconds' worth of polls: three times the old shared budget of 200.
        statuses: dict[int, int] = {}
        reads = 0
        for second in range(150):
            paths = [*jobs, "/api/queue/jobs"] if second % 10 == 0 else jobs
            for path in paths:
                reply = client.request("GET", path, headers=alice)
                statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
                reads += 1
        assert statuses == {200: reads}
        left = int(reply.headers["RateLimit-Remaining"])
        assert left == defaults.read_max_requests - reads
        # What is left covers the rest of the window at the same pace, so a whole window
        # passes without a 429; windows are fixed and counted anew, so an hour of them does.
        window_s = defaults.rate_limit_window_s
        assert int(reply.headers["RateLimit-Reset"]) <= window_s
        assert left >= (window_s - 150) * (len(jobs) + 0.1)
        assert reply.headers["RateLimit-Policy"] == f"{defaults.read_max_requests};w={window_s}"
        # Following jobs spent nothing of the submission budget.
        again = submit(client, ASK, alice)
        assert again.status_code == 202
        assert again.headers["RateLimit-Remaining"] == str(defaults.rate_limit_max_requests - 5)
        policy = f"{defaults.rate_limit_max_requests};w={window_s}"
        assert again.headers["RateLimit-Policy"] == policy


def test_two_users_behind_one_address_have_separate_budgets(job_system: JobSystem) -> None:
    with serving(job_system, jwt_secret=SECRET, rate_limit_max_requests=3,
                 rate_limit_read_max_requests=5) as client:
        alice, bob = bearer("alice"), bearer("bob")
        located = [submit(client, ASK, alice) for _ in range(3)]
        assert [r.status_code for r in located] == [202] * 3
        assert_rate_limited(submit(client, ASK, alice), 3)
        first = submit(client, ASK, bob)  # same address, another user
        assert first.status_code == 202 and first.headers["RateLimit-Remaining"] == "2"
        # Alice's reads are a budget of their own: the spent submissions do not stop them.
        reads = [client.request("GET", located[0].headers["Location"], headers=alice)
                 for _ in range(5)]
        assert [r.status_code for r in reads] == [200] * 5
        assert_rate_limited(client.request("GET", "/api/queue/status", headers=alice), 5)
        assert client.request("GET", "/api/queue/status", headers=bob).status_code == 200


def test_a_submission_flood_is_still_limited(job_system: JobSystem) -> None:
    with serving(job_system, jwt_secret=SECRET, rate_limit_max_requests=10) as client:
        alice = bearer("alice")
        replies = [submit(client, SUBMISSIONS[n % 3], alice) for n in range(30)]
        assert all(r.status_code != 429 for r in replies[:10]), [r.status_code for r in replies]
        for reply in replies[10:]:  # across the three submission routes, one budget
            assert_rate_limited(reply, 10)
            assert reply.headers["RateLimit-Policy"] == "10;w=900"
        # Control routes count in the same strict budget.
        assert_rate_limited(client.request("POST", "/api/queue/video/pause", headers=alice), 10)
        # Reading stays possible: the client can still see its jobs finish.
        assert client.request("GET", "/api/queue/jobs", headers=alice).status_code == 200


def test_preflights_are_never_counted_nor_refused(job_system: JobSystem) -> None:
    with serving(job_system, jwt_secret=SECRET, cors_origins=(ORIGIN,),
                 rate_limit_max_requests=2, rate_limit_read_max_requests=2) as client:
        alice = {**bearer("alice"), "Origin": ORIGIN}

        def preflight(path: str, method: str) -> requests.Response:
            return client.request("OPTIONS", path, headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, content-type"})

        for _ in range(10):  # a browser's preflights before the budget is spent...
            for path, method in ((ASK, "POST"), ("/api/queue/status", "GET")):
                reply = preflight(path, method)
                assert reply.status_code == 200
                assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
                assert "RateLimit-Limit" not in reply.headers
        # ...spent none of it.
        assert [submit(client, ASK, alice).status_code for _ in range(2)] == [202, 202]
        assert [client.request("GET", "/api/queue/status", headers=alice).status_code
                for _ in range(2)] == [200, 200]
        limited = submit(client, ASK, alice)
        assert_rate_limited(limited, 2)
        assert limited.headers["Access-Control-Allow-Origin"] == ORIGIN  # readable by fetch
        assert "Retry-After" in limited.headers["Access-Control-Expose-Headers"]
        assert_rate_limited(client.request("GET", "/api/queue/status", headers=alice), 2)
        for path, method in ((ASK, "POST"), ("/api/queue/status", "GET"),
                             ("/api/queue/jobs/qa/0123456789abcdef", "DELETE")):
            assert preflight(path, method).status_code == 200  # budgets spent: still answered


def test_an_invalid_token_cannot_escape_the_address_bucket(job_system: JobSystem) -> None:
    with serving(job_system, jwt_secret=SECRET, rate_limit_max_requests=3) as client:
        invalid = [
            {"Authorization": "Bearer not-a-jwt"},
            bearer("bob", secret="another-secret-0123456789abcdef0123456789"),  # forged
            bearer("carol", exp_in=-3600),  # expired
        ]
        assert [submit(client, ASK, h).status_code for h in invalid] == [401] * 3
        # Every invalid token, whatever user it names, was counted against the address.
        for headers in (*invalid, {"Authorization": f"Bearer {token('dave', algorithm='none')}"},
                        {}):
            assert_rate_limited(submit(client, ASK, headers), 3)
        # The forged "bob" spent nothing of the real bob's budget; alice has her own.
        real_bob = submit(client, ASK, bearer("bob"))
        assert real_bob.status_code == 202 and real_bob.headers["RateLimit-Remaining"] == "2"
        assert submit(client, ASK, bearer("alice")).status_code == 202


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_reads_of_one_job_count_in_the_reads_budget(job_system: JobSystem, method: str) -> None:
    with serving(job_system, jwt_secret=SECRET, rate_limit_max_requests=1,
                 rate_limit_read_max_requests=3) as client:
        alice = bearer("alice")
        location = submit(client, ASK, alice).headers["Location"]
        replies = [client.request(method, location, headers=alice) for _ in range(4)]
        assert [r.status_code for r in replies] == [200, 200, 200, 429]
        assert [r.headers["RateLimit-Remaining"] for r in replies] == ["2", "1", "0", "0"]
        # Cancel and retry are control, not reads: the strict budget (spent by the submission).
        assert client.request("DELETE", location, headers=alice).status_code == 429
        assert client.request("POST", location + "/retry", headers=alice).status_code == 429
