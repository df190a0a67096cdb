"""Helpers shared by the ``test_supabase_*`` modules (this module holds no tests)."""

from __future__ import annotations

from actors import Settings
from actors.runtime.timers import Clock
from tests.postgrest_standin import SERVICE_KEY, PostgrestStandIn

ACME_ID = "6a0f7c2e-1b7d-4c1e-9a55-2f3d4c5b6a71"
GLOBEX_ID = "0b7e9f1a-3c2d-4e5f-8a6b-7c8d9e0f1a2b"
LOOM_URL = "https://www.loom.com/share/0123456789abcdef0123456789abcdef"
LOOM_THUMBNAIL = ("https://cdn.loom.com/sessions/thumbnails/"
                  "0123456789abcdef0123456789abcdef-with-play.gif")
NOW = 1_790_000_000.0
NOW_ISO = "2026-09-21T14:13:20+00:00"


class FixedClock(Clock):
    """Wall-clock time stands still at ``NOW`` (so timestamps in rows are exact)."""

    def time(self) -> float:
        return NOW


def seeded(standin: PostgrestStandIn) -> PostgrestStandIn:
    """Give the stand-in its companies: acme and globex."""
    standin.seed("companies", {"id": ACME_ID, "name": "acme", "display_name": "Acme Corp",
                               "created_at": NOW_ISO},
                 {"id": GLOBEX_ID, "name": "globex", "display_name": "Globex",
                  "created_at": NOW_ISO})
    return standin


def with_supabase(settings: Settings, standin: PostgrestStandIn, **changes: object) -> Settings:
    """``settings`` storing results in ``standin``."""
    return settings.replace(supabase_url=standin.url, supabase_service_role_key=SERVICE_KEY,
                            **changes)
