// One execution: polls GET /api/executions/{id} (the projection, without events) every
// second, the graph every two, and the newest event page when the event count moved.
"use strict";

const EVENTS_PAGE = 25;
const executionId = new URLSearchParams(location.search).get("id");
let eventsCursor = null;      // before_event_id of the event page shown; null = newest
let eventsSeen = -1;          // projected event count when the newest page was read
let finished = false;
let resumePath = null;        // set when the server has a resume endpoint

function summaryItem(label, value) {
  return el("div", {}, el("b", {}, label), value);
}

function renderLoops(loops) {
  const box = document.getElementById("loops");
  if (!loops.length) { box.replaceChildren(el("p", { class: "muted" }, "no loop steps")); return; }
  box.replaceChildren(...loops.map((loop) => {
    const total = Math.max(loop.total, 1);
    const rate = loop.rate_per_second === null ? "" : `, ${loop.rate_per_second}/s`;
    return el("div", { class: "loop", "data-step": loop.step, "data-done": loop.done,
                       "data-failed": loop.failed, "data-total": loop.total,
                       "data-completed": loop.completed },
      el("div", { class: "label" },
        `${loop.step}: ${loop.done} done, ${loop.failed} failed of ${loop.total}${rate}` +
        (loop.completed ? " (closed)" : "")),
      el("div", { class: "bar" },
        el("div", { class: "done", style: `width:${100 * loop.done / total}%` }),
        el("div", { class: "failed", style: `width:${100 * loop.failed / total}%` })));
  }));
}

function renderSteps(steps) {
  document.querySelector("#steps tbody").replaceChildren(...steps.map((step) =>
    el("tr", { "data-step": step.name },
      el("td", {}, step.name), el("td", {}, badge(step.status)),
      el("td", { class: "num" }, step.attempts), el("td", { class: "num" }, step.runs),
      el("td", {}, when(step.started)), el("td", {}, when(step.finished)),
      el("td", {}, step.error ? el("pre", {}, step.error) : ""))));
}

let failureLogs = null;  // {stdout, stderr} of the failed step's last command.failed event

async function loadFailureLogs(step) {
  // One indexed page of command.failed events, read once: the run has finished.
  const page = await api(`../api/executions/${executionId}/events?` +
    new URLSearchParams({ event_type: "command.failed", page_size: 10 }));
  const event = page.events.find((e) => e.node_name === step && e.result && e.result.logs);
  failureLogs = event ? event.result.logs : {};
}

async function renderFailure(detail) {
  const box = document.getElementById("failure");
  if (detail.status !== "FAILED" && !detail.error) { box.replaceChildren(); return; }
  if (detail.failed_step && failureLogs === null) await loadFailureLogs(detail.failed_step);
  const failed = detail.steps.find((s) => s.name === detail.failed_step);
  const logs = [];
  for (const stream of ["stdout", "stderr"]) {
    if (failureLogs && failureLogs[stream]) {
      logs.push(el("h3", {}, stream), el("div", { class: "error", id: `log-${stream}` },
                                         failureLogs[stream]));
    }
  }
  box.replaceChildren(
    el("h2", {}, detail.failed_step ? `Failed step: ${detail.failed_step}` : "Error"),
    el("div", { class: "error", id: "error-text" },
      (failed && failed.error) || detail.error || ""),
    ...logs);
}

async function refreshDetail() {
  const detail = await api(`../api/executions/${executionId}?include_events=false`);
  document.getElementById("exec-status").replaceChildren(badge(detail.status));
  document.getElementById("exec-status").dataset.status = detail.status;
  document.getElementById("summary").replaceChildren(
    summaryItem("playbook", `${detail.path} v${detail.version}`),
    summaryItem("started", when(detail.start_time)),
    summaryItem("duration", seconds(detail.duration_seconds)),
    summaryItem("progress", detail.progress + "%"),
    summaryItem("current step", detail.current_step || ""),
    summaryItem("events", detail.projection.events || 0));
  renderLoops(detail.loops);
  renderSteps(detail.steps);
  await renderFailure(detail);
  finished = detail.status !== "RUNNING";
  document.getElementById("cancel").hidden = finished;
  document.getElementById("resume").hidden = !(resumePath && detail.status === "FAILED");
  if (eventsCursor === null && detail.projection.events !== eventsSeen) {
    eventsSeen = detail.projection.events;
    await refreshEvents();
  }
}

async function refreshGraph() {
  drawGraph(document.getElementById("graph"), await api(`../api/executions/${executionId}/graph`));
}

async function refreshEvents() {
  const params = new URLSearchParams({ page_size: EVENTS_PAGE });
  if (eventsCursor !== null) params.set("before_event_id", eventsCursor);
  const page = await api(`../api/executions/${executionId}/events?${params}`);
  document.querySelector("#events tbody").replaceChildren(...page.events.map((e) =>
    el("tr", { "data-event": e.event_id },
      el("td", { class: "num" }, e.event_id), el("td", {}, e.event_type),
      el("td", {}, e.node_name || ""), el("td", { class: "num" }, e.command_id || ""),
      el("td", { class: "num" }, e.attempt ?? ""), el("td", { class: "num" }, e.iter_index ?? ""),
      el("td", {}, when(e.created_at)), el("td", {}, e.error ? el("pre", {}, e.error) : ""))));
  const older = document.getElementById("events-older");
  older.dataset.next = page.pagination.next_before_event_id ?? "";
  older.disabled = !page.pagination.has_next;
  document.getElementById("events-info").textContent =
    `${page.pagination.total_events} events` + (eventsCursor === null ? " (newest first, live)" : "");
}

async function findResume() {
  const spec = await api("../api/openapi.json");
  const path = "/api/executions/{execution_id}/resume";
  if (spec.paths && spec.paths[path]) resumePath = path;
}

async function act(action) {
  const body = action === "cancel" ? { reason: "cancelled from the console" } : {};
  try {
    await api(`../api/executions/${executionId}/${action}`, { method: "POST", body });
    await refreshDetail();
  } catch (error) { showError(String(error.message)); }
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("exec-id").textContent = executionId;
  document.title = `noetl-pg · execution ${executionId}`;
  document.getElementById("cancel").addEventListener("click", () => act("cancel"));
  document.getElementById("resume").addEventListener("click", () => act("resume"));
  document.getElementById("events-newest").addEventListener("click", () => {
    eventsCursor = null; eventsSeen = -1;
  });
  document.getElementById("events-older").addEventListener("click", (event) => {
    if (event.target.dataset.next) { eventsCursor = event.target.dataset.next; refreshEvents(); }
  });
  try { await findResume(); } catch (error) { /* no spec: no resume button */ }
  poll(refreshDetail, 1000);
  poll(refreshGraph, 2000);
});
