"""The limit for HTTP enqueue: a bare Flask route that parses the same JSON and answers 202.

Served by the same ``gunicorn -c gunicorn.conf.py`` as the real app
(``bench.bare_app:app``), it costs what gunicorn, werkzeug and Flask cost for this
request and nothing else: no validation model, no rate limit, no job system.
"""

from __future__ import annotations

import itertools
from typing import Any

from flask import Flask, jsonify, request

app = Flask(__name__)
_ids = itertools.count(1)


@app.post("/api/interactions/<interaction_id>/questions")
def ask_question(interaction_id: str) -> Any:
    """Parse the question's JSON and answer 202 as the real route does, doing nothing."""
    body = request.get_json()
    if not isinstance(body, dict) or not body.get("question") or not body.get("companyName"):
        return jsonify({"success": False, "error": "question and companyName required"}), 400
    job_id = f"{next(_ids):032x}"
    response = jsonify({
        "success": True,
        "message": "Question queued for AI processing",
        "data": {"jobId": job_id, "type": "qa", "queuePosition": 0,
                 "estimatedWaitTime": "under 5 seconds", "estimatedWaitSeconds": 0.0,
                 "status": "queued"},
    })
    response.status_code = 202
    response.headers["Location"] = f"/api/queue/jobs/qa/{job_id}"
    return response


@app.get("/health/live")
def live() -> Any:
    """Answer the readiness poll of the benchmark's launcher."""
    return jsonify({"status": "alive"})
