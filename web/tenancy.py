"""Company tenancy: which companies a caller belongs to, and the checks that use it.

Work is always for a company (the Python API's path is ``/process-video/<company>``, the
results land in that company's Supabase rows), so a caller may submit only for a
company it belongs to; admins for any. Membership comes from, in this order:

1. the bearer token's claims: ``companyId`` and ``companyName`` (one company), or the
   lists ``companyIds`` and ``companyNames`` (several; when both lists are given and
   are as long, they pair up by position, so an id can be turned into its name);
2. when the token names no company and Supabase is configured, QuDemo's tables: the
   companies the user owns (``companies.user_id``) and those it is a member of
   (``user_companies``), cached for ``MEMBERSHIP_CACHE_S`` per user;
3. otherwise none: every submission is refused with 403 saying why.

Names are compared case-insensitively (the duplicate key does the same). A company the
caller does not belong to answers 403 whether or not it exists, so the answer confirms
nothing about other tenants; a job of another caller stays 404 (``web.auth``).
"""

from __future__ import annotations

import logging

from flask import current_app, g

from web.auth import current_principal
from web.company_claims import Memberships
from web.context import job_system
from web.errors import ApiError
from web.ttl_cache import TtlCache

logger = logging.getLogger(__name__)

MEMBERSHIP_CACHE_S = 60.0
"""How long a user's memberships read from Supabase are reused."""
MEMBERSHIP_CACHE_USERS = 10_000
"""At most this many users' memberships are cached (least recently used go first)."""


class NotMember(ApiError):
    """The caller does not belong to the company the request is for (403)."""

    status = 403
    default_message = "you are not a member of this company"


CACHE_EXTENSION = "qudemo_memberships"


def membership_cache() -> TtlCache[str, Memberships]:
    """The current app's membership cache (one per app, so apps never share a user's)."""
    cache: TtlCache[str, Memberships] = current_app.extensions.setdefault(
        CACHE_EXTENSION, TtlCache(MEMBERSHIP_CACHE_S, MEMBERSHIP_CACHE_USERS))
    return cache


def _supabase_memberships(user_id: str) -> Memberships:
    """Read ``user_id``'s companies from Supabase.

    Raises:
        ResultStoreUnavailable: Supabase failed (a 503 with ``Retry-After``; not cached).
    """
    companies = job_system().user_companies(user_id)
    return Memberships(names=frozenset(c.name.casefold() for c in companies),
                       ids=frozenset(c.id for c in companies),
                       id_names={c.id: c.name for c in companies}, source="supabase")


def caller_memberships() -> Memberships | None:
    """Return the current caller's companies; ``None`` for an admin (every company).

    Raises:
        ResultStoreUnavailable: the memberships had to be read from Supabase, which failed.
    """
    principal = current_principal()
    if principal.is_admin:
        return None
    found: Memberships | None = g.get("memberships")
    if found is None:
        if principal.claimed is not None:
            found = principal.claimed
        elif job_system().supabase_configured:
            user_id = principal.user_id
            found = membership_cache().get_or_compute(
                user_id, lambda: _supabase_memberships(user_id))
        else:
            found = Memberships()
        g.memberships = found
    return found


def require_member(company_name: str, company_id: str | None = None) -> None:
    """Refuse (403) unless the caller may work for the company ``company_name``.

    With ``company_id`` too, the id must be one of the caller's companies' when the
    caller's companies are known by id, and name the same company when its name is known.
    """
    memberships = caller_memberships()
    if memberships is None:
        return
    if not memberships:
        raise NotMember(_no_companies_message(), details=[
            {"field": "company_name", "message": "the caller belongs to no company"}])
    if not memberships.has_name(company_name):
        known = memberships.name_for(company_id) if company_id else None
        if known is None or known.casefold() != company_name.casefold():
            raise NotMember(f"you are not a member of company {company_name!r}", details=[
                {"field": "company_name", "message": "is not one of the caller's companies"}])
    if company_id and memberships.ids and company_id not in memberships.ids:
        raise NotMember(f"you are not a member of company id {company_id!r}", details=[
            {"field": "company_id", "message": "is not one of the caller's companies"}])
    known_name = memberships.name_for(company_id) if company_id else None
    if known_name is not None and known_name.casefold() != company_name.casefold():
        raise NotMember("company_id and company_name name different companies", details=[
            {"field": "company_id", "message": f"is the id of {known_name!r}"}])


def company_name_for(company_id: str) -> str | None:
    """Return the name of the caller's company ``company_id``, when the caller's data says it."""
    memberships = caller_memberships()
    return None if memberships is None else memberships.name_for(company_id)


def visible_companies() -> list[str] | None:
    """The companies whose counts the caller may see; ``None`` for every company (admins)."""
    memberships = caller_memberships()
    return None if memberships is None else memberships.sorted_names()


def _no_companies_message() -> str:
    if job_system().supabase_configured:
        return ("your token names no company (companyId / companyName claims) and Supabase "
                "lists none for you (companies.user_id, user_companies)")
    return ("your token names no company: it needs a companyName (or companyNames) claim "
            "for the companies you work for")
