"""Worker actors: each runs one attempt at a time against the Python API.

A job's own failure is data: anything an attempt raises becomes a
``JobFailed`` message. Only a ``BaseException`` (or a bug outside the attempt)
kills a worker; it then tells the Dispatcher ``WorkerCrashed`` so its pool
can replace it and the job can be retried. A ``BaseException`` must never
escape a pykka actor: pykka answers that by stopping every actor in the process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar

import pykka

from actors.dispatch.attempts import AttemptCall
from actors.model.errors import (
    CallFailed,
    CompanyLookupFailed,
    PermanentCallFailure,
    ResultStoreUnavailable,
    UnknownCompany,
)
from actors.model.jobs import JobKind, freeze
from actors.model.messages import JobFailed, JobSucceeded, RunJob, WorkerCrashed
from actors.results.supabase import CompanyResolver
from actors.runtime.tracked import TrackedActor
from actors.work.python_api import PythonApiClient

logger = logging.getLogger(__name__)


class Worker(TrackedActor):
    """Base worker: runs ``RunJob`` attempts and reports the outcome to the Dispatcher."""

    kind: ClassVar[JobKind]

    def __init__(
        self,
        worker_id: str,
        dispatcher: pykka.ActorRef[Any],
        clients: Mapping[str, PythonApiClient],
        *,
        threads: list[threading.Thread] | None = None,
        resolver: CompanyResolver | None = None,
    ) -> None:
        super().__init__(threads=threads)
        self.worker_id = worker_id
        self.dispatcher = dispatcher
        self.clients = clients  # one shared client per Python API instance, by address
        self.resolver = resolver  # set when results go to Supabase (video jobs need a company)
        self.current_job_id: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.worker_id} job={self.current_job_id}>"

    def call(
        self, client: PythonApiClient, data: Mapping[str, Any], call: AttemptCall
    ) -> dict[str, Any]:
        """Make the Python API call for one attempt; subclasses say which."""
        raise NotImplementedError

    def on_receive(self, message: Any) -> Any:
        """Handle ``RunJob``."""
        match message:
            case RunJob():
                self._run(message)
                return None
            case _:
                return super().on_receive(message)

    def _run(self, message: RunJob) -> None:
        self.current_job_id = message.job_id
        started = time.monotonic()
        outcome: JobSucceeded | JobFailed
        try:
            result = self.call(self.clients[message.instance], message.data, message.call)
            outcome = JobSucceeded(
                job_id=message.job_id,
                worker_id=self.worker_id,
                result=freeze(result),
                duration_s=time.monotonic() - started,
                instance=message.instance,
            )
        except CallFailed as exc:
            outcome = self._failed(message, started, type(exc).__name__, exc.message,
                                   exc.retryable, getattr(exc, "retry_after_s", None),
                                   broke=exc.breaks_instance, status=exc.status,
                                   reached_api=getattr(exc, "reached_api", True)
                                   and not isinstance(exc, CompanyLookupFailed))
        except Exception as exc:  # a bug in handling one answer: retry, within the budget
            logger.exception("job %s: unexpected error in %s", message.job_id, self.worker_id)
            outcome = self._failed(message, started, type(exc).__name__, str(exc) or repr(exc),
                                   True, None)
        except BaseException as exc:
            # The worker is now suspect: report, stop, and let the pool replace it.
            logger.error("job %s: %s killed by %r", message.job_id, self.worker_id, exc)
            self._tell_dispatcher(
                WorkerCrashed(worker_id=self.worker_id, job_id=message.job_id, error=repr(exc))
            )
            self.current_job_id = None
            self.stop()
            return
        self.current_job_id = None
        self._tell_dispatcher(outcome)

    def _failed(
        self,
        message: RunJob,
        started: float,
        error_type: str,
        error: str,
        retryable: bool,
        retry_after_s: float | None,
        *,
        broke: bool = False,
        status: int | None = None,
        reached_api: bool = True,
    ) -> JobFailed:
        # The Dispatcher logs the decision (retry or fail); this is the detail.
        logger.debug("job %s attempt %d failed in %s: %s", message.job_id, message.attempt,
                    self.worker_id, error)
        return JobFailed(
            job_id=message.job_id,
            worker_id=self.worker_id,
            error_type=error_type,
            error=error,
            retryable=retryable,
            retry_after_s=retry_after_s,
            duration_s=time.monotonic() - started,
            instance=message.instance,
            broke=broke,
            status=status,
            reached_api=reached_api,
        )

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Tell the Dispatcher this worker died, so its job is retried and it is replaced."""
        self._tell_dispatcher(
            WorkerCrashed(
                worker_id=self.worker_id, job_id=self.current_job_id, error=repr(exception_value)
            )
        )

    def _tell_dispatcher(self, message: Any) -> None:
        try:
            self.dispatcher.tell(message)
        except pykka.ActorDeadError:
            logger.warning("%s: dispatcher gone, dropped %s", self.worker_id,
                           type(message).__name__)


class VideoWorker(Worker):
    """Processes videos through ``POST /process-video/{company}``."""

    kind = JobKind.VIDEO

    def call(
        self, client: PythonApiClient, data: Mapping[str, Any], call: AttemptCall
    ) -> dict[str, Any]:
        """Process one video; with a resolver, find its company first (no company, no call).

        The lookup counts against the attempt's deadline: a lookup still running
        then ends the attempt (the Dispatcher seals it), and the call it would
        have made is never sent. The resolved ``company_id`` goes into the
        result, for the rows the ResultWriter writes.
        """
        if self.resolver is None:
            return client.process_video(data, call=call)
        try:
            company = self.resolver.resolve_company(company_id=data.get("company_id"),
                                                    company_name=data.get("company_name"))
        except UnknownCompany as exc:
            raise PermanentCallFailure(exc.message) from exc
        except ResultStoreUnavailable as exc:
            raise CompanyLookupFailed(f"company lookup failed: {exc.message}") from exc
        data = {**data, "company_name": data.get("company_name") or company.name}
        return {**client.process_video(data, call=call), "company_id": company.id}


class QAWorker(Worker):
    """Answers questions through ``POST /ask-question``."""

    kind = JobKind.QA

    def call(
        self, client: PythonApiClient, data: Mapping[str, Any], call: AttemptCall
    ) -> dict[str, Any]:
        """Answer one question."""
        return client.ask_question(data, call=call)


WORKER_CLASSES: Mapping[JobKind, type[Worker]] = {
    JobKind.VIDEO: VideoWorker,
    JobKind.QA: QAWorker,
}
"""Which worker runs which kind; a new kind adds a subclass and a line here."""
