"""The PostgreSQL store stopped and started again under load: no 500s, health tells the truth.

A PostgreSQL server of its own (the shared one serves every other test), halted with a
fast shutdown while clients submit, then started again on the same port.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from actors import JobState, JobSystem, Settings
from tests import pg_server
from tests.standin import PythonApiStandIn
from tests.test_actors_support import wait_until
from tests.web_support import make_app

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def own_pg() -> Iterator[pg_server.PgServer]:
    bin_dir = pg_server.find_bin_dir()
    if bin_dir is None:
        import os
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed; CI must have it (.ci/run installs it)")
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl)")
    with pg_server.PgServer(bin_dir) as server:
        yield server


def test_a_database_outage_under_load_answers_503_never_500_and_loses_nothing(
        own_pg: pg_server.PgServer, fast_settings: Settings, standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(store="postgres", database_url=own_pg.url,
                                     lease_ttl_s=30.0, poll_interval_s=0.3,
                                     db_statement_timeout_s=1.0)
    system = JobSystem(settings).start()
    client = make_app(system).test_client()
    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            reply = client.post(f"/api/interactions/i{n}/questions",
                                json={"question": f"Outage question {n}?", "companyName": "a"})
            statuses[reply.status_code] += 1
            if reply.status_code == 202:
                accepted.append(reply.json["data"]["jobId"])
            stop.wait(0.02)

    def unhealthy_for_the_store() -> bool:
        reply = client.get("/health")
        return (reply.status_code == 503 and "health" in reply.json
                and reply.json["health"]["store"]["reachable"] is False)

    loader = threading.Thread(target=load, name="OutageLoad")
    try:
        loader.start()
        wait_until(lambda: len(accepted) >= 5, "some jobs accepted before the outage")
        own_pg.halt()
        wait_until(unhealthy_for_the_store,
                   "/health to say the store is unreachable while it is down", timeout=30)
        assert client.get("/health/ready").status_code == 503
        wait_until(lambda: statuses[503] > 0, "a submission refused while it is down",
                   timeout=30)
        own_pg.resume()
        wait_until(lambda: client.get("/health").status_code == 200,
                   "/health to recover with the database", timeout=60)
        wait_until(lambda: statuses[202] > len(accepted) - 1 and len(accepted) >= 10,
                   "submissions accepted again", timeout=30)
        stop.set()
        loader.join(30)
        assert set(statuses) <= {202, 503}, statuses  # never a 500
        # Every accepted job completes, including those accepted just before the outage.
        wait_until(lambda: all(system.get(j).state == JobState.COMPLETED for j in accepted),
                   "every accepted job to complete", timeout=90)
    finally:
        stop.set()
        loader.join(30)
        system.stop(drain=False)
