"""Job records: the store interface, its three implementations, and the JobRegistry actor.

``open_store`` opens the one ``QUEUE_STORE`` names; the SQLite and PostgreSQL modules
(and their drivers) are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.model.settings import Settings
    from actors.stores.base import JobStore


def open_store(settings: Settings) -> JobStore:
    """Open the store ``settings.store`` names (``QUEUE_STORE``)."""
    if settings.store == "memory":
        from actors.stores.memory import MemoryJobStore

        return MemoryJobStore()
    if settings.store == "postgres":
        from actors.model.errors import SettingsError
        from actors.stores.postgres.store import PostgresJobStore  # psycopg only when used

        problems = settings.database_problems()
        if problems or settings.database_url is None:
            raise SettingsError(problems)
        from actors.dispatch.fairness import FairShare

        return PostgresJobStore(settings.database_url,
                                statement_timeout_s=settings.db_statement_timeout_s,
                                share=FairShare.of(settings.company_weights))
    from actors.stores.sqlite import SqliteJobStore  # imported only when used

    return SqliteJobStore(settings.db_path, synchronous=settings.db_synchronous.upper())
