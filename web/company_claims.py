"""The company claims of a bearer token: which companies its caller works for.

``web.auth`` reads them from a verified token (``claimed_memberships``); ``web.tenancy``
decides with them. Claims: ``companyId`` and ``companyName`` (one company), or the lists
``companyIds`` and ``companyNames`` (several; when both lists are as long, they pair up
by position, so an id can be turned into its name). Names are kept casefolded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_CLAIMED = 500
"""A token may name at most this many companies."""
MAX_CLAIM_TEXT = 128


class BadCompanyClaims(ValueError):
    """The token's company claims are malformed (the token is refused)."""


@dataclass(frozen=True)
class Memberships:
    """The companies one caller belongs to (names casefolded; ids as given)."""

    names: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    id_names: Mapping[str, str] = field(default_factory=dict)
    """Company id -> name, where known (paired claims, or Supabase rows)."""
    source: str = "none"
    """Where they came from: ``token``, ``supabase`` or ``none``."""

    def __bool__(self) -> bool:
        return bool(self.names or self.ids)

    def has_name(self, name: str) -> bool:
        """Tell whether the caller belongs to the company called ``name``."""
        return name.casefold() in self.names

    def name_for(self, company_id: str) -> str | None:
        """Return the name of company ``company_id`` if the caller belongs to it and it is known."""
        return self.id_names.get(company_id) if company_id in self.ids else None

    def sorted_names(self) -> list[str]:
        """The companies' names, for replies and filters."""
        return sorted(self.names)


def claimed_memberships(claims: Mapping[str, Any]) -> Memberships | None:
    """Read the company claims of a verified token; ``None`` when it names no company.

    Raises:
        BadCompanyClaims: a claim has the wrong type or an unusable value.
    """
    ids = _claim_list(claims, "companyId", "companyIds")
    names = _claim_list(claims, "companyName", "companyNames")
    if not ids and not names:
        return None
    pairs: dict[str, str] = {}
    single = "companyId" in claims and "companyName" in claims
    if single or ("companyIds" in claims and "companyNames" in claims and len(ids) == len(names)):
        pairs = dict(zip(ids, names, strict=False))
    return Memberships(names=frozenset(n.casefold() for n in names), ids=frozenset(ids),
                       id_names=pairs, source="token")


def _claim_list(claims: Mapping[str, Any], one: str, many: str) -> list[str]:
    values: list[Any] = []
    if one in claims and claims[one] is not None:
        values.append(claims[one])
    if many in claims and claims[many] is not None:
        listed = claims[many]
        if not isinstance(listed, list) or len(listed) > MAX_CLAIMED:
            raise BadCompanyClaims(f"{many} must be a list of at most {MAX_CLAIMED} values")
        values.extend(listed)
    texts = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise BadCompanyClaims(f"{one}/{many} values must be strings")
        text = str(value).strip()
        if not text or len(text) > MAX_CLAIM_TEXT or not text.isprintable():
            raise BadCompanyClaims(f"{one}/{many} has an empty, long or unprintable value")
        if text not in texts:
            texts.append(text)
    return texts
