# QuDemo jobs: the job backend in front of the Python API.
#
#   docker build -t qudemo-jobs .
#   docker volume create qudemo-jobs-data
#   docker run -d --name qudemo-jobs -p 5000:5000 --stop-timeout 40 \
#     -v qudemo-jobs-data:/data --env-file .env qudemo-jobs
#
# --stop-timeout: on SIGTERM running jobs get QUEUE_DRAIN_TIMEOUT_MS (30 s) to finish and
# gunicorn waits 5 s more; Docker's default of 10 s would kill them half way.
# Configuration is the environment (.env.example lists every variable); README "Deploy".

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid/gid, so that a bind-mounted /data can be prepared with `chown 10001:10001`.
RUN groupadd --system --gid 10001 qudemo \
 && useradd --system --uid 10001 --gid qudemo --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin qudemo

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes,
# not on every code change. The list is read from [project].dependencies with tomllib
# (Python 3.11's standard library), so pyproject.toml stays the one place that names them.
# The project itself is not pip-installed: gunicorn imports wsgi, actors and web from its
# working directory (/app), which avoids a second, isolated build of the package (and a
# download of the setuptools it requires) on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The code: only what the server runs (tests, bench and docs stay out of the image).
COPY actors/ ./actors/
COPY web/ ./web/
COPY wsgi.py gunicorn.conf.py serving.py ./

# The SQLite job store lives on a volume, owned by the user the server runs as. The
# directory is prepared before VOLUME: changes made to it after VOLUME would be dropped.
RUN mkdir -p /data && chown qudemo:qudemo /data && chmod 0750 /data
ENV QUEUE_DB_PATH=/data/jobs.sqlite3
VOLUME ["/data"]

# gunicorn's worker heartbeat file goes to memory (/dev/shm) rather than the container's
# overlay filesystem, where a blocked write can make the arbiter kill a healthy worker.
ENV GUNICORN_CMD_ARGS="--worker-tmp-dir /dev/shm"

USER qudemo

# gunicorn.conf.py binds 0.0.0.0:${PORT:-5000}.
EXPOSE 5000

# Liveness: the process answers HTTP. urllib because the slim image has no curl; it raises
# (exit status 1) on a refused connection, a timeout or any status >= 400.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '5000'), timeout=4)"]

# Exec form: gunicorn is PID 1, so its exit is the container's. A bad configuration makes it
# exit with status 3 before it binds the port, one line in `docker logs` naming every bad
# variable (README "Configuration"): the container stops instead of staying unhealthy.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
