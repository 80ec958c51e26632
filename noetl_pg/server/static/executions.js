// Executions list: polls GET /api/executions (the execution table, not events).
"use strict";

const PAGE_SIZE = 50;
let cursor = null;  // before_execution_id of the page shown; null = newest

function filtersFromUrl() {
  const params = new URLSearchParams(location.search);
  document.getElementById("status-filter").value = params.get("status") || "";
  document.getElementById("path-filter").value = params.get("path") || "";
}

function filtersToUrl() {
  const params = new URLSearchParams();
  const status = document.getElementById("status-filter").value;
  const path = document.getElementById("path-filter").value.trim();
  if (status) params.set("status", status);
  if (path) params.set("path", path);
  history.replaceState(null, "", "?" + params.toString());
  return params;
}

async function refreshExecutions() {
  const params = filtersToUrl();
  params.set("page_size", PAGE_SIZE);
  if (cursor !== null) params.set("before_execution_id", cursor);
  const rows = await api("../api/executions?" + params.toString());
  const body = document.querySelector("#executions tbody");
  body.replaceChildren(...rows.map((row) => el("tr", { "data-id": row.execution_id },
    el("td", {}, el("a", { href: `execution.html?id=${row.execution_id}` }, row.execution_id)),
    el("td", {}, row.path),
    el("td", { class: "num" }, row.version),
    el("td", { class: "status" }, badge(row.status)),
    el("td", { class: "num" }, row.progress + "%"),
    el("td", {}, when(row.start_time)),
    el("td", { class: "num" }, seconds(row.duration_seconds)),
    el("td", {}, row.failed_step || ""))));
  document.getElementById("older").dataset.next =
    rows.length === PAGE_SIZE ? rows[rows.length - 1].execution_id : "";
}

async function refreshWorkers() {
  const workers = await api("../api/workers");
  document.querySelector("#workers tbody").replaceChildren(...workers
    .filter((w) => w.alive || w.claimed > 0)
    .map((w) => el("tr", {},
      el("td", {}, w.worker_id), el("td", {}, w.alive ? "yes" : "no"),
      el("td", { class: "num" }, w.slots), el("td", { class: "num" }, w.claimed),
      el("td", { class: "num" }, seconds(w.heartbeat_age_seconds)),
      el("td", {}, (w.kinds || ["all"]).join(", ")))));
  const queue = await api("../api/queue");
  document.querySelector("#queue tbody").replaceChildren(...queue.map((q) => el("tr", {},
    el("td", {}, q.kind), el("td", { class: "num" }, q.queued_due),
    el("td", { class: "num" }, q.queued_later), el("td", { class: "num" }, q.claimed),
    el("td", { class: "num" }, q.waiting))));
}

document.addEventListener("DOMContentLoaded", () => {
  filtersFromUrl();
  for (const id of ["status-filter", "path-filter"]) {
    document.getElementById(id).addEventListener("change", () => {
      cursor = null; refreshExecutions();
    });
  }
  document.getElementById("older").addEventListener("click", (event) => {
    if (event.target.dataset.next) { cursor = event.target.dataset.next; refreshExecutions(); }
  });
  document.getElementById("newest").addEventListener("click", () => {
    cursor = null; refreshExecutions();
  });
  poll(refreshExecutions, 2000);
  poll(refreshWorkers, 5000);
});
