"""Job error texts and the short category a job's owner sees (``web.present``)."""

from __future__ import annotations

import pytest

from web.present import error_category


@pytest.mark.parametrize("text, category", [
    ("DeadlineExceeded: /process-video/acme exceeded the 300s deadline", "timed out"),
    ("DeadlineExceeded: /ask-question still unanswered at the end of its hold (600s), long "
     "past the 300s deadline; not retried: the Python API may still be processing it "
     "(QUEUE_RETRY_TIMED_OUT_VIDEOS)", "timed out"),
    ("interrupted: the process stopped during attempt 1 of 3", "interrupted"),
    ("interrupted: lease expired (instance a:1:x stopped renewing); attempts used up by "
     "interruptions", "interrupted"),
    ("WorkerCrashed: no report long past the attempt deadline", "interrupted"),
    ("RetryableCallFailure: /process-video/acme not called: shutting down", "interrupted"),
    ("RetryableCallFailure: /ask-question cut: shutting down", "interrupted"),
    ("PermanentCallFailure: unknown company 'acme'", "unknown company"),
    ("CompanyLookupFailed: company lookup failed: Supabase timed out",
     "the company could not be looked up"),
    ("PermanentCallFailure: /ask-question answered 422: field required",
     "rejected by the processing service"),
    ("PermanentCallFailure: /process-video/acme answered 404: not found",
     "rejected by the processing service"),
    ("RetryableCallFailure: /ask-question answered 429: slow down",
     "the processing service was busy"),
    ("RetryableCallFailure: /ask-question answered 500: boom", "the processing service failed"),
    ("RetryableCallFailure: /ask-question answered 200 with invalid JSON",
     "the processing service failed"),
    ("RetryableCallFailure: /ask-question unreachable: ConnectionError",
     "the processing service could not be reached"),
    ("PermanentCallFailure: video processing failed: no result", "the processing service failed"),
    ("result could not be stored in Supabase: 42P01 relation does not exist",
     "the result could not be stored"),
    ("ValueError: something unexpected", "failed"),
    (None, None),
])
def test_error_categories(text: str | None, category: str | None) -> None:
    assert error_category(text) == category
