// Factotum's web UI: plain JavaScript over the coordinator's JSON API (/api/...).
// Every piece of data reaches the page through textContent or setAttribute, never as markup.
"use strict";

const main = document.getElementById("main");
let cleanup = [];

class ApiError extends Error {
  constructor(status, message, reason) { super(message); this.status = status; this.reason = reason; }
}

function csrf() {
  const m = document.cookie.match(/(?:^|;\s*)factotum_csrf=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : "1";
}

async function api(path, method, body) {
  const init = { credentials: "same-origin", headers: {} };
  if (method === "POST") {
    init.method = "POST";
    init.headers["X-Factotum-CSRF"] = csrf();
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const r = await fetch(path, init);
  let data = {};
  try { data = await r.json(); } catch (e) { data = {}; }
  if (r.status === 401) { showLogin(data.error); throw new ApiError(401, data.error || "log in", "UNAUTHENTICATED"); }
  if (!r.ok) throw new ApiError(r.status, data.error || r.statusText, data.reason);
  return data;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function link(href, text) { const a = el("a", text); a.setAttribute("href", href); return a; }
function stateBadge(state) { return el("span", state, "state state-" + state); }
function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
function fmtDur(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(1) + "s";
  const m = Math.floor(s / 60);
  return m < 60 ? m + "m" + Math.floor(s % 60) + "s" : Math.floor(m / 60) + "h" + (m % 60) + "m";
}
function runLink(id) { return "#/run/" + encodeURIComponent(id); }
function use(id) { const t = document.getElementById(id); main.replaceChildren(t.content.cloneNode(true)); }
function $(id) { return document.getElementById(id); }
function fail(where, e) { if (!(e instanceof ApiError && e.status === 401)) where.textContent = "Error: " + e.message; }

function showLogin(message) {
  stop();
  use("login-template");
  if (message) $("login-error").textContent = message;
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await fetch("/ui/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("login-token").value }),
    });
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    if (!r.ok) { $("login-error").textContent = data.error || "refused"; return; }
    $("logout").hidden = false;
    route();
  });
}

function stop() { for (const f of cleanup) f(); cleanup = []; }

function every(ms, f) { const t = setInterval(f, ms); cleanup.push(() => clearInterval(t)); }

// ---- runs list ----

function parseHashQuery() {
  const i = location.hash.indexOf("?");
  return new URLSearchParams(i < 0 ? "" : location.hash.slice(i + 1));
}

function runsPage() {
  use("runs-template");
  const q = parseHashQuery();
  for (const k of ["job", "state", "since"]) $("filter-" + k).value = q.get(k) || "";
  const tokens = [""];
  let index = 0, next = "";
  $("runs-filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const k of ["job", "state", "since"]) { const v = $("filter-" + k).value; if (v) p.set(k, v); }
    location.hash = "#/runs?" + p.toString();
  });
  const load = async () => {
    const p = new URLSearchParams(q);
    p.set("page_size", "50");
    if (tokens[index]) p.set("page_token", tokens[index]);
    try {
      const data = await api("/api/runs?" + p.toString());
      const body = $("runs-table").tBodies[0];
      body.replaceChildren(...data.runs.map(runRow));
      $("runs-empty").hidden = data.runs.length > 0;
      next = data.next_page_token;
      $("runs-next").disabled = !next;
      $("runs-first").disabled = index === 0;
    } catch (e) { fail($("runs-empty"), e); $("runs-empty").hidden = false; }
  };
  $("runs-next").addEventListener("click", () => { if (next) { tokens[++index] = next; load(); } });
  $("runs-first").addEventListener("click", () => { index = 0; load(); });
  load();
  every(5000, () => { if (index === 0) load(); });
}

function runRow(r) {
  const tr = el("tr");
  tr.setAttribute("data-run", r.run_id);
  const job = el("td"); job.append(link(runLink(r.run_id), r.job_name || "(unnamed)"));
  const st = el("td"); st.append(stateBadge(r.state));
  tr.append(job, st, el("td", r.run_id.slice(0, 12), "mono"), el("td", fmtTime(r.start_time)),
    el("td", fmtDur(r.duration)), el("td", r.tasks_done + "/" + r.task_count));
  return tr;
}

// ---- one run ----

const ACTIVE = ["WAITING", "RUNNING"];
// The log view starts this many bytes from the end of each stream (the whole log is a link).
const LOG_TAIL = 262144;

function runPage(id) {
  use("run-template");
  const tasks = new Map();
  let run = null, selected = null, logAbort = null, es = null;
  const facts = () => {
    $("run-job").textContent = run.job_name;
    const st = $("run-state"); st.textContent = run.state; st.className = "state state-" + run.state;
    $("run-id").textContent = run.run_id;
    $("run-started").textContent = fmtTime(run.start_time);
    $("run-duration").textContent = fmtDur(run.duration);
    const done = [...tasks.values()].filter((t) => !ACTIVE.includes(t.state)).length;
    $("run-progress").textContent = done + "/" + tasks.size + " done";
    $("run-waiting").textContent = run.waiting_reason || "-";
    $("run-cancel").textContent = !run.cancel_reason
      ? "-"
      : run.cancel_reason + (run.cancelled_by ? " (by " + run.cancelled_by + ")" : "");
    $("run-cancel-button").disabled = !ACTIVE.includes(run.state);
    $("run-rerun-button").disabled = !["FAILED", "CANCELLED"].includes(run.state);
  };
  const row = (t) => {
    let tr = t.row;
    if (!tr) {
      tr = t.row = el("tr");
      tr.setAttribute("data-task", t.name);
      tr.addEventListener("click", () => selectTask(t.name));
      for (let i = 0; i < 8; i++) tr.append(el("td"));
      $("tasks-table").tBodies[0].append(tr);
    }
    const c = tr.cells;
    c[0].textContent = t.name;
    c[1].replaceChildren(stateBadge(t.state));
    c[2].textContent = t.attempt || "";
    c[3].textContent = t.agent || "";
    c[4].textContent = fmtTime(t.started);
    c[5].textContent = t.state === "RUNNING" ? "running" : fmtDur(t.duration);
    c[6].textContent = t.return_code === null || t.return_code === undefined ? "" : t.return_code;
    c[7].textContent = t.error_message || "";
    if (selected === t.name) attemptsBar(t.name);
    if (t.node) {
      t.node.setAttribute("class", "node state-" + t.state + (selected === t.name ? " selected" : ""));
      t.node.querySelector("title").textContent = t.name + ": " + t.state;
    }
  };
  const update = (change) => {
    const t = tasks.get(change.name);
    if (!t) return;
    for (const k of ["state", "attempt", "agent", "started", "duration", "return_code", "error_message"]) {
      if (change[k] !== undefined) t[k] = change[k];
    }
    row(t);
  };
  // Events carry states and times; the attempt, the agent and the waiting reason come from the run.
  let refreshing = null;
  const refresh = () => {
    if (refreshing) return;
    refreshing = setTimeout(async () => {
      refreshing = null;
      try {
        const r = await api("/api/runs/" + encodeURIComponent(id));
        run = r;
        for (const t of r.tasks) update(t);
        facts();
      } catch (e) { /* the next event tries again */ }
    }, 300);
    cleanup.push(() => clearTimeout(refreshing));
  };
  // One button per attempt of the selected task; the bold one is shown.
  let shownAttempt, barFor = "";
  const attemptsBar = (name) => {
    const t = tasks.get(name);
    const current = (t && t.attempt) || 0;
    const key = name + "/" + current + "/" + shownAttempt;
    if (key === barFor) return;
    barFor = key;
    $("log-attempts").replaceChildren(...Array.from({ length: current }, (_, i) => {
      const b = el("button", i + 1, i + 1 === (shownAttempt || current) ? "attempt current" : "attempt");
      b.setAttribute("type", "button");
      b.addEventListener("click", () => selectTask(name, i + 1 === current ? undefined : i + 1));
      return b;
    }));
  };
  const selectTask = (name, attempt) => {
    selected = name;
    shownAttempt = attempt;
    for (const t of tasks.values()) row(t);
    $("log-task").textContent = name;
    attemptsBar(name);
    followLog(name, attempt);
  };
  const followLog = async (name, attempt) => {
    if (logAbort) logAbort.abort();
    const abort = logAbort = new AbortController();
    const pre = $("log");
    pre.textContent = "";
    $("log-status").textContent = "(loading)";
    const url = "/api/runs/" + encodeURIComponent(id) + "/tasks/" + encodeURIComponent(name) + "/log" +
      (attempt ? "?attempt=" + attempt : "?follow=1") + "&tail=" + LOG_TAIL;
    const whole = $("log-whole");
    whole.setAttribute("href", url.replace(/[?].*$/, "") + (attempt ? "?attempt=" + attempt : ""));
    try {
      const r = await fetch(url, { credentials: "same-origin", signal: abort.signal });
      if (!r.ok) {
        let data = {}; try { data = await r.json(); } catch (e) { data = {}; }
        if (r.status === 401) { showLogin(data.error); return; }
        $("log-status").textContent = "(" + (data.error || r.statusText) + ")";
        return;
      }
      const note = decodeURIComponent(r.headers.get("x-factotum-log-note") || "");
      const kind = r.headers.get("x-factotum-log") === "tail" ? "output tail kept by the coordinator" + (note ? " (" + note + ")" : "") : "full log";
      $("log-status").textContent = "(" + kind + (attempt ? "" : ", following") + ")";
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        pre.append(dec.decode(value, { stream: true }));
        if (pre.textContent.length > 2000000) pre.textContent = pre.textContent.slice(-1000000);
        pre.scrollTop = pre.scrollHeight;
      }
      if (abort.signal.aborted) return;
      const t = tasks.get(name);
      if (!attempt && t && ACTIVE.includes(t.state) && run && ACTIVE.includes(run.state)) {
        const again = setTimeout(() => { if (selected === name) followLog(name); }, 1000);
        cleanup.push(() => clearTimeout(again));
      }
      $("log-status").textContent = "(" + kind + ", end)";
    } catch (e) {
      if (!abort.signal.aborted) $("log-status").textContent = "(" + e.message + ")";
    }
  };
  const listen = () => {
    es = new EventSource("/api/runs/" + encodeURIComponent(id) + "/events");
    const live = $("run-live");
    live.textContent = "connecting";
    es.addEventListener("open", () => { live.textContent = "live"; });
    es.addEventListener("tasks", (ev) => { for (const c of JSON.parse(ev.data).changes) update(c); facts(); refresh(); });
    es.addEventListener("job", (ev) => { run.state = JSON.parse(ev.data).state; facts(); refresh(); });
    es.addEventListener("snapshot", (ev) => {
      const s = JSON.parse(ev.data);
      run.state = s.state;
      for (const t of s.tasks) update(t);
      facts();
      refresh();
    });
    es.addEventListener("end", async (ev) => {
      es.close();
      const e = JSON.parse(ev.data);
      run.state = e.state;
      live.textContent = "ended";
      try { run = await api("/api/runs/" + encodeURIComponent(id)); for (const t of run.tasks) update(t); } catch (err) { /* kept */ }
      facts();
    });
    es.addEventListener("lagged", (ev) => { live.textContent = "lagging: " + JSON.parse(ev.data).skipped + " lines skipped"; });
    es.addEventListener("failed", (ev) => { es.close(); live.textContent = "watch ended: " + JSON.parse(ev.data).error; });
    es.addEventListener("error", () => {
      if (es.readyState === EventSource.CLOSED) { live.textContent = "disconnected"; api("/api/runs/" + encodeURIComponent(id)).catch(() => {}); }
      else live.textContent = "reconnecting";
    });
    cleanup.push(() => es.close());
  };
  const armed = { cancel: false };
  $("run-cancel-button").addEventListener("click", async () => {
    const b = $("run-cancel-button");
    if (!armed.cancel) {
      armed.cancel = true; b.textContent = "Really cancel?";
      setTimeout(() => { armed.cancel = false; b.textContent = "Cancel run"; }, 5000);
      return;
    }
    armed.cancel = false; b.textContent = "Cancel run";
    try { await api("/api/runs/" + encodeURIComponent(id) + "/cancel", "POST", { reason: "from the web UI" }); $("run-action-result").textContent = "cancelling"; }
    catch (e) { fail($("run-action-result"), e); }
  });
  $("run-rerun-button").addEventListener("click", async () => {
    try {
      const r = await api("/api/runs/" + encodeURIComponent(id) + "/rerun?from_failed=1", "POST");
      location.hash = runLink(r.run_id);
    } catch (e) { fail($("run-action-result"), e); }
  });
  cleanup.push(() => { if (logAbort) logAbort.abort(); });
  (async () => {
    try { run = await api("/api/runs/" + encodeURIComponent(id)); }
    catch (e) { fail($("run-job"), e); return; }
    for (const t of run.tasks) { tasks.set(t.name, Object.assign({}, t)); }
    drawDag($("dag"), run.tasks, tasks, selectTask);
    for (const t of tasks.values()) row(t);
    facts();
    listen();
    const first = run.tasks.find((t) => t.state === "RUNNING") || run.tasks[0];
    if (first) selectTask(first.name);
  })();
}

// The DAG: each task in the column of its longest path from a root, edges as lines.
function drawDag(svg, list, tasks, onClick) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 180, H = 34, DX = 240, DY = 50, PAD = 16;
  const layer = new Map();
  const depth = (name, seen) => {
    if (layer.has(name)) return layer.get(name);
    const t = tasks.get(name);
    if (!t || seen.has(name)) return 0;
    seen.add(name);
    let d = 0;
    for (const dep of t.dependencies || []) d = Math.max(d, depth(dep, seen) + 1);
    layer.set(name, d);
    return d;
  };
  const rows = [];
  const pos = new Map();
  for (const t of list) {
    const l = depth(t.name, new Set());
    rows[l] = (rows[l] || 0) + 1;
    pos.set(t.name, { x: PAD + l * DX, y: PAD + (rows[l] - 1) * DY });
  }
  const mk = (tag, attrs) => { const e = document.createElementNS(NS, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); return e; };
  svg.replaceChildren();
  const defs = mk("defs", {});
  const marker = mk("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto" });
  marker.append(mk("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }));
  defs.append(marker);
  svg.append(defs);
  for (const t of list) {
    const to = pos.get(t.name);
    for (const dep of t.dependencies || []) {
      const from = pos.get(dep);
      if (!from) continue;
      svg.append(mk("line", { x1: from.x + W, y1: from.y + H / 2, x2: to.x, y2: to.y + H / 2, class: "edge", "marker-end": "url(#arrow)" }));
    }
  }
  for (const t of list) {
    const p = pos.get(t.name);
    const g = mk("g", { class: "node state-" + t.state, transform: "translate(" + p.x + "," + p.y + ")" });
    g.setAttribute("data-task", t.name);
    g.append(mk("title", {}));
    g.append(mk("rect", { width: W, height: H, rx: 6 }));
    const label = mk("text", { x: 10, y: H / 2 + 5 });
    label.textContent = t.name.length > 24 ? t.name.slice(0, 23) + "…" : t.name;
    g.append(label);
    g.addEventListener("click", () => onClick(t.name));
    svg.append(g);
    tasks.get(t.name).node = g;
  }
  const width = Math.max(...[...pos.values()].map((p) => p.x), 0) + W + PAD * 2;
  const height = Math.max(...[...pos.values()].map((p) => p.y), 0) + H + PAD * 2;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
}

// ---- agents ----

function agentsPage() {
  use("agents-template");
  const load = async () => {
    let data;
    try { data = await api("/api/agents"); } catch (e) { fail($("agents-empty"), e); $("agents-empty").hidden = false; return; }
    $("agents-table").tBodies[0].replaceChildren(...data.agents.map((a) => {
      const tr = el("tr");
      tr.setAttribute("data-agent", a.agent_id);
      const labels = Object.keys(a.labels).sort().map((k) => k + "=" + a.labels[k]).join(", ");
      const running = el("td");
      for (const r of a.running) {
        const div = el("div");
        div.append(link(runLink(r.run_id), r.job_name + " / " + r.task));
        running.append(div);
      }
      const heard = a.last_heard ? " (heard " + fmtTime(a.last_heard) + ")" : "";
      tr.append(el("td", a.agent_id), el("td", a.hostname + (a.ips.length ? " " + a.ips.join(" ") : "")),
        el("td", labels), el("td", a.in_use + "/" + a.slots + " in use"), running,
        el("td", (a.connected ? "connected" : "cut off, may come back") + heard), el("td", a.version));
      return tr;
    }));
    $("agents-empty").hidden = data.agents.length > 0;
    $("waiting-table").tBodies[0].replaceChildren(...data.waiting.map((w) => {
      const tr = el("tr");
      const r = el("td"); r.append(link(runLink(w.run_id), w.run_id.slice(0, 12)));
      tr.append(r, el("td", w.job_name), el("td", w.waiting_tasks), el("td", w.reason));
      return tr;
    }));
    $("waiting-empty").hidden = data.waiting.length > 0;
  };
  load();
  every(3000, load);
}

// ---- routing ----

function route() {
  stop();
  const h = location.hash || "#/runs";
  $("nav-runs").classList.toggle("current", h.startsWith("#/run"));
  $("nav-agents").classList.toggle("current", h.startsWith("#/agents"));
  if (h.startsWith("#/run/")) runPage(decodeURIComponent(h.slice(6)));
  else if (h.startsWith("#/agents")) agentsPage();
  else runsPage();
}

$("logout").addEventListener("click", async () => {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: { "X-Factotum-CSRF": csrf() } });
  $("logout").hidden = true;
  showLogin();
});

window.addEventListener("hashchange", route);
fetch("/ui/session", { credentials: "same-origin" })
  .then((r) => r.json())
  .then((s) => { $("logout").hidden = !(s.tokens && s.session); })
  .catch(() => {});
route();
