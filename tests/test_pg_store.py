"""The PostgreSQL job store against a real server: the JobStore contract, migrations, settings.

The same behaviours tests/test_store_sqlite.py shows for SQLite, plus what a
shared store adds: global arrival order, global dedupe, migrations under an
advisory lock with several processes opening at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest

from actors import JobKind, JobState, Settings
from actors.model.errors import DuplicateJob, SettingsError, StoreUnavailable
from actors.model.jobs import freeze
from actors.stores import open_store
from actors.stores.postgres.schema import SCHEMA_VERSION
from actors.stores.postgres.store import _PRUNE_SQL, PostgresJobStore
from tests import pg_server
from tests.pg_server import T0, make_job
from tests.test_actors_support import wait_until

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
open_pg = pg_server.open_pg
Opener = Callable[..., PostgresJobStore]


def schema_rows(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM qudemo_schema ORDER BY version")]


def test_new_schema_is_migrated_and_the_password_never_shown(pg_url: str) -> None:
    with_password = pg_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    store = PostgresJobStore(with_password, instance_id="a")  # trust auth ignores it
    try:
        assert schema_rows(pg_url) == list(range(1, SCHEMA_VERSION + 1))
        described = store.describe()
        assert described["kind"] == "postgres" and described["schema_version"] == SCHEMA_VERSION
        assert "s3cret" not in repr(store) and "s3cret" not in repr(described)
    finally:
        store.close()
    store.close()  # closing twice is harmless


def test_round_trip_survives_reopen_and_seq_is_global(open_pg: Opener) -> None:
    first, other = open_pg("a"), open_pg("b")
    queued = first.insert(make_job(seq=99))  # the caller's seq is ignored: the database's wins
    done = other.insert(make_job(JobKind.VIDEO))
    done = done.replace(state=JobState.COMPLETED, finished_at=T0 + 5, attempts=1,
                        result=freeze({"title": "Demo", "chunks_created": 3}))
    other.update(done)
    assert (queued.seq, done.seq) == (1, 2)
    first.close()

    again = open_pg("c")
    assert again.get(queued.id) == queued
    assert again.get(done.id) == done
    assert again.get("no-such-job") is None
    assert [j.id for j in again.active()] == [queued.id]
    assert again.counts()[JobKind.VIDEO, JobState.COMPLETED] == 1
    assert again.max_seq() == 2
    assert [j.id for j in again.list(owner="u1")] == [done.id, queued.id]
    assert [j.id for j in again.list(kind=JobKind.QA, state=JobState.QUEUED)] == [queued.id]
    assert again.list(limit=1) == [done]
    again.remove([queued.id])
    assert again.get(queued.id) is None and again.max_seq() == 2


def test_prune_finished_by_count_and_age(open_pg: Opener) -> None:
    store = open_pg()
    jobs = [store.insert(make_job(state=JobState.COMPLETED, finished_at=1000.0 + i))
            for i in range(1, 7)]
    removed = store.prune_finished(keep=4)
    assert removed[JobKind.QA, JobState.COMPLETED] == 2
    assert store.get(jobs[0].id) is None and store.get(jobs[2].id) is not None
    removed = store.prune_finished(finished_before=1005.0)
    assert removed.total() == 2
    assert [j.id for j in store.list()] == [jobs[5].id, jobs[4].id]
    store.maintain()


def test_prune_finished_in_bounded_batches_oldest_first(open_pg: Opener) -> None:
    store = open_pg()
    jobs = [store.insert(make_job(state=JobState.COMPLETED, finished_at=1000.0 + i))
            for i in (3, 1, 2, 6, 5, 4)]  # inserted out of finish order
    active = store.insert(make_job())
    removed = store.prune_finished(limit=2)  # the registry's batch: no count in the store
    assert removed[JobKind.QA, JobState.COMPLETED] == 2
    assert store.get(jobs[1].id) is None and store.get(jobs[2].id) is None  # 1001, 1002
    assert store.prune_finished(finished_before=1005.0, limit=1).total() == 1  # 1003
    assert store.get(jobs[0].id) is None and store.get(jobs[5].id) is not None
    assert store.prune_finished(limit=100).total() == 3  # every finished job
    assert [j.id for j in store.list()] == [active.id]
    assert store.prune_finished().total() == 0  # nothing asked, nothing removed


def test_a_retention_batch_is_a_range_of_the_finished_index(pg_url: str,
                                                            open_pg: Opener) -> None:
    store = open_pg()
    store.add_many([make_job(state=JobState.COMPLETED, finished_at=T0 + i) for i in range(3000)]
                   + [make_job() for _ in range(50)])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("ANALYZE qudemo_jobs")
        indexes = {r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'qudemo_jobs'"
            " AND schemaname = current_schema()")}
        assert "qudemo_jobs_finished_order" in indexes and "qudemo_jobs_finished" not in indexes
        for age in ("", " AND finished_at < %(before)s"):
            # The statement as the store runs it, planned (not run) in a transaction.
            with conn.transaction():
                plan = "\n".join(r[0] for r in conn.execute(
                    "EXPLAIN " + _PRUNE_SQL.format(age=age), {"limit": 200, "before": T0}))
            assert "qudemo_jobs_finished_order" in plan, plan
            assert "Sort" not in plan, plan  # the index gives the order: no sort of them all


def test_one_instance_prunes_at_a_time(pg_url: str, open_pg: Opener) -> None:
    first, other = open_pg("a"), open_pg("b")
    for i in range(5):
        first.insert(make_job(state=JobState.COMPLETED, finished_at=T0 + i))
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended("
                     "current_schema() || ':qudemo:' || 'retention', 0))")  # a batch running
        assert other.prune_finished(limit=2).total() == 0  # nobody waits, nothing doubled
    assert other.prune_finished(limit=2).total() == 2


def test_dedupe_key_is_unique_among_active_jobs_of_all_instances(open_pg: Opener) -> None:
    first, other = open_pg("a"), open_pg("b")
    job = first.insert(make_job(dedupe_key="acme:video-1"))
    with pytest.raises(DuplicateJob) as caught:
        other.insert(make_job(dedupe_key="acme:video-1"))
    assert caught.value.existing_job_id == job.id
    first.update(job.replace(state=JobState.CANCELLED, finished_at=T0))
    other.insert(make_job(dedupe_key="acme:video-1"))  # free again once the first finished


def test_newer_schema_is_refused_and_left_untouched(pg_url: str, open_pg: Opener) -> None:
    open_pg().close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO qudemo_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreUnavailable, match="newer than this program knows"):
        PostgresJobStore(pg_url)
    assert schema_rows(pg_url) == [*range(1, SCHEMA_VERSION + 1), SCHEMA_VERSION + 1]


def test_unreachable_server_is_refused_with_a_clear_message() -> None:
    url = f"postgresql://qudemo:hunter2@127.0.0.1:{pg_server.free_port()}/jobs"
    with pytest.raises(StoreUnavailable, match="cannot be opened") as caught:
        PostgresJobStore(url, connect_timeout_s=2)
    assert "hunter2" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_migration_waits_for_the_advisory_lock(pg_url: str, open_pg: Opener) -> None:
    holder = psycopg.connect(pg_url, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(hashtextextended("
                       "current_schema() || ':qudemo:' || 'migrate', 0))")
        opened: list[PostgresJobStore] = []
        opener = threading.Thread(target=lambda: opened.append(open_pg("late")))
        opener.start()
        wait_until(lambda: holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone() == (1,), "the opener to wait on the migration lock")
        row = holder.execute("SELECT to_regclass('qudemo_jobs')").fetchone()
        assert row == (None,)  # nothing migrated while another holds the lock
        holder.execute("SELECT pg_advisory_unlock_all()")
        opener.join(timeout=30)
        assert opened and opened[0].counts().total() == 0
    finally:
        holder.close()


def test_concurrent_opens_migrate_once(pg_url: str, open_pg: Opener) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one(n: int) -> None:
        try:
            start.wait(timeout=10)
            open_pg(f"i{n}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert schema_rows(pg_url) == list(range(1, SCHEMA_VERSION + 1))


def test_settings_need_database_url_for_postgres_and_never_show_it() -> None:
    with pytest.raises(SettingsError, match="QUEUE_STORE=postgres needs DATABASE_URL"):
        Settings.from_env({"QUEUE_STORE": "postgres"}, dotenv_path=None)
    with pytest.raises(SettingsError, match="DATABASE_URL is not a postgresql://"):
        Settings.from_env({"DATABASE_URL": "mysql://u:pw@db/x"}, dotenv_path=None)
    settings = Settings.from_env(
        {"QUEUE_STORE": "postgres", "DATABASE_URL": "postgresql://u:pw-secret@db:5432/jobs",
         "QUEUE_LEASE_TTL_MS": "45000"}, dotenv_path=None)
    assert settings.store == "postgres" and settings.lease_ttl_s == 45.0
    assert "pw-secret" not in repr(settings)
    with pytest.raises(SettingsError):
        open_store(Settings(store="postgres"))


def test_open_store_opens_postgres(pg_url: str) -> None:
    store = open_store(Settings(store="postgres", database_url=pg_url))
    try:
        assert isinstance(store, PostgresJobStore)
        assert store.describe()["kind"] == "postgres"
    finally:
        store.close()



def test_a_dropped_connection_is_replaced(pg_url: str, open_pg: Opener) -> None:
    checked, unchecked = open_pg("checked", idle_check_s=0.0), open_pg("unchecked")
    job = checked.insert(make_job())
    assert unchecked.get(job.id) == job
    with psycopg.connect(pg_url, autocommit=True) as admin:  # a restart, or a proxy's timeout
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name LIKE 'qudemo-jobs %'")
    assert checked.get(job.id) == job  # checked before use: replaced at once
    # Used a moment ago, so not checked: this call fails cleanly, the next one reconnects.
    with pytest.raises(StoreUnavailable, match="failed"):
        unchecked.get(job.id)
    assert unchecked.get(job.id) == job
