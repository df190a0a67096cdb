"""The facade: one object to start, use, inspect and stop the job system.

Everything outside the actor system (the web layer, the REPL, tests) goes
through ``JobSystem``; nobody else holds an ``ActorRef``. Questions to actors
are ``ask``s with a timeout, asked from the caller's thread, never from an actor.

    >>> system = JobSystem(Settings.from_env()).start()
    >>> sub = system.submit(JobKind.QA, {"question": "What is it?", "company_name": "acme"})
    >>> system.get(sub.job.id).state
    >>> system.snapshot()
    >>> system.stop()
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import pykka

from actors.dispatch.backend import QueueBackend
from actors.dispatch.dispatcher import Dispatcher
from actors.dispatch.fairness import FairShare
from actors.dispatch.local_queue import LocalQueue
from actors.dispatch.outbox import RegistryOutbox
from actors.dispatch.scheduling import MAX_PRIORITY, MIN_PRIORITY
from actors.model.errors import (
    JobNotFound,
    JobStateConflict,
    JobSystemUnavailable,
    QueueError,
    ResultStoreUnavailable,
    SettingsError,
    ShuttingDown,
)
from actors.model.idempotency import IdempotencyKey
from actors.model.jobs import FINISHED_STATES, Job, JobKind, JobState, Replayed, freeze, new_job_id
from actors.model.messages import (
    AddJob,
    AttachDispatcher,
    AttachWatchdog,
    CancelJob,
    CheckMemory,
    CountCompanies,
    Drain,
    EstimateWait,
    GetJob,
    Inspect,
    ListJobs,
    Pause,
    Ping,
    QueuePosition,
    RequeueFailed,
    Resume,
    StopWorkers,
    SubmitTicket,
)
from actors.model.settings import Settings
from actors.results.supabase import Company, ResultSink
from actors.results.writer import ResultWriter, WriterStats
from actors.runtime.metrics import JobMetrics
from actors.runtime.redact import redact_text, redact_url
from actors.runtime.snapshot import assemble_snapshot
from actors.runtime.timers import Clock, TimerService
from actors.runtime.tracked import mailbox_depth
from actors.stores import open_store
from actors.stores.base import JobStore, StateCounts
from actors.stores.registry import JobRegistry
from actors.work.python_api import PythonApiClient
from actors.work.watchdog import MemoryReading, MemoryWatchdog, process_rss_mb

logger = logging.getLogger(__name__)

STORE_WRITE_WAIT_S = 15.0
"""How long a submitter waits, past its ask timeout, for a write the registry has begun."""
UNKNOWN_PLACE = (-1, -1.0)
"""The place of a job that was stored while its submitter stopped waiting for the answer."""
WAIT_POLL_S = 0.05
"""How often ``JobSystem.wait`` looks at the job."""


@dataclass(frozen=True, slots=True)
class Submission:
    """An accepted job and where it stands in its queue.

    ``queue_position`` is 1-based among the waiting jobs of its kind, in the real
    dispatch order; 0 means a worker already has the job.
    """

    job: Job
    queue_position: int
    estimated_wait_s: float
    replayed: bool = False
    """True when the submission's Idempotency-Key named this job already: nothing new made."""


class JobSystem:
    """Starts the actors, and is the one way in: submit, get, cancel, pause, snapshot, stop."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: JobStore | None = None,
        clock: Clock | None = None,
        rss_reader: Callable[[], float] = process_rss_mb,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._given_store = store
        self.store: JobStore | None = None
        self.clock = clock or Clock()
        self._rss_reader = rss_reader
        self._rng = rng
        problems = settings.supabase_problems()
        if problems:
            raise SettingsError(problems)
        self._lock = threading.Lock()
        self._state = "new"  # new -> running -> draining -> stopped
        self.sink: ResultSink | None = None  # results go to Supabase when set (on start)
        self._writer: pykka.ActorRef[Any] | None = None
        self._writer_stats = WriterStats()  # read by snapshot(): the writer may be mid-write
        self.timers = TimerService()
        # One shared client (one connection pool) per Python API instance, keyed by its
        # shown address: the credentials stay inside the client (actors.runtime.redact).
        clients = [
            PythonApiClient(
                url,
                timers=self.timers,
                connect_timeout_s=settings.python_api_connect_timeout_s,
                pool_size=settings.max_concurrent_videos + settings.max_concurrent_qa + 2,
            )
            for url in settings.python_api_urls
        ]
        self.clients = {client.address: client for client in clients}
        if len(self.clients) != len(clients):
            raise SettingsError(["PYTHON_API_BASE_URL lists an address twice (the same "
                                 "address with other credentials)"])
        self.client = next(iter(self.clients.values()))  # the first (or only) instance
        self._registry: pykka.ActorRef[Any] | None = None
        self._dispatcher: pykka.ActorRef[Any] | None = None
        self._watchdog: pykka.ActorRef[Any] | None = None
        self._threads: list[threading.Thread] = []
        self.metrics = JobMetrics()
        self._idle = threading.Event()
        self._stopping = False

    def __repr__(self) -> str:
        return f"<JobSystem {self._state} python_api={','.join(self.clients)}>"

    # --- life ----------------------------------------------------------------------

    def start(self) -> JobSystem:
        """Start the timer thread and the actors.

        JobRegistry, Dispatcher, MemoryWatchdog, and the ResultWriter when results go to
        Supabase.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"a JobSystem starts once; this one is {self._state}")
            self.store = (self._given_store if self._given_store is not None
                          else open_store(self.settings))
            if self.settings.supabase_enabled:  # before any actor: nothing to undo if it fails
                self.sink = ResultSink(self.settings)
            self.timers.start()
            self._registry = JobRegistry.start(
                self.settings, store=self.store, timers=self.timers, clock=self.clock,
                metrics=self.metrics, threads=self._threads,
            )
            # The Dispatcher's moves (its own and its local queue's) go out once per step.
            outbox = RegistryOutbox(self._registry)
            if self.sink is not None:
                self._writer = ResultWriter.start(
                    self.settings, sink=self.sink, registry=self._registry, timers=self.timers,
                    clock=self.clock, rng=self._rng, stats=self._writer_stats,
                    threads=self._threads,
                )
            self._dispatcher = Dispatcher.start(
                self.settings, queue=self._queue_backend(outbox), registry=outbox,
                clients=self.clients, timers=self.timers, clock=self.clock, rng=self._rng,
                metrics=self.metrics, threads=self._threads, writer=self._writer,
                resolver=self.sink,
            )
            self._registry.tell(AttachDispatcher(dispatcher=self._dispatcher))
            self._watchdog = MemoryWatchdog.start(
                self.settings, clients=self.clients, dispatcher=self._dispatcher,
                registry=self._registry, timers=self.timers, clock=self.clock,
                rss_reader=self._rss_reader, threads=self._threads,
            )
            self._dispatcher.tell(AttachWatchdog(watchdog=self._watchdog))
            self._state = "running"
        # Answered after on_start: when start() returns, every worker pool is up.
        self._ask(self._dispatcher, Inspect())
        logger.info("job system started (Python API %s)", ", ".join(self.clients))
        logger.info("results: %s", f"stored in Supabase at {redact_url(self.sink.url)}"
                    if self.sink
                    else "in the job store only (SUPABASE_URL unset)")
        return self

    def begin_drain(self) -> None:
        """Refuse new jobs from now on and stop dispatching; never blocks.

        Safe to call from a signal handler's thread: ``stop`` later waits for the
        running jobs. Called by gunicorn's SIGTERM handling (gunicorn.conf.py).
        """
        with self._lock:
            if self._state != "running":
                return
            self._state = "draining"
        logger.info("draining: new jobs are refused, running jobs may finish")
        try:
            self._refs()[0].tell(Drain(idle=self._idle))
        except pykka.ActorDeadError:
            self._idle.set()

    def stop(self, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop: refuse new jobs, let running ones finish (``drain``) within a deadline, stop.

        Actors stop in reverse start order; calls still running at the deadline
        are cut (their jobs stay retryable in a durable store). No thread is
        left behind.
        """
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
            if self._state == "stopped" or self._stopping:
                return
            self._stopping = True
        self.begin_drain()
        deadline_s = self.settings.drain_timeout_s if timeout_s is None else timeout_s
        until = time.monotonic() + deadline_s
        dispatcher, registry, watchdog = self._refs()
        if drain and not self._idle.wait(deadline_s):
            logger.warning("drain deadline (%.1fs) passed with jobs still running; cutting them",
                           deadline_s)
        if drain:
            self._drain_writer(until)
        for client in self.clients.values():
            client.shutdown()
        watchdog.stop(block=True, timeout=self.settings.ask_timeout_s)
        try:
            dispatcher.ask(StopWorkers(timeout_s=self.settings.ask_timeout_s),
                           timeout=self.settings.ask_timeout_s * 2)
        except (pykka.Timeout, pykka.ActorDeadError):
            logger.error("workers did not stop in time")
        writer = [self._writer] if self._writer is not None else []
        for ref in (*writer, dispatcher, registry):
            ref.stop(block=True, timeout=self.settings.ask_timeout_s)
        self.timers.stop()
        if self.sink is not None:
            self.sink.close()
        for client in self.clients.values():
            client.close()
        for thread in self._threads:
            thread.join(self.settings.ask_timeout_s)
        left = [t.name for t in self._threads if t.is_alive()]
        if left:
            logger.error("threads still alive after stop: %s", left)
        with self._lock:
            self._state = "stopped"
        logger.info("job system stopped")

    @property
    def accepting(self) -> bool:
        """Whether new jobs are accepted (not draining, not stopped)."""
        return self._state == "running"

    @property
    def draining(self) -> bool:
        """Whether a stop is in progress."""
        return self._state == "draining"

    @property
    def alive(self) -> bool:
        """Whether every core actor is alive."""
        refs = (self._registry, self._dispatcher, self._watchdog)
        writer_alive = self._writer is None or self._writer.is_alive()
        return (self._state == "running" and writer_alive
                and all(r is not None and r.is_alive() for r in refs))

    def responsive(self, timeout_s: float = 3.0) -> bool:
        """Whether the core actors are alive and each answers a ping within ``timeout_s``.

        What liveness means: threads that exist but never answer (a deadlock, a call
        stuck for good) are as dead as threads that are gone. True while draining.
        """
        refs = (self._registry, self._dispatcher, self._watchdog)
        if self._state == "stopped" or any(r is None or not r.is_alive() for r in refs):
            return False
        try:
            futures = [r.ask(Ping(), block=False) for r in refs if r is not None]
            return all(f.get(timeout=timeout_s) is True for f in futures)
        except (pykka.ActorDeadError, pykka.Timeout):
            return False

    @property
    def supabase_configured(self) -> bool:
        """Whether results are stored in Supabase (``SUPABASE_URL`` and its key are set)."""
        return self.settings.supabase_enabled

    def _drain_writer(self, until: float) -> None:
        """Wait (until ``until``, monotonic) for results still being stored in Supabase."""
        if self._writer is None:
            return
        stored = threading.Event()
        try:
            self._writer.tell(Drain(idle=stored))
        except pykka.ActorDeadError:
            return
        if not stored.wait(max(0.0, until - time.monotonic())):
            logger.warning("drain deadline passed with results not yet stored in Supabase; "
                           "their jobs run again after a restart")

    # --- jobs ----------------------------------------------------------------------

    def submit(
        self,
        kind: JobKind,
        data: Mapping[str, Any],
        *,
        owner: str | None = None,
        priority: int | None = None,
        dedupe_key: str | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> Submission:
        """Accept a job; when this returns, the job is stored and queued.

        With ``idempotency``, a key its caller used before (within
        ``idempotency_retention_s``) for the same request makes no job: the submission
        answers that key's job, ``replayed``.

        Raises:
            QueueFull, MemoryPressure, ShuttingDown, DuplicateJob: the job was refused.
            IdempotencyKeyReused: the key was used with another request.
            ValueError: the priority is outside 1..3.
        """
        kind = JobKind(kind)
        if priority is None:
            priority = self.settings.limits(kind).default_priority
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValueError(f"priority must be {MIN_PRIORITY}..{MAX_PRIORITY}, not {priority}")
        if not self.accepting:
            raise ShuttingDown()
        job = Job(
            id=new_job_id(), kind=kind, priority=priority, data=freeze(dict(data)), owner=owner,
            max_attempts=self.settings.retry_attempts, created_at=self.clock.time(),
            dedupe_key=dedupe_key,
        )
        if idempotency is not None:
            job = job.replace(idempotency=dataclasses.replace(
                idempotency, expires_at=job.created_at + self.settings.idempotency_retention_s))
        # One round trip: the registry stores it, the Dispatcher answers where it stands.
        reply: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        ticket = SubmitTicket()
        try:
            self._refs()[1].tell(AddJob(job=job, reply=reply, ticket=ticket))
            answer = reply.get(timeout=self.settings.ask_timeout_s)
        except pykka.ActorDeadError as exc:
            raise ShuttingDown() from exc
        except pykka.Timeout as exc:
            if ticket.give_up():
                raise JobSystemUnavailable() from exc  # nothing stored, nothing will be
            answer = self._late_answer(job, reply, ticket)
        if isinstance(answer, QueueError):
            raise answer
        if isinstance(answer, Replayed):
            return dataclasses.replace(self._submission(answer.job), replayed=True)
        stored, where = answer
        if isinstance(where, Future):  # the shared queue reads the place on its own thread
            try:
                where = where.result(timeout=self.settings.ask_timeout_s)
            except (FutureTimeout, CancelledError):
                where = UNKNOWN_PLACE  # accepted all the same: the job is stored
        return _submission(stored, where)

    def _late_answer(self, job: Job, reply: pykka.ThreadingFuture[Any],
                     ticket: SubmitTicket) -> Any:
        """The answer of a submission the registry began storing before we gave up on it.

        The store's own timeouts bound the write; once the job is stored it is
        accepted, its place unknown (``None``) if the Dispatcher is slow to say.
        """
        for _ in range(2):
            try:
                return reply.get(timeout=STORE_WRITE_WAIT_S)
            except pykka.Timeout:
                if ticket.stored.is_set():
                    break
        if not ticket.stored.is_set():
            raise JobSystemUnavailable()  # the write is stuck past every bound: not accepted
        logger.warning("job %s: stored, but its place in the queue is not known yet", job.id)
        return job.replace(state=JobState.QUEUED), UNKNOWN_PLACE

    def _submission(self, job: Job) -> Submission:
        return _submission(job, self._ask(self._refs()[0], QueuePosition(job_id=job.id)))

    def get(self, job_id: str) -> Job:
        """Return a job. Raises ``JobNotFound``."""
        job = self._ask(self._refs()[1], GetJob(job_id=job_id))
        if job is None:
            raise JobNotFound()
        return job  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout_s: float = 60.0) -> Job:
        """Return the job once it is finished (completed, failed or cancelled).

        For REPLs and scripts: it asks the registry every ``WAIT_POLL_S`` from the
        calling thread (never an actor's). Raises ``TimeoutError`` if the job is still
        unfinished after ``timeout_s``, ``JobNotFound`` for an unknown id.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if job.state in FINISHED_STATES:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.state.value} after "
                                   f"{timeout_s:g} s")
            time.sleep(WAIT_POLL_S)

    def list_jobs(
        self,
        *,
        kind: JobKind | None = None,
        state: JobState | None = None,
        owner: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Return jobs matching the filters, newest first."""
        message = ListJobs(kind=kind, state=state, owner=owner, limit=limit)
        return self._ask(self._refs()[1], message)  # type: ignore[no-any-return]

    def company_counts(self, companies: Iterable[str]) -> StateCounts:
        """Return how many jobs ``companies`` (names, any case) have per (kind, state)."""
        names = tuple(sorted({name.casefold() for name in companies}))
        if not names:
            return Counter()
        return self._ask(self._refs()[1], CountCompanies(companies=names))  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> Job:
        """Withdraw a queued or retrying job. Raises ``JobNotFound``, ``JobStateConflict``."""
        job = self.get(job_id)
        if job.state not in (JobState.QUEUED, JobState.RETRYING) or not self._ask(
            self._refs()[0], CancelJob(job_id=job_id)
        ):
            state = self.get(job_id).state.value
            raise JobStateConflict(f"only queued or retrying jobs can be cancelled; this one is"
                                   f" {state}")
        return self.get(job_id)

    def retry(self, job_id: str) -> Submission:
        """Queue a failed job again with a fresh attempt budget."""
        if not self.accepting:
            raise ShuttingDown()
        job = self._ask(self._refs()[1], RequeueFailed(job_id=job_id))
        return self._submission(job)

    def queue_position(self, job_id: str) -> int | None:
        """Return a waiting job's 1-based place in its kind's dispatch order."""
        where = self._ask(self._refs()[0], QueuePosition(job_id=job_id))
        return None if where is None else int(where[0])

    def estimate_wait_s(self, kind: JobKind, position: int) -> float:
        """Estimate the wait for ``position`` in ``kind``'s queue from observed durations."""
        return float(self._ask(self._refs()[0], EstimateWait(kind=kind, position=position)))

    def resolve_company(self, *, company_id: str | None = None,
                        company_name: str | None = None) -> Company:
        """Look a company up in Supabase by id (preferred) or exact name.

        Raises:
            UnknownCompany: no such company.
            ResultStoreUnavailable: Supabase is not configured, failed, or did not answer.
        """
        if self.sink is None:
            raise ResultStoreUnavailable("Supabase is not configured (SUPABASE_URL)")
        return self.sink.resolve_company(company_id=company_id, company_name=company_name)

    def user_companies(self, user_id: str) -> list[Company]:
        """Return the companies ``user_id`` owns or is a member of, from Supabase.

        Raises:
            ResultStoreUnavailable: Supabase is not configured, failed, or did not answer.
        """
        if self.sink is None:
            raise ResultStoreUnavailable("Supabase is not configured (SUPABASE_URL)")
        return self.sink.memberships(user_id)

    # --- control -------------------------------------------------------------------

    def pause(self, kind: JobKind, reason: str = "operator") -> None:
        """Stop dispatching ``kind`` (running jobs go on)."""
        self._ask(self._refs()[0], Pause(kind=JobKind(kind), reason=reason))

    def resume(self, kind: JobKind, reason: str = "operator") -> None:
        """Lift the ``reason`` pause of ``kind``."""
        self._ask(self._refs()[0], Resume(kind=JobKind(kind), reason=reason))

    def check_memory(self) -> MemoryReading:
        """Take a memory reading now (the watchdog also does on its timer)."""
        return self._ask(self._refs()[2], CheckMemory())  # type: ignore[no-any-return]

    # --- inspection ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Return the whole system's state as plain data (for REPLs, health and metrics)."""
        dispatcher, registry, watchdog = self._refs()
        named = [("JobRegistry", registry), ("Dispatcher", dispatcher),
                 ("MemoryWatchdog", watchdog)]
        if self._writer is not None:
            named.append(("ResultWriter", self._writer))
        return assemble_snapshot(
            self.settings,
            state=self._state,
            dispatch=self._ask(dispatcher, Inspect()),
            records=self._ask(registry, Inspect()),
            memory=self._ask(watchdog, Inspect()),
            actors=[{"name": name, "alive": ref.is_alive(), "mailbox": mailbox_depth(ref)}
                    for name, ref in named],
            supabase=self._supabase_snapshot(),
            timers_pending=self.timers.pending,
        )

    def _supabase_snapshot(self) -> dict[str, Any]:
        if self.sink is None or self._writer is None:
            return {"configured": False, "reachable": None}
        health = self.sink.health()
        error = (redact_text(health.error, (self.settings.supabase_service_role_key,))
                 if health.error else health.error)
        return {"configured": True, "reachable": health.reachable, "error": error,
                "checked_at": health.checked_at, "url": redact_url(self.sink.url),
                **self._writer_stats.describe()}

    # --- plumbing ------------------------------------------------------------------

    def _refs(self) -> tuple[pykka.ActorRef[Any], pykka.ActorRef[Any], pykka.ActorRef[Any]]:
        if self._dispatcher is None or self._registry is None or self._watchdog is None:
            raise ShuttingDown("the job system is not started")
        return self._dispatcher, self._registry, self._watchdog

    def _queue_backend(self, outbox: RegistryOutbox) -> QueueBackend:
        """Where waiting jobs wait: this process's memory, or the shared PostgreSQL queue.

        The shared one's module imports psycopg, so it is imported only then.
        """
        assert self.store is not None and self._registry is not None
        if not self.store.shared:
            return LocalQueue(aging_s=self.settings.aging_s,
                              share=FairShare.of(self.settings.company_weights),
                              clock=self.clock, registry=outbox, metrics=self.metrics)
        from actors.dispatch.shared_queue import ClaimingQueue
        from actors.stores.postgres.store import PostgresJobStore

        assert isinstance(self.store, PostgresJobStore)
        return ClaimingQueue(self.settings, store=self.store, clock=self.clock,
                           timers=self.timers, metrics=self.metrics)

    def _ask(self, ref: pykka.ActorRef[Any], message: Any) -> Any:
        """Ask an actor; an answer that needs I/O comes as a future, waited on here."""
        try:
            answer = ref.ask(message, timeout=self.settings.ask_timeout_s)
            if isinstance(answer, Future):  # the shared queue's reads: on its own thread
                answer = answer.result(timeout=self.settings.ask_timeout_s)
        except pykka.ActorDeadError as exc:
            raise ShuttingDown() from exc
        except (pykka.Timeout, FutureTimeout, CancelledError) as exc:
            raise JobSystemUnavailable() from exc
        if isinstance(answer, QueueError):
            raise answer
        return answer


def _submission(job: Job, where: tuple[int, float] | None) -> Submission:
    """Return the submission of ``job``; no place (``None``) means a worker has it already."""
    if where is None:
        return Submission(job, 0, 0.0)
    position, wait_s = where
    return Submission(job, position, wait_s)
