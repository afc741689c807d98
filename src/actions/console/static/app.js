// The Actions console: plain JavaScript talking Connect JSON to the server that served it.
// Unary calls (ListRuns, Abort, Signal) are JSON POSTs. Two server streams keep the page
// live, each one Connect streaming call read through fetch()'s ReadableStream: WatchRuns
// for the runs list, WatchRun for every action of the run shown (two of the six HTTP/1.1
// connections a browser allows per origin).
"use strict";

const ACTIONS = "/flyteidl2.actions.ActionsService/";
const CONSOLE = "/flyte_actions.console.v1.ConsoleService/";
const TOKEN_KEY = "actions-console-token";
const PAGE_SIZE = 50;
const FILL_CALLS = 20; // ListRuns calls to fill one page of filtered runs
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT", "RECOVERED"]);
// Stream errors worth reconnecting after (the server restarting, a resync, a full server).
const RETRY = new Set(["unavailable", "resource_exhausted", "internal", "unknown", "aborted"]);
const MAX_BACKOFF_MS = 10000;

const state = {
  run: null,           // {org, project, domain, name} shown on the right
  actions: new Map(),  // name -> ActionView (JSON), plus `gone` once deleted
  nodes: new Map(),    // name -> {a, depth, node}: the tree's rendered nodes
  runStream: null,     // AbortController of the shown run's WatchRun
  runsStream: null,    // AbortController of the runs list's WatchRuns
  runs: new Map(),     // run key -> RunSummary (JSON) in the runs table
  drafts: new Map(),   // condition name -> the value typed so far
  nextPage: "",
  pending: null,       // the timer of a coalesced render
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

// ---------------------------------------------------------------- live streams

// Follows a server stream until stopped: `open(signal)` runs one stream (it resolves when
// the stream ends); after an error in RETRY, or a clean end, it is opened again with
// backoff (`onRetry` says why first). `synced()` resets the backoff. Any other error ends
// it (`onStop`).
function keepOpen(open, { onRetry, onStop }) {
  const controller = new AbortController();
  let failures = 0;
  const attempt = () => {
    if (controller.signal.aborted) return;
    open(controller.signal, () => { failures = 0; }).then(
      () => new RpcError("unavailable", "stream ended"),
      (e) => e,
    ).then((e) => {
      if (controller.signal.aborted) return;
      const code = e.code || "unavailable";
      if (!RETRY.has(code)) { onStop(e); return; }
      failures += 1;
      onRetry(e);
      setTimeout(attempt, Math.min(MAX_BACKOFF_MS, 250 * 2 ** failures));
    });
  };
  attempt();
  return controller;
}

function setLive(how, text) {
  const live = $("#live");
  live.dataset.state = how;
  live.textContent = text;
}

// ---------------------------------------------------------------- runs

function runFilters() {
  const request = {};
  const project = $("#f-project").value.trim();
  const domain = $("#f-domain").value.trim();
  const phase = $("#f-phase").value;
  if (project) request.project = project;
  if (domain) request.domain = domain;
  if (phase) request.phases = [phase];
  return request;
}

// The runs list: WatchRuns's snapshot (the first page), then every run created or changed.
function watchRuns() {
  if (state.runsStream) state.runsStream.abort();
  const filters = runFilters();
  const table = $("#runs");
  table.dataset.state = "connecting";
  state.runsStream = keepOpen((signal, synced) => {
    const snapshot = new Map();
    let live = false;
    return serverStream(CONSOLE + "WatchRuns", { ...filters, pageSize: PAGE_SIZE }, (m) => {
      if (m.snapshotEnd) {
        // A fresh snapshot replaces the list (after a reconnect too).
        state.runs = snapshot;
        state.nextPage = m.snapshotEnd.nextPageToken || "";
        live = true;
        synced();
        table.dataset.state = "live";
        renderRuns();
        guard(fillRuns(filters, signal));
      } else if (!live) {
        if (m.run) snapshot.set(runKey(m.run.run), m.run);
      } else if (m.run) {
        addRun(m.run);
      } else if (m.removed) {
        if (state.runs.delete(runKey(m.removed))) renderRuns();
      }
    }, signal);
  }, {
    onRetry: () => { table.dataset.state = "reconnecting"; },
    onStop: (e) => { table.dataset.state = "stopped"; showError(e.message); },
  });
}

function addRun(run) {
  const key = runKey(run.run);
  if (!state.runs.has(key) && state.nextPage && state.runs.size) {
    // Older than every run shown, with more pages to come: "More runs" will bring it.
    const oldest = Math.min(...[...state.runs.values()].map((r) => Date.parse(r.createdAt)));
    if (Date.parse(run.createdAt) < oldest) return;
  }
  state.runs.set(key, run);
  renderRuns();
}

// A filtered page may come back short (each call's work is bounded): fill it up.
async function fillRuns(filters, signal) {
  for (let calls = 0; calls < FILL_CALLS; calls++) {
    if (!state.nextPage || state.runs.size >= PAGE_SIZE || signal.aborted) return;
    await moreRuns(filters, signal);
  }
}

async function moreRuns(filters, signal) {
  const request = { ...filters, pageSize: PAGE_SIZE, pageToken: state.nextPage };
  const body = await unary(CONSOLE + "ListRuns", request);
  if (signal && signal.aborted) return;
  for (const run of body.runs || []) {
    const key = runKey(run.run);
    if (!state.runs.has(key)) state.runs.set(key, run); // a live update may be newer
  }
  state.nextPage = body.nextPageToken || "";
  renderRuns();
}

function renderRuns() {
  const rows = [...state.runs.values()].sort((a, b) =>
    (Date.parse(b.createdAt) - Date.parse(a.createdAt)) || (a.run.name < b.run.name ? 1 : -1));
  $("#runs tbody").replaceChildren(...rows.map(runRow));
  $("#more").hidden = !state.nextPage;
  markSelected();
}

function runRow(run) {
  const started = run.startedAt || run.createdAt;
  const ended = run.endedAt ? Date.parse(run.endedAt) : Date.now();
  const row = el("tr", { "data-run": runKey(run.run) },
    el("td", {}, el("div", {}, run.run.name),
      el("div", { class: "muted" }, run.run.project + "/" + run.run.domain)),
    el("td", {}, phaseBadge(run.phase)),
    el("td", {}, fmtTime(run.createdAt)),
    el("td", {}, started ? fmtDuration(ended - Date.parse(started)) : ""));
  row.addEventListener("click", () => { location.hash = "run=" + encodeURIComponent(runKey(run.run)); });
  return row;
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

function showRun(run) {
  if (state.runStream) state.runStream.abort();
  state.runStream = null;
  state.run = run;
  state.actions = new Map();
  state.nodes = new Map();
  state.drafts = new Map();
  $("#tree").replaceChildren();
  $("#timeline").replaceChildren();
  markSelected();
  $("#run-empty").hidden = !!run;
  $("#run").hidden = !run;
  if (!run) return;
  $("#run-title").textContent = runKey(run);
  setLive("connecting", "connecting…");
  state.runStream = keepOpen((signal, synced) => {
    const snapshot = new Map();
    let live = false;
    return serverStream(CONSOLE + "WatchRun", { run }, (m) => {
      if (m.snapshotEnd) {
        // Actions shown before (a reconnect) that the snapshot lacks were deleted meanwhile.
        for (const [name, old] of state.actions) {
          if (!snapshot.has(name)) snapshot.set(name, goneView(old));
        }
        state.actions = snapshot;
        live = true;
        synced();
        setLive("live", "live: every action of this run");
        render();
      } else if (!live) {
        if (m.action) snapshot.set(m.action.name, m.action);
      } else if (m.action) {
        state.actions.set(m.action.name, m.action);
        scheduleRender();
      } else if (m.deleted) {
        state.actions.set(m.deleted.name, goneView(m.deleted));
        scheduleRender();
      }
    }, signal);
  }, {
    onRetry: (e) => setLive("reconnecting", "reconnecting… (" + e.message + ")"),
    onStop: (e) => {
      if (e.code === "not_found" && state.actions.size) {
        // The whole run was deleted (its root aborted) while shown: keep it, gone.
        for (const [name, a] of state.actions) state.actions.set(name, goneView(a));
        setLive("stopped", "the run was deleted");
        render();
        return;
      }
      setLive("stopped", "not live");
      showError(e.message);
    },
  });
}

// A deleted action (aborted, or under an aborted parent), shown as such rather than vanishing.
function goneView(a) {
  if (a.gone) return a;
  return { ...a, gone: true, endedAt: a.endedAt || new Date().toISOString(),
    phase: TERMINAL.has(a.phase) ? a.phase : "ABORTED" };
}

// Live changes come in bursts: one render for each burst.
function scheduleRender() {
  if (state.pending) return;
  state.pending = setTimeout(() => { state.pending = null; render(); }, 30);
}

// Parents before their children, siblings by creation time; orphans follow as roots.
function treeOrder() {
  const children = new Map();
  for (const a of state.actions.values()) {
    const parent = a.parent && state.actions.has(a.parent) ? a.parent : "";
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(a);
  }
  const created = (a) => Date.parse(a.createdAt) || 0;
  for (const group of children.values()) {
    group.sort((x, y) => (created(x) - created(y)) || (x.name < y.name ? -1 : 1));
  }
  const out = [];
  const stack = (children.get("") || []).map((a) => [a, 0]).reverse();
  const seen = new Set();
  while (stack.length) {
    const [a, depth] = stack.pop();
    if (seen.has(a.name)) continue;
    seen.add(a.name);
    out.push([a, depth]);
    for (const child of (children.get(a.name) || []).slice().reverse()) stack.push([child, depth + 1]);
  }
  return out;
}

// ---------------------------------------------------------------- rendering

// Only the actions that changed get new nodes, and nodes are moved only when the order
// changed: a field being typed into keeps its focus while other actions change.
function render() {
  if (state.pending) { clearTimeout(state.pending); state.pending = null; }
  const tree = $("#tree");
  const nodes = new Map();
  const wanted = [];
  for (const [a, depth] of treeOrder()) {
    let cached = state.nodes.get(a.name);
    if (!cached || cached.a !== a || cached.depth !== depth) {
      cached = { a, depth, node: actionNode(a, depth) };
    }
    nodes.set(a.name, cached);
    wanted.push(cached.node);
  }
  let cursor = tree.firstChild;
  for (const node of wanted) {
    if (node === cursor) { cursor = cursor.nextSibling; continue; }
    tree.insertBefore(node, cursor);
  }
  while (cursor) { const next = cursor.nextSibling; cursor.remove(); cursor = next; }
  state.nodes = nodes;
  renderTimeline();
}

function actionNode(a, depth) {
  const node = el("div", { class: "action", "data-action": a.name });
  node.style.marginLeft = depth * 1.5 + "rem";
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
  const actions = treeOrder().map(([a]) => a);
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
    // The run's stream shows the outcome.
    await unary(ACTIONS + "Abort", { actionId: actionId(a.name), reason: "aborted from the console" });
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
    state.runs = new Map();
    renderRuns();
    watchRuns();
    showRun(runFromHash());
  });
  $("#filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    showError("");
    state.runs = new Map();
    renderRuns();
    watchRuns();
  });
  $("#more").addEventListener("click", () => guard(moreRuns(runFilters(), null)));
  window.addEventListener("hashchange", () => showRun(runFromHash()));
  // While something runs, its bar and duration grow.
  setInterval(() => {
    if ([...state.actions.values()].some((a) => !TERMINAL.has(a.phase) && !a.gone)) renderTimeline();
  }, 1000);
  watchRuns();
  showRun(runFromHash());
}

start();
