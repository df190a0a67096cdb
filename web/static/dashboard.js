// QuDemo jobs dashboard: polls GET /api/queue/dashboard and draws it; pause/resume buttons
// call POST /api/queue/<kind>/pause|resume, a failure's Retry button
// POST /api/queue/jobs/<kind>/<id>/retry. Plain JavaScript, no framework, no build step.
// Everything from the server is written with textContent, never parsed as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "qudemo.dashboard.token";
  const KINDS = ["qa", "video"];
  const OTHERS = "(others)";  // the companies past the busiest of a kind, summed
  const refreshParam = Number(new URLSearchParams(window.location.search).get("refresh"));
  const POLL_MS = Number.isFinite(refreshParam) && refreshParam >= 0.25 ? refreshParam * 1000 : 2000;

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let busy = false;
  let lastData = null;
  let failuresDrawn = null;  // the failures last drawn, as JSON: unchanged rows are kept
  const retrying = new Set();  // ids whose Retry is waiting for its answer
  const outcomes = new Map();  // id -> {failedAt, text, tone}: the answer to its last Retry

  function token() {
    return window.sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function headers() {
    const value = token();
    return value ? { Authorization: "Bearer " + value } : {};
  }

  async function call(method, path) {
    const response = await fetch(path, { method, headers: headers(), cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { status: response.status, body };
  }

  function askForToken(message) {
    $("token-form").hidden = false;
    $("token-message").textContent = message;
    $("token-button").hidden = true;
    $("content").hidden = lastData === null;
    setState("sign in", "warn");
  }

  function showError(message) {
    const box = $("error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  function setState(text, tone) {
    const badge = $("system-state");
    badge.textContent = text;
    badge.className = "badge " + (tone || "");
  }

  function number(value) {
    return value === null || value === undefined ? "–" : String(value);
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }

  function megabytes(value) {
    return value === null || value === undefined ? "unknown" : Math.round(value) + " MB";
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  // What a job is: its company, its video's URL or its question's first words, its owner.
  function identity(row, job) {
    cell(row, job.company || "", "company");
    cell(row, job.summary || "", "what");
    cell(row, job.owner || "", "owner");
  }

  function drawKind(kind, queue) {
    $(kind + "-waiting").textContent = number(queue.waiting);
    $(kind + "-running").textContent = number(queue.activeJobs)
      + (queue.abandonedCalls ? " (+" + number(queue.abandonedCalls) + " abandoned)" : "");
    // Adaptive capacity: the limit it has now, and the configured maximum beside it.
    const limit = queue.concurrencyLimit ?? queue.maxConcurrent;
    $(kind + "-limit").textContent = limit === null || limit === undefined ? ""
      : " / " + limit + (queue.adaptiveConcurrency ? " (adaptive, max " + queue.maxConcurrent + " per instance)" : "");
    $(kind + "-retrying").textContent = number(queue.retrying);
    $(kind + "-completed").textContent = number(queue.completed);
    $(kind + "-failed").textContent = number(queue.failed);
    $(kind + "-cancelled").textContent = number(queue.cancelled);
    const state = $(kind + "-state");
    state.textContent = queue.paused ? "paused" : "dispatching";
    state.className = "badge " + (queue.paused ? "warn" : "ok");
    const reasons = queue.pauseReasons || [];
    $(kind + "-reasons").textContent = reasons.length
      ? "paused by: " + reasons.join(", ") + (reasons.some((r) => r.includes("memory")) ? " (lifts when memory falls)" : "")
      : "";
    const toggle = $(kind + "-toggle");
    const byOperator = reasons.includes("operator");
    toggle.textContent = byOperator ? "Resume" : "Pause";
    toggle.dataset.action = byOperator ? "resume" : "pause";
    toggle.className = "toggle" + (byOperator ? " resume" : "");
    toggle.disabled = false;
  }

  function drawGauge(name, valueMb, thresholdMb, maxMb) {
    const limit = Math.max(maxMb || 0, thresholdMb || 0) * 1.25 || 1;
    const fill = $(name + "-fill");
    const share = valueMb === null || valueMb === undefined ? 0 : Math.min(1, valueMb / limit);
    fill.style.width = (share * 100).toFixed(1) + "%";
    const tone = valueMb >= (maxMb || Infinity) ? "bad" : valueMb >= (thresholdMb || Infinity) ? "warn" : "";
    fill.className = "fill " + tone;
    $(name + "-mark").style.left = ((thresholdMb || 0) / limit * 100).toFixed(1) + "%";
  }

  function drawMemory(memory) {
    const threshold = memory.thresholdMb;
    const max = memory.maxMemoryMb;
    $("process-memory").textContent = megabytes(memory.processRssMb) + " / " + megabytes(threshold);
    drawGauge("process", memory.processRssMb, threshold, max);
    const python = memory.python || {};
    $("python-memory").textContent = megabytes(python.memoryMb) + " / " + megabytes(threshold);
    drawGauge("python", python.memoryMb, threshold, max);
    const status = $("python-status");
    const reachable = python.reachable;
    status.textContent = reachable ? python.status : memory.checkedAt ? "unreachable" : "unknown";
    status.className = "badge " + (!reachable ? "" : python.status === "ok" ? "ok" : python.status === "warning" ? "warn" : "bad");
    const notes = ["video dispatch pauses above " + megabytes(threshold) + ", new videos are refused above " + megabytes(max)];
    if (memory.pressure) notes.push("MEMORY PRESSURE: video dispatch paused");
    if (memory.admissionRefused) notes.push("new video jobs refused");
    $("memory-note").textContent = notes.join(" · ");
  }

  function drawRunning(running) {
    const rows = $("running-rows");
    rows.replaceChildren();
    for (const job of running) {
      const row = document.createElement("tr");
      row.dataset.jobId = job.id;
      cell(row, job.id, "id");
      cell(row, job.type);
      identity(row, job);
      cell(row, String(job.attempt));
      cell(row, duration(job.ageSeconds), "age");
      cell(row, job.worker || "");
      cell(row, job.abandoned ? "abandoned: past its deadline, slot held" : "running", "call");
      rows.appendChild(row);
    }
    $("running-empty").hidden = running.length > 0;
    $("running-count").textContent = running.length ? "(" + running.length + ")" : "";
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : Math.round(value * 100) + "%";
  }

  // Each Python API instance's adaptive capacity (both kinds together) and why it last moved.
  function drawCapacity(instances) {
    const rows = $("capacity-rows");
    rows.replaceChildren();
    for (const item of instances) {
      const capacity = item.capacity || {};
      const inFlight = item.inFlight || {};
      const row = document.createElement("tr");
      row.dataset.instance = String(item.instance);
      cell(row, String(item.instance));
      cell(row, item.url || "", "what");
      cell(row, item.state || "");
      cell(row, capacity.adaptive ? number(capacity.limit)
        : "static (" + KINDS.map((k) => k + " " + number((item.limits || {})[k])).join(", ") + ")", "limit");
      cell(row, KINDS.map((k) => k + " " + number(inFlight[k] ?? 0)).join(", "));
      cell(row, capacity.adaptive ? capacity.reason || "" : "", "reason");
      cell(row, capacity.movedSecondsAgo === null || capacity.movedSecondsAgo === undefined
        ? "" : duration(capacity.movedSecondsAgo) + " ago");
      cell(row, capacity.lastSignal || "", "signal");
      cell(row, capacity.coolingSeconds ? duration(capacity.coolingSeconds) : "");
      rows.appendChild(row);
    }
    $("capacity-empty").hidden = instances.length > 0;
  }

  // The companies with work (the busiest of each kind as the server names them, the rest
  // summed as "(others)"), one row each: waiting, running and share of running per kind.
  function drawCompanies(fairShare) {
    const shares = fairShare || {};
    const names = new Map();  // name -> jobs of both kinds, for the order of the rows
    for (const kind of KINDS) {
      for (const [name, row] of Object.entries((shares[kind] || {}).companies || {})) {
        names.set(name, (names.get(name) || 0) + row.waiting + row.running);
      }
    }
    const order = [...names.keys()].sort((a, b) => (a === OTHERS) - (b === OTHERS)
      || names.get(b) - names.get(a) || a.localeCompare(b));
    const rows = $("company-rows");
    rows.replaceChildren();
    for (const name of order) {
      const row = document.createElement("tr");
      row.dataset.company = name;
      cell(row, name, "company");
      for (const kind of KINDS) {
        const share = ((shares[kind] || {}).companies || {})[name];
        cell(row, share ? String(share.waiting) : "0", kind + "-waiting");
        cell(row, share ? String(share.running) : "0", kind + "-running");
        cell(row, share ? percent(share.share) + " (fair " + percent(share.fairShare) + ")" : "",
          kind + "-share");
      }
      rows.appendChild(row);
    }
    $("companies-empty").hidden = order.length > 0;
    const counts = KINDS.filter((k) => shares[k] && shares[k].count)
      .map((k) => (k === "qa" ? "Q&A" : k) + " " + shares[k].count);
    $("companies-count").textContent = counts.length ? "(with work: " + counts.join(", ") + ")" : "";
  }

  function drawFailures(failures) {
    $("failures-empty").hidden = failures.length > 0;
    const drawn = JSON.stringify(failures);
    if (drawn === failuresDrawn) return;  // keep the rows, and the button under the pointer
    failuresDrawn = drawn;
    const shown = new Set(failures.map((job) => job.id));
    for (const id of outcomes.keys()) {
      if (!shown.has(id)) outcomes.delete(id);
    }
    const rows = $("failure-rows");
    rows.replaceChildren();
    for (const job of failures) {
      const row = document.createElement("tr");
      row.dataset.jobId = job.id;
      cell(row, job.id, "id");
      cell(row, job.type);
      identity(row, job);
      cell(row, String(job.attempts));
      cell(row, job.failedAt ? new Date(job.failedAt).toLocaleString() : "");
      cell(row, job.lastError || "", "error-text");
      const action = cell(row, "", "action");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "retry";
      button.textContent = retrying.has(job.id) ? "Retrying…" : "Retry";
      button.disabled = retrying.has(job.id);
      button.addEventListener("click", function () {
        retry(job, button);
      });
      const outcome = document.createElement("span");
      outcome.className = "outcome";
      const last = outcomes.get(job.id);
      if (last && last.failedAt === job.failedAt) {  // not an answer about an older failure
        outcome.textContent = last.text;
        outcome.className = "outcome " + last.tone;
      }
      action.append(button, outcome);
      rows.appendChild(row);
    }
  }

  function draw(data) {
    lastData = data;
    $("content").hidden = false;
    $("token-form").hidden = true;
    $("token-button").hidden = !token();
    for (const kind of KINDS) {
      if (data.queues[kind]) drawKind(kind, data.queues[kind]);
    }
    drawMemory(data.memory);
    drawCapacity(data.pythonInstances || []);
    drawCompanies(data.fairShare);
    drawRunning(data.running);
    drawFailures(data.failures);
    if (data.draining) setState("draining", "warn");
    else if (data.accepting) setState("accepting jobs", "ok");
    else setState("not accepting", "bad");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const { status, body } = await call("GET", "/api/queue/dashboard");
      if (status === 200 && body && body.success) {
        showError("");
        draw(body.data);
      } else if (status === 401) {
        askForToken(token() ? "The token was refused (" + ((body && body.error) || "401") + "). Enter an admin token." : "This server requires an admin bearer token. It is kept in this tab only (sessionStorage).");
      } else if (status === 403) {
        askForToken("This token is not an admin's. Enter an admin token.");
      } else {
        showError("The server answered " + status + ": " + ((body && body.error) || "no details"));
        setState("error", "bad");
      }
    } catch (err) {
      showError("Cannot reach the server: " + err.message);
      setState("offline", "bad");
    } finally {
      busy = false;
    }
  }

  function schedule() {
    window.clearTimeout(timer);
    if (document.hidden) return;
    timer = window.setTimeout(async function tick() {
      await refresh();
      schedule();
    }, POLL_MS);
  }

  async function toggle(kind) {
    const button = $(kind + "-toggle");
    const action = button.dataset.action || "pause";
    button.disabled = true;
    const { status, body } = await call("POST", "/api/queue/" + kind + "/" + action);
    if (status !== 200) {
      showError(action + " " + kind + " failed (" + status + "): " + ((body && body.error) || "no details"));
    }
    await refresh();
  }

  // 202: queued again; otherwise the reply's error (403 not allowed, 409 not failed any
  // more, 429 the company's queue is full), shown in the row and in the note below it.
  async function retry(job, button) {
    retrying.add(job.id);
    button.disabled = true;
    button.textContent = "Retrying…";
    let outcome;
    try {
      const path = "/api/queue/jobs/" + encodeURIComponent(job.type) + "/"
        + encodeURIComponent(job.id) + "/retry";
      const { status, body } = await call("POST", path);
      const error = (body && body.error) || "no details";
      if (status === 202) outcome = { text: "queued again", tone: "ok" };
      else if ([403, 409, 429].includes(status)) outcome = { text: error, tone: "bad" };
      else outcome = { text: "failed (" + status + "): " + error, tone: "bad" };
    } catch (err) {
      outcome = { text: "cannot reach the server: " + err.message, tone: "bad" };
    } finally {
      retrying.delete(job.id);
    }
    outcomes.set(job.id, { failedAt: job.failedAt, ...outcome });
    const note = $("retry-note");
    note.textContent = "Retry of " + job.type + " job " + job.id + ": " + outcome.text;
    note.className = "outcome " + outcome.tone;
    note.hidden = false;
    failuresDrawn = null;  // redraw the rows with the outcome
    if (lastData) drawFailures(lastData.failures);
    await refresh();
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("token-form").addEventListener("submit", function (event) {
      event.preventDefault();
      const value = $("token-input").value.trim();
      if (value) window.sessionStorage.setItem(TOKEN_KEY, value);
      else window.sessionStorage.removeItem(TOKEN_KEY);
      $("token-input").value = "";
      refresh().then(schedule);
    });
    $("token-button").addEventListener("click", function () {
      askForToken("Enter another admin token.");
    });
    for (const kind of KINDS) {
      $(kind + "-toggle").addEventListener("click", function () {
        toggle(kind);
      });
    }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) refresh().then(schedule);
      else window.clearTimeout(timer);
    });
    refresh().then(schedule);
  });
})();
