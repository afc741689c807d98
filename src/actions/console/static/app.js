// The Actions console: plain JavaScript talking Connect JSON to the server that served it.
// Unary calls (ListRuns, GetRun, Abort, Signal) are JSON POSTs; a run's live tree follows
// WatchForUpdates as a Connect streaming call read through fetch()'s ReadableStream.
"use strict";

const ACTIONS = "/flyteidl2.actions.ActionsService/";
const CONSOLE = "/flyte_actions.console.v1.ConsoleService/";
const TOKEN_KEY = "actions-console-token";
const MAX_STREAMS = 4; // browsers allow 6 HTTP/1.1 connections per origin; keep 2 for calls
const FILL_CALLS = 20; // ListRuns calls to fill one page of filtered runs
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "RECOVERED"]);

const state = {
  run: null,          // {org, project, domain, name} shown on the right
  actions: new Map(), // name -> ActionView (JSON)
  streams: new Map(), // parent action name -> AbortController
  refresh: null,      // pending GetRun after a live update
  drafts: new Map(),  // condition name -> the value typed so far
  nextPage: "",
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

// ---------------------------------------------------------------- errors and token

function showError(text) {
  const box = $("#error");
  box.textContent = text;
  box.hidden = !text;
}

function headers(extra) {
  const h = { "connect-protocol-version": "1", ...extra };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h.authorization = "Bearer " + token;
  return h;
}

class RpcError extends Error {
  constructor(code, message) {
    super(code + ": " + message);
    this.code = code;
  }
}

// ---------------------------------------------------------------- Connect calls

async function unary(path, request) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: headers({ "content-type": "application/json" }),
      body: JSON.stringify(request),
    });
  } catch (e) {
    throw new RpcError("unavailable", String(e));
  }
  const text = await response.text();
  let body = {};
  try { body = text ? JSON.parse(text) : {}; } catch (e) { body = { message: text }; }
  if (!response.ok) {
    throw new RpcError(body.code || "http " + response.status, body.message || text);
  }
  return body;
}

function envelope(json) {
  const data = new TextEncoder().encode(JSON.stringify(json));
  const out = new Uint8Array(5 + data.length);
  new DataView(out.buffer).setUint32(1, data.length);
  out.set(data, 5);
  return out;
}

// Calls onMessage for each response message; resolves when the stream ends cleanly.
async function serverStream(path, request, onMessage, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "content-type": "application/connect+json" }),
    body: envelope(request),
    signal,
  });
  if (!response.ok) {
    let body = {};
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    throw new RpcError(body.code || "http " + response.status, body.message || "");
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new RpcError("internal", "stream ended without an end-stream message");
    const joined = new Uint8Array(buffered.length + value.length);
    joined.set(buffered);
    joined.set(value, buffered.length);
    buffered = joined;
    while (buffered.length >= 5) {
      const view = new DataView(buffered.buffer, buffered.byteOffset);
      const flags = view.getUint8(0);
      const size = view.getUint32(1);
      if (buffered.length < 5 + size) break;
      const message = JSON.parse(decoder.decode(buffered.subarray(5, 5 + size)) || "{}");
      buffered = buffered.slice(5 + size);
      if (flags & 2) {
        if (message.error) throw new RpcError(message.error.code, message.error.message || "");
        return;
      }
      onMessage(message);
    }
  }
}

// ---------------------------------------------------------------- formatting

function phaseBadge(phase) {
  return el("span", { class: "phase phase-" + phase, "data-phase": phase }, phase);
}

// Local time: the time of day for today, else the date too (ISO-like, unambiguous).
function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  const pad = (n) => String(n).padStart(2, "0");
  const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  if (d.toDateString() === new Date().toDateString()) return time;
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + time;
}

function fmtDuration(ms) {
  if (!(ms >= 0)) return "";
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 120) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 120) return m + " m " + Math.round(s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " m";
}

const runKey = (r) => [r.org || "", r.project, r.domain, r.name].join("/");

// ---------------------------------------------------------------- runs

async function loadRuns(append) {
  const request = { pageSize: 50 };
  const project = $("#f-project").value.trim();
  const domain = $("#f-domain").value.trim();
  const phase = $("#f-phase").value;
  if (project) request.project = project;
  if (domain) request.domain = domain;
  if (phase) request.phases = [phase];
  if (append && state.nextPage) request.pageToken = state.nextPage;
  // A filtered page may come back short (each call's work is bounded): fill it up.
  let runs = [];
  let body = {};
  for (let calls = 0; calls < FILL_CALLS; calls++) {
    body = await unary(CONSOLE + "ListRuns", request);
    runs = runs.concat(body.runs || []);
    if (!body.nextPageToken || runs.length >= request.pageSize) break;
    request.pageToken = body.nextPageToken;
  }
  const tbody = $("#runs tbody");
  if (!append) tbody.replaceChildren();
  for (const run of runs) {
    const started = run.startedAt || run.createdAt;
    const ended = run.endedAt ? Date.parse(run.endedAt) : Date.now();
    const row = el("tr", { "data-run": runKey(run.run) },
      el("td", {}, el("div", {}, run.run.name),
        el("div", { class: "muted" }, run.run.project + "/" + run.run.domain)),
      el("td", {}, phaseBadge(run.phase)),
      el("td", {}, fmtTime(run.createdAt)),
      el("td", {}, started ? fmtDuration(ended - Date.parse(started)) : ""));
    row.addEventListener("click", () => { location.hash = "run=" + encodeURIComponent(runKey(run.run)); });
    tbody.append(row);
  }
  state.nextPage = body.nextPageToken || "";
  $("#more").hidden = !state.nextPage;
  markSelected();
}

function markSelected() {
  const key = state.run ? runKey(state.run) : "";
  for (const row of document.querySelectorAll("#runs tbody tr")) {
    row.classList.toggle("selected", row.dataset.run === key);
  }
}

// ---------------------------------------------------------------- one run

function runFromHash() {
  const m = /run=([^&]+)/.exec(location.hash);
  if (!m) return null;
  const [org, project, domain, ...rest] = decodeURIComponent(m[1]).split("/");
  return { org, project, domain, name: rest.join("/") };
}

function stopStreams() {
  for (const controller of state.streams.values()) controller.abort();
  state.streams.clear();
}

async function showRun(run) {
  stopStreams();
  state.run = run;
  state.actions = new Map();
  state.drafts = new Map();
  markSelected();
  $("#run-empty").hidden = !!run;
  $("#run").hidden = !run;
  if (!run) return;
  $("#run-title").textContent = runKey(run);
  await loadRun();
}

async function loadRun() {
  const run = state.run;
  if (!run) return;
  let listed = [];
  try {
    listed = (await unary(CONSOLE + "GetRun", { run })).actions || [];
  } catch (e) {
    // The whole run was deleted (its root aborted) while we showed it: keep it, gone.
    if (!(e.code === "not_found" && state.actions.size)) throw e;
  }
  if (state.run !== run) return; // another run was picked meanwhile
  const fresh = new Map(listed.map((a) => [a.name, a]));
  for (const [name, old] of state.actions) {
    if (!fresh.has(name)) {
      // Deleted (aborted, or its parent was): shown as such rather than vanishing.
      const ended = old.endedAt || new Date().toISOString(); // about when it went
      fresh.set(name, { ...old, gone: true, endedAt: ended,
        phase: TERMINAL.has(old.phase) ? old.phase : "ABORTED" });
    }
  }
  state.actions = fresh;
  render();
  followParents();
}

function scheduleRefresh() {
  if (state.refresh) return;
  state.refresh = setTimeout(() => {
    state.refresh = null;
    loadRun().catch((e) => showError(String(e.message || e)));
  }, 300);
}

// Watch the root and, up to MAX_STREAMS in all, the other actions that have children.
function followParents() {
  const parents = [];
  for (const a of state.actions.values()) {
    if (!a.parent) parents.unshift(a.name);
  }
  for (const a of state.actions.values()) {
    if (a.parent && !parents.includes(a.parent)) parents.push(a.parent);
  }
  for (const parent of parents.slice(0, MAX_STREAMS)) {
    if (!state.streams.has(parent)) follow(state.run, parent, 0);
  }
  const shown = Math.min(parents.length, MAX_STREAMS);
  $("#live").textContent = "live: following " + shown + " of " + parents.length +
    " parent action" + (parents.length === 1 ? "" : "s");
}

function follow(run, parent, failures) {
  const controller = new AbortController();
  state.streams.set(parent, controller);
  const request = { parentActionId: { run, name: parent } };
  serverStream(ACTIONS + "WatchForUpdates", request, (message) => {
    if (message.actionUpdate) onUpdate(message.actionUpdate);
  }, controller.signal).then(() => {
    return "ended";
  }, (e) => {
    if (controller.signal.aborted) return "stopped";
    showError("watch " + parent + ": " + (e.message || e));
    return "failed";
  }).then((how) => {
    if (how === "stopped" || state.streams.get(parent) !== controller) return;
    state.streams.delete(parent);
    if (failures < 5 && state.run === run) {
      // The server closed it (restart, shutdown): follow again, backing off.
      setTimeout(() => { if (state.run === run) follow(run, parent, failures + 1); },
        500 * 2 ** failures);
    }
  });
}

function onUpdate(update) {
  const name = update.actionId && update.actionId.name;
  if (!name) return;
  const phase = (update.phase || "ACTION_PHASE_UNSPECIFIED").replace("ACTION_PHASE_", "");
  const known = state.actions.get(name);
  if (known && known.phase === phase) return;
  if (known) {
    known.phase = phase; // at once; the times and history follow with the refresh
    if (update.error && update.error.message) known.error = update.error;
    render();
  }
  scheduleRefresh();
}

// ---------------------------------------------------------------- rendering

function depthOf(a) {
  let depth = 0;
  for (let p = a.parent; p && state.actions.has(p) && depth < 50; p = state.actions.get(p).parent) {
    depth += 1;
  }
  return depth;
}

function render() {
  const tree = $("#tree");
  tree.replaceChildren(...[...state.actions.values()].map(actionNode));
  renderTimeline();
  // The runs table shows the root's phase as listed; keep the shown run's row current.
  const root = [...state.actions.values()].find((a) => !a.parent);
  const row = document.querySelector("#runs tbody tr.selected .phase");
  if (root && row && row.textContent !== root.phase) row.replaceWith(phaseBadge(root.phase));
}

function actionNode(a) {
  const node = el("div", { class: "action", "data-action": a.name });
  node.style.marginLeft = depthOf(a) * 1.5 + "rem";
  const head = el("div", { class: "head" },
    el("span", { class: "name" }, a.name),
    phaseBadge(a.phase),
    el("span", { class: "muted" }, a.type + (a.task ? " " + a.task : "")),
    a.attempts ? el("span", { class: "muted" }, "attempt " + a.attempts) : null);
  if (a.gone) head.append(el("span", { class: "muted gone" }, "deleted"));
  if (!TERMINAL.has(a.phase) && !a.gone) {
    const abort = el("button", { type: "button", class: "abort", "data-action": a.name }, "Abort");
    abort.addEventListener("click", () => doAbort(a));
    head.append(abort);
  }
  node.append(head);
  const times = ["created " + fmtTime(a.createdAt)];
  if (a.startedAt) times.push("started " + fmtTime(a.startedAt));
  if (a.endedAt) times.push("ended " + fmtTime(a.endedAt));
  node.append(el("div", { class: "times" }, times.join(" · ")));
  if (a.phaseHistory && a.phaseHistory.length) {
    node.append(el("div", { class: "history" }, a.phaseHistory
      .map((h) => h.phase + " " + fmtTime(h.occurredAt)).join(" → ")));
  }
  if (a.error && (a.error.message || a.error.code)) {
    node.append(el("div", { class: "err" },
      [a.error.kind, a.error.code, a.error.message].filter(Boolean).join(": ")));
  }
  if (a.abortReason) {
    node.append(el("div", { class: "abort-reason" }, "abort: " + a.abortReason +
      (a.abortedBy ? " (by " + a.abortedBy + ")" : "")));
  }
  if (a.condition) node.append(conditionNode(a));
  return node;
}

function conditionNode(a) {
  const c = a.condition;
  const box = el("div", { class: "condition" },
    el("span", { class: "prompt" }, c.prompt || c.name || "condition"));
  if (c.value) {
    box.append(" = ", el("strong", { class: "value" }, c.value));
    return box;
  }
  if (a.phase !== "PAUSED") return box;
  const type = c.valueType || "string";
  let input;
  if (type === "bool") {
    input = el("select", { name: "value" }, el("option", { value: "true" }, "true"),
      el("option", { value: "false" }, "false"));
  } else {
    input = el("input", { name: "value", type: type === "string" ? "text" : "number",
      step: type === "float" ? "any" : "1", required: true, placeholder: type });
  }
  // A re-render (a live update) must not lose what is being typed.
  if (state.drafts.has(a.name)) input.value = state.drafts.get(a.name);
  input.addEventListener("input", () => state.drafts.set(a.name, input.value));
  input.addEventListener("change", () => state.drafts.set(a.name, input.value));
  const form = el("form", { class: "signal", "data-action": a.name }, input,
    el("button", { type: "submit" }, "Resolve (" + type + ")"));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); doSignal(a, type, input.value); });
  box.append(" ", form);
  return box;
}

function renderTimeline() {
  const actions = [...state.actions.values()];
  const times = (a) => {
    const created = Date.parse(a.createdAt);
    const started = a.startedAt ? Date.parse(a.startedAt) : NaN;
    const ended = a.endedAt ? Date.parse(a.endedAt) : Date.now();
    return { created, started, ended };
  };
  const all = actions.map(times).filter((t) => !isNaN(t.created));
  if (!all.length) { $("#timeline").replaceChildren(); return; }
  const t0 = Math.min(...all.map((t) => t.created));
  const t1 = Math.max(t0 + 1, ...all.map((t) => t.ended));
  const label = 140, width = 600, row = 18;
  const x = (t) => label + ((t - t0) / (t1 - t0)) * (width - label - 10);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${actions.length * row + 20}`);
  svg.setAttribute("role", "img");
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  actions.forEach((a, i) => {
    const t = times(a);
    const y = i * row + 4;
    add("text", { x: 2, y: y + 11 }, a.name.slice(0, 22));
    if (isNaN(t.created)) return;
    const runFrom = isNaN(t.started) ? t.ended : t.started;
    // Waiting for a person (a paused condition), or ended without running: its colour.
    const waited = isNaN(t.started) && (TERMINAL.has(a.phase) || a.phase === "PAUSED")
      ? "bar-waited bar-" + a.phase : "bar-queued";
    add("rect", { x: x(t.created), y, width: Math.max(1, x(runFrom) - x(t.created)), height: 12,
      class: waited, "data-action": a.name }).append(titleOf(a.name + " queued"));
    if (!isNaN(t.started)) {
      add("rect", { x: x(t.started), y, width: Math.max(1, x(t.ended) - x(t.started)),
        height: 12, class: "bar-run bar-" + a.phase }).append(titleOf(a.name + " " + a.phase));
    }
  });
  add("text", { x: label, y: actions.length * row + 16 }, "0");
  add("text", { x: width - 60, y: actions.length * row + 16 }, fmtDuration(t1 - t0));
  $("#timeline").replaceChildren(svg);
}

function titleOf(text) {
  const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
  t.textContent = text;
  return t;
}

// ---------------------------------------------------------------- writes

function actionId(name) {
  return { run: state.run, name };
}

async function doAbort(a) {
  showError("");
  try {
    await unary(ACTIONS + "Abort", { actionId: actionId(a.name), reason: "aborted from the console" });
    scheduleRefresh();
  } catch (e) {
    showError("abort " + a.name + ": " + e.message);
  }
}

function literal(type, text) {
  const t = text.trim();
  if (type === "bool") return { boolean: t === "true" };
  if (type === "int") {
    if (!/^-?\d+$/.test(t)) throw new RpcError("invalid_argument", "not an integer: " + text);
    return { integer: t };
  }
  if (type === "float") {
    if (t === "" || isNaN(Number(t))) throw new RpcError("invalid_argument", "not a number: " + text);
    return { floatValue: Number(t) };
  }
  return { stringValue: text };
}

async function doSignal(a, type, text) {
  showError("");
  try {
    const value = { scalar: { primitive: literal(type, text) } };
    await unary(ACTIONS + "Signal",
      { actionId: actionId(a.name), parentActionName: a.parent, value });
    scheduleRefresh();
  } catch (e) {
    showError("signal " + a.name + ": " + e.message);
  }
}

// ---------------------------------------------------------------- start

function guard(promise) {
  promise.then(() => {}, (e) => showError(String(e.message || e)));
}

function start() {
  const tokenInput = $("#token");
  tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = tokenInput.value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    showError("");
    // Nothing read with the previous token stays on the page.
    $("#runs tbody").replaceChildren();
    $("#more").hidden = true;
    guard(loadRuns(false));
    guard(showRun(runFromHash()));
  });
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); showError(""); guard(loadRuns(false)); });
  $("#more").addEventListener("click", () => guard(loadRuns(true)));
  window.addEventListener("hashchange", () => guard(showRun(runFromHash())));
  guard(loadRuns(false));
  guard(showRun(runFromHash()));
}

start();
