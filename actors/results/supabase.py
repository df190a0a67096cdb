"""The result sink: one supabase-py client that stores results and looks companies up.

One client is created per job system (``create_client`` once, over one pooled
``httpx.Client``) and shared by every thread that needs it: the ResultWriter
(writes), the VideoWorkers (company lookups before a video is processed), the
web layer (a ``companyId`` resolved to a name) and the health probe.

What goes over the wire is PostgREST's format (``/rest/v1/<table>``):

* a write is ``POST /rest/v1/<table>?on_conflict=id`` with
  ``Prefer: return=minimal,resolution=merge-duplicates``: an upsert on the primary
  key, so writing the same row twice leaves one row;
* a lookup is ``GET /rest/v1/companies?select=id,name&name=eq.<name>&limit=2``;
* a user's companies are ``GET /rest/v1/companies?select=id,name&user_id=eq.<user>`` and
  ``GET /rest/v1/user_companies?select=company_id&user_id=eq.<user>`` (then those ids'
  names, ``id=in.(...)``);
* every request carries ``apikey`` and ``Authorization: Bearer <service role key>``.

The library's own retries are off (``postgrest_client_retry=False``): they sleep in
the calling thread, and an actor never sleeps; the ResultWriter retries on a timer.
Every failure becomes a ``ResultStoreFailed`` that says whether a retry may pass.

Every call has an overall deadline (``actors.runtime.http_deadline``), not only httpx's
per-phase timeouts, which an answer trickling in never reaches: a write (all of a
job's rows) and a company lookup get ``SUPABASE_TIMEOUT_MS`` in all, a health probe
``HEALTH_TIMEOUT_S``. A write cut after its request was sent may still be applied by
Supabase: its rows are upserts keyed by the job, byte for byte the same on the next
try (``actors.results.rows``), so it lands twice at worst and one job never leaves two.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from actors.model.errors import ResultStoreFailed, ResultStoreUnavailable, UnknownCompany
from actors.model.jobs import Job
from actors.model.settings import Settings
from actors.results.rows import ResultTables, result_rows
from actors.runtime.redact import redact_url

if TYPE_CHECKING:
    import httpx
    from supabase import Client

    from actors.runtime.http_deadline import Deadline

logger = logging.getLogger(__name__)

T = TypeVar("T")

HEALTH_TIMEOUT_S = 2.0
"""A health probe waits at most this long (capped by SUPABASE_TIMEOUT_MS)."""
HEALTH_MAX_AGE_S = 5.0
"""A probe's answer is reused this long, so health checks do not hammer Supabase."""
MAX_MEMBERSHIPS = 500
"""At most this many companies are read for one user (a bound on one lookup's size)."""
MISSING_RELATION_CODES = frozenset({"42P01", "42703", "PGRST200", "PGRST204", "PGRST205"})
"""Errors saying a table or column does not exist (undefined table, column, schema cache)."""
PERMANENT_SQLSTATE_CLASSES = frozenset({"22", "23", "28", "42", "P0"})
"""Postgres error classes a repeat will hit again: bad data, constraints, auth, schema."""


@dataclass(frozen=True, slots=True)
class Company:
    """A row of the companies table."""

    id: str
    name: str


class CompanyResolver(Protocol):
    """Finds the company a video job belongs to (the ``ResultSink`` is one)."""

    def resolve_company(self, *, company_id: str | None = None,
                        company_name: str | None = None) -> Company:
        """Return the company by id (preferred) or by exact name.

        Raises:
            UnknownCompany: no such company (a repeat will not find it either).
            ResultStoreUnavailable: Supabase failed; a later try may pass.
        """
        ...  # pragma: no cover


@dataclass(frozen=True, slots=True)
class SinkHealth:
    """One health reading of Supabase."""

    reachable: bool
    checked_at: float
    error: str | None = None


def classify(exc: Exception, what: str) -> ResultStoreFailed:
    """Turn what a supabase-py call raised into a ``ResultStoreFailed`` (retryable or not).

    Timeouts, connection errors, 5xx, 408 and 429 may pass later. PostgREST's own
    request and schema errors (``PGRST1xx``..``PGRST3xx``), other 4xx, and Postgres
    errors of the classes in ``PERMANENT_SQLSTATE_CLASSES`` will repeat.
    """
    import httpx
    from postgrest import APIError

    if isinstance(exc, httpx.TimeoutException):
        return ResultStoreFailed(f"{what}: timed out", retryable=True)
    if isinstance(exc, httpx.HTTPError):
        return ResultStoreFailed(f"{what}: unreachable ({type(exc).__name__})", retryable=True)
    if not isinstance(exc, APIError):
        return ResultStoreFailed(f"{what}: {type(exc).__name__}: {exc}", retryable=True)
    code = str(exc.code) if exc.code is not None else None
    detail = exc.message or (str(exc.details)[:200] if exc.details else "no detail")
    message = f"{what}: {detail}" + (f" (code {code})" if code else "")
    return ResultStoreFailed(message, retryable=_retryable_code(code), code=code)


def _retryable_code(code: str | None) -> bool:
    if code is None:
        return True
    if code.isdigit() and len(code) == 3:  # an HTTP status: the body was not PostgREST's
        status = int(code)
        return status >= 500 or status in (408, 429) or status < 400
    if code.startswith("PGRST"):
        return code[5:6] == "0"  # PGRST0xx: the database is unreachable or busy
    return code[:2] not in PERMANENT_SQLSTATE_CLASSES


class ResultSink:
    """Stores results in Supabase and looks companies up; safe to share between threads."""

    def __init__(self, settings: Settings, *, client: Client | None = None) -> None:
        if not settings.supabase_enabled:
            raise ValueError("ResultSink needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")
        assert settings.supabase_url is not None
        assert settings.supabase_service_role_key is not None
        self.url = settings.supabase_url.rstrip("/")
        self.tables = ResultTables(videos=settings.supabase_table_videos,
                                   qudemos=settings.supabase_table_qudemos,
                                   questions=settings.supabase_table_questions)
        self.companies_table = settings.supabase_table_companies
        self.memberships_table = settings.supabase_table_user_companies
        self.timeout_s = settings.supabase_timeout_s
        # Imported here, like supabase-py below: httpx costs 4 MB of RSS that a job
        # system without Supabase never uses.
        import httpx

        from actors.runtime import http_deadline
        self._http = http_deadline.client(settings.supabase_timeout_s,
                                          httpx.Limits(max_connections=32,
                                                       max_keepalive_connections=8))
        self._writes: set[Deadline] = set()  # in flight, so that a stop can cut them
        self._writes_lock = threading.Lock()
        self._client = client or _create_client(self.url, settings.supabase_service_role_key,
                                                self._http)
        self._client.postgrest  # noqa: B018 - created now, not lazily in two threads at once
        self._auth_headers = {"apikey": settings.supabase_service_role_key,
                              "Authorization": f"Bearer {settings.supabase_service_role_key}"}
        self._health_lock = threading.Lock()
        self._health: SinkHealth | None = None

    def __repr__(self) -> str:
        return f"<ResultSink {redact_url(self.url)} tables={self.tables}>"

    # --- results -------------------------------------------------------------------

    def store(self, job: Job, result: Mapping[str, Any], at: float) -> int:
        """Upsert a job's rows (see ``actors.results.rows``); return how many were written.

        Raises:
            ResultStoreFailed: a write failed; rows written before it stay (they are
                upserted again, unchanged, by the next try).
        """
        from postgrest.types import ReturnMethod

        rows = result_rows(job, result, at, self.tables)
        with self._bounded(self.timeout_s, "write") as deadline:
            with self._writes_lock:
                self._writes.add(deadline)
            try:
                for table, row in rows:
                    upsert = self._client.table(table).upsert(row, on_conflict="id",
                                                              returning=ReturnMethod.minimal)
                    self._call(f"upsert into {table}", upsert.execute)
            finally:
                with self._writes_lock:
                    self._writes.discard(deadline)
        return len(rows)

    def cut_writes(self, reason: str = "shutting down") -> int:
        """End every write in flight at once (it fails, retryable); return how many."""
        with self._writes_lock:
            writes = list(self._writes)
        for deadline in writes:
            deadline.cut(reason)
        return len(writes)

    # --- companies -----------------------------------------------------------------

    def resolve_company(self, *, company_id: str | None = None,
                        company_name: str | None = None) -> Company:
        """Return the company by id (when given) or by exact name.

        Raises:
            UnknownCompany: no such company, or the name is ambiguous.
            ResultStoreUnavailable: Supabase failed; a later try may pass.
        """
        if company_id:
            rows = self._companies("id", company_id)
            if not rows:
                raise UnknownCompany(f"unknown company id {company_id!r}")
        elif company_name:
            rows = self._companies("name", company_name)
            if not rows:
                raise UnknownCompany(f"unknown company {company_name!r}")
            if len(rows) > 1:
                raise UnknownCompany(f"company name {company_name!r} is ambiguous "
                                     f"({len(rows)} companies); send its company_id")
        else:
            raise UnknownCompany("no company_id or company_name given")
        row = rows[0]
        return Company(id=str(row.get("id")), name=str(row.get("name") or company_name or ""))

    def _companies(self, column: str, value: str) -> list[Mapping[str, Any]]:
        what = f"company lookup by {column}"

        def select() -> list[Mapping[str, Any]]:
            query = self._client.table(self.companies_table).select("id", "name")
            answer = query.eq(column, value).limit(2).execute()
            return [row for row in answer.data if isinstance(row, Mapping)]

        try:
            with self._bounded(self.timeout_s, what):
                return self._call(what, select)
        except ResultStoreFailed as exc:
            if exc.code is not None and exc.code.startswith("22"):
                # Not a valid value for the column (a non-uuid id): no such company.
                raise UnknownCompany(f"unknown company {column} {value!r}") from exc
            raise ResultStoreUnavailable(exc.message) from exc

    def memberships(self, user_id: str) -> list[Company]:
        """Return the companies ``user_id`` belongs to: those it owns, and its memberships.

        Read from ``companies.user_id`` (the company's owner) and the membership table
        (``user_companies``: ``user_id``, ``company_id``). A deployment without one of
        them (no such column or table) simply has no members that way.

        Raises:
            ResultStoreUnavailable: Supabase failed or did not answer; a later try may pass.
        """
        found: dict[str, Company] = {}
        for row in self._select(self.companies_table, "user_id", user_id, ("id", "name")):
            found[str(row.get("id"))] = Company(id=str(row.get("id")), name=str(row.get("name")))
        linked = [str(row.get("company_id")) for row in
                  self._select(self.memberships_table, "user_id", user_id, ("company_id",))
                  if row.get("company_id") is not None and str(row.get("company_id")) not in found]
        if linked:
            for row in self._select(self.companies_table, "id", linked, ("id", "name")):
                found[str(row.get("id"))] = Company(id=str(row.get("id")),
                                                    name=str(row.get("name")))
        return sorted(found.values(), key=lambda company: company.name)

    def _select(self, table: str, column: str, value: str | list[str],
                columns: tuple[str, ...]) -> list[Mapping[str, Any]]:
        what = f"membership lookup in {table}"

        def select() -> list[Mapping[str, Any]]:
            query = self._client.table(table).select(*columns)
            query = query.in_(column, value) if isinstance(value, list) else query.eq(column,
                                                                                     value)
            answer = query.limit(MAX_MEMBERSHIPS).execute()
            return [row for row in answer.data if isinstance(row, Mapping)]

        try:
            with self._bounded(self.timeout_s, what):
                return self._call(what, select)
        except ResultStoreFailed as exc:
            if exc.code in MISSING_RELATION_CODES:
                # This deployment has no such table or column: no memberships from it.
                logger.debug("%s: %s", what, exc.message)
                return []
            if exc.code is not None and exc.code.startswith("22"):
                return []  # not a valid value for the column (a non-uuid user id): none
            raise ResultStoreUnavailable(exc.message) from exc

    # --- health --------------------------------------------------------------------

    def health(self, *, max_age_s: float = HEALTH_MAX_AGE_S) -> SinkHealth:
        """Return whether Supabase answers, probing at most once per ``max_age_s``.

        The probe is ``HEAD /rest/v1/<companies>?select=id&limit=1`` with a short
        timeout: cheap, and it proves the key is accepted too.
        """
        with self._health_lock:
            now = time.time()
            if self._health is not None and now - self._health.checked_at < max_age_s:
                return self._health
            self._health = self._probe()
            if not self._health.reachable:
                logger.warning("Supabase health probe failed: %s", self._health.error)
            return self._health

    def _probe(self) -> SinkHealth:
        import httpx

        wait_s = min(HEALTH_TIMEOUT_S, self.timeout_s)
        try:
            with self._bounded(wait_s, "health probe"):
                response = self._http.head(
                    f"{self.url}/rest/v1/{self.companies_table}",
                    params={"select": "id", "limit": "1"}, headers=self._auth_headers,
                    timeout=wait_s)
        except httpx.TimeoutException:
            return SinkHealth(False, time.time(), "timed out")
        except httpx.HTTPError as exc:
            return SinkHealth(False, time.time(), f"unreachable ({type(exc).__name__})")
        if not response.is_success:
            return SinkHealth(False, time.time(), f"answered {response.status_code}")
        return SinkHealth(True, time.time())

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    @contextlib.contextmanager
    def _bounded(self, seconds: float, label: str) -> Iterator[Deadline]:
        """Run the block's requests within one overall deadline of ``seconds``."""
        from actors.runtime.http_deadline import Deadline, within

        with within(Deadline.after(seconds, label)) as deadline:
            yield deadline

    def _call(self, what: str, request: Callable[[], T]) -> T:
        from actors.runtime.http_deadline import current

        try:
            return request()
        except Exception as exc:  # classified: supabase-py raises httpx and APIError
            deadline = current()
            if deadline is not None and deadline.cut_reason is not None:
                raise ResultStoreFailed(f"{what}: cut ({deadline.cut_reason})",
                                        retryable=True) from exc
            if deadline is not None and deadline.expired:
                raise ResultStoreFailed(f"{what}: not done within its deadline of"
                                        f" {deadline.seconds:g}s (SUPABASE_TIMEOUT_MS)",
                                        retryable=True) from exc
            raise classify(exc, what) from exc


def _create_client(url: str, key: str, http: httpx.Client) -> Client:
    # Imported here: supabase-py takes a third of a second to import, and a job
    # system without Supabase never needs it.
    from supabase import ClientOptions, create_client

    options = ClientOptions(
        httpx_client=http,  # our timeouts and pool; also avoids deprecated timeout args
        postgrest_client_retry=False,  # its retries sleep in the caller's thread
        auto_refresh_token=False,  # a service role key, no user session to refresh
        persist_session=False,
    )
    return create_client(url, key, options)
