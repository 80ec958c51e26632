// noetl-pg console: shared helpers. Plain JavaScript, no build, no external code.
"use strict";

const TOKEN_KEY = "noetl.token";

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

async function api(path, options = {}) {
  const headers = { "Accept": "application/json", ...(options.headers || {}) };
  if (token()) headers["Authorization"] = "Bearer " + token();
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key === "style") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function badge(status) {
  return el("span", { class: `badge s-${status}` }, status);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  return value < 10 ? value.toFixed(2) + " s" : value.toFixed(1) + " s";
}

function showError(message) {
  const box = document.getElementById("message");
  if (box) box.textContent = message || "";
}

function setupTokenBox() {
  const input = document.getElementById("token");
  if (!input) return;
  input.value = token();
  input.addEventListener("change", () => {
    localStorage.setItem(TOKEN_KEY, input.value.trim());
    location.reload();
  });
}

// Poll `fn` every `ms` milliseconds, never overlapping, pausing while the tab is hidden.
function poll(fn, ms) {
  let stopped = false;
  async function tick() {
    if (stopped) return;
    if (!document.hidden) {
      try { await fn(); showError(""); } catch (error) { showError(String(error.message)); }
    }
    setTimeout(tick, ms);
  }
  tick();
  return () => { stopped = true; };
}

document.addEventListener("DOMContentLoaded", setupTokenBox);
