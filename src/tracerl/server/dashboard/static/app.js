// tracerl dashboard: a hash-routed page over the read-only JSON API under /dash/api (see routes.py).
// No framework and no build step: DOM helpers, one fetch wrapper, five views and an SVG line chart.
// Every text that came from an agent is inserted with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "tracerl-token";
const POLL_MS = 3000;
const main = document.getElementById("main");
let refresh = null;          // the current view's re-render function, called by the live poll
let rendering = false;

// -- helpers ----------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) node.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

const fmt = (x, digits = 3) => (x === null || x === undefined) ? "–" : (Number.isInteger(x) ? String(x) : Number(x).toFixed(digits));
const secs = (s) => s === null || s === undefined ? "–" : (s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
const when = (t) => new Date(t * 1000).toLocaleString();

/** Replace the page's content (arrays flattened, null/undefined left out). */
function show(...children) {
  main.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

class Unauthorized extends Error {}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(path, { headers, cache: "no-store" });
  if (res.status === 401) throw new Unauthorized("the server refused the token");
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ? `${body.error.type}: ${body.error.message}` : `HTTP ${res.status}`);
  return body;
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query || "") };
}

function go(parts, params) {
  const q = params && [...params.keys()].length ? `?${params}` : "";
  location.hash = "#/" + parts.map(encodeURIComponent).join("/") + q;
}

// -- login ------------------------------------------------------------------------------------------

const loginForm = document.getElementById("login");
function showLogin(message) {
  show();
  loginForm.hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("token").focus();
}
loginForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = "";
  loginForm.hidden = true;
  route();
});
document.getElementById("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); route(); });

// -- router -----------------------------------------------------------------------------------------

async function route() {
  const { parts, params } = parseHash();
  const views = { "": viewOverview, rollouts: viewRollouts, rollout: viewRollout, run: viewRun, resource: viewResource };
  const view = views[parts[0] || ""] || viewOverview;
  refresh = () => view(parts.slice(1), params, true);
  await render(() => view(parts.slice(1), params, false));
}

async function render(fn) {
  if (rendering) return;
  rendering = true;
  try {
    await fn();
    loginForm.hidden = true;
    document.getElementById("logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
  } catch (e) {
    if (e instanceof Unauthorized) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(had ? "That token was refused by the server." : "");
    } else {
      show(el("p", { class: "error", text: String(e.message || e) }));
    }
  } finally {
    rendering = false;
  }
}

window.addEventListener("hashchange", route);
setInterval(() => {
  const editing = main.contains(document.activeElement) && ["INPUT", "SELECT"].includes(document.activeElement.tagName);
  if (document.visibilityState === "visible" && document.getElementById("live").checked && refresh && loginForm.hidden
      && !editing) {   // never re-render under a filter the user is typing into
    render(refresh);
  }
}, POLL_MS);

// -- overview ---------------------------------------------------------------------------------------

async function viewOverview() {
  const s = await api("/dash/api/summary");
  document.getElementById("store").textContent = s.store;
  const modes = Object.keys(s.counts);
  const statuses = Object.keys(s.counts[modes[0]] || {});
  const head = el("tr", {}, el("th", { text: "mode" }), statuses.map((st) => el("th", { class: "num", text: st })));
  const rows = modes.map((m) => el("tr", {}, el("td", { text: m }), statuses.map((st) =>
    el("td", { class: "num" }, el("a", { href: `#/rollouts?mode=${m}&status=${st}`, text: s.counts[m][st] }))
  )));
  let charts = null;
  if (s.runs.length) charts = await runCharts(s.runs[s.runs.length - 1].path);
  show(
    el("h1", { text: "Overview" }),
    el("h2", { text: "Rollouts" }), el("table", { id: "counts" }, head, rows),
    el("h2", { text: "Runs" }),
    s.runs.length ? el("ul", { id: "runs" }, s.runs.map((r) => el("li", {},
      el("a", { href: `#/run/${encodeURIComponent(r.path)}`, text: r.name }), ` · updated ${when(r.updated_at)}`)))
      : el("p", { class: "muted", text: "No runs: start tracerl serve with --runs DIR (a folder of run folders holding metrics.jsonl)." }),
    charts,
    el("h2", { text: "Resources" }),
    s.resources.length ? el("ul", { id: "resources" }, s.resources.map((n) => el("li", {}, el("a", { href: `#/resource/${encodeURIComponent(n)}`, text: n }))))
      : el("p", { class: "muted", text: "No resources stored yet." }),
  );
}

// -- rollouts table ---------------------------------------------------------------------------------

const COLUMNS = [
  ["rollout_id", "rollout", null], ["status", "status", "status"], ["mode", "mode", null],
  ["reward", "reward", "reward"], ["attempts", "attempts", "attempts"], ["duration_s", "duration", "duration"],
  ["resources_version", "resources v.", "version"], ["created_at", "created", "created"], ["task", "task", null],
];

async function viewRollouts(_, params) {
  const q = new URLSearchParams(params);
  if (!q.get("limit")) q.set("limit", "50");
  const page = await api(`/dash/api/rollouts?${q}`);
  const sort = q.get("sort") || "created", dir = q.get("dir") || "desc";
  const select = (name, options) => el("select", { name, id: `f-${name}` },
    options.map((o) => el("option", { value: o, selected: (q.get(name) || "") === o, text: o || "any" })));
  const form = el("form", { class: "filters", id: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target), next = new URLSearchParams();
    for (const [k, v] of f.entries()) if (v) next.set(k, v);
    if (q.get("sort")) next.set("sort", sort);
    if (q.get("dir")) next.set("dir", dir);
    go(["rollouts"], next);
  } },
    el("label", {}, "status", select("status", ["", "queued", "running", "succeeded", "failed", "cancelled"])),
    el("label", {}, "mode", select("mode", ["", "train", "val"])),
    el("label", {}, "group", el("input", { name: "group", id: "f-group", value: q.get("group") || "", size: 18 })),
    el("label", {}, "resources version", el("input", { name: "version", id: "f-version", value: q.get("version") || "", size: 4 })),
    el("button", { type: "submit", id: "apply" }, "Apply"));
  const header = el("tr", {}, COLUMNS.map(([key, label, sortKey]) => {
    if (!sortKey) return el("th", { text: label });
    const active = sort === sortKey;
    return el("th", {
      class: `sortable${active ? " sorted" : ""}${["reward", "attempts", "duration_s", "resources_version"].includes(key) ? " num" : ""}`,
      "data-sort": sortKey, "data-arrow": active ? (dir === "desc" ? " ▼" : " ▲") : "",
      onclick: () => {
        const next = new URLSearchParams(q);
        next.set("sort", sortKey);
        next.set("dir", active && dir === "desc" ? "asc" : "desc");
        next.set("offset", "0");
        go(["rollouts"], next);
      },
      text: label,
    });
  }));
  const body = page.items.map((r) => el("tr", { class: "rollout-row" },
    el("td", {}, el("a", { href: `#/rollout/${encodeURIComponent(r.rollout_id)}`, text: r.rollout_id })),
    el("td", {}, el("span", { class: `status ${r.status}`, text: r.status })),
    el("td", { text: r.mode }),
    el("td", { class: "num reward", text: fmt(r.reward) }),
    el("td", { class: "num", text: `${r.attempts}/${r.max_attempts}` }),
    el("td", { class: "num", text: secs(r.duration_s) }),
    el("td", { class: "num", text: fmt(r.resources_version) }),
    el("td", { text: when(r.created_at) }),
    el("td", { class: "task", text: r.task })));
  const offset = page.offset, limit = page.limit;
  const move = (to) => { const next = new URLSearchParams(q); next.set("offset", String(to)); go(["rollouts"], next); };
  const pager = el("div", { class: "pager" },
    el("button", { id: "prev", disabled: offset === 0, onclick: () => move(Math.max(0, offset - limit)) }, "‹ previous"),
    el("span", { id: "range", text: page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "no rollouts match" }),
    el("button", { id: "next", disabled: offset + limit >= page.total, onclick: () => move(offset + limit) }, "next ›"));
  show(el("h1", { text: "Rollouts" }), form, pager, el("table", { id: "rollouts" }, header, body));
}

// -- one rollout ------------------------------------------------------------------------------------

async function viewRollout(parts, params, polling) {
  const id = parts.join("/");
  const q = new URLSearchParams();
  for (const k of ["returns", "gamma", "advantage"]) if (params.get(k)) q.set(k, params.get(k));
  const d = await api(`/dash/api/rollouts/${encodeURIComponent(id)}?${q}`);
  const final = ["succeeded", "failed", "cancelled"].includes(d.rollout.status);
  if (polling && final && main.querySelector("#rollout")) return;   // nothing will change: keep what is open
  const r = d.rollout;
  const creditBy = Object.fromEntries(d.credit.calls.map((c) => [c.seq, c]));
  const lastAttempt = d.attempts.length ? d.attempts[d.attempts.length - 1].attempt_id : null;
  const creditForm = el("form", { class: "filters", id: "credit-mode", onchange: (ev) => {
    const f = new FormData(ev.currentTarget), next = new URLSearchParams();
    for (const [k, v] of f.entries()) next.set(k, v);
    go(["rollout", id], next);
  }, onsubmit: (ev) => ev.preventDefault() },
    el("label", {}, "returns", el("select", { name: "returns" }, ["uniform", "discounted", "step", "total"].map((m) =>
      el("option", { value: m, selected: d.credit.mode.returns === m, text: m })))),
    el("label", {}, "γ", el("input", { name: "gamma", value: d.credit.mode.gamma, size: 4 })),
    el("label", {}, "advantage", el("select", { name: "advantage" }, ["grpo", "rloo", "batch"].map((m) =>
      el("option", { value: m, selected: d.credit.mode.advantage === m, text: m })))));
  show(el("div", { id: "rollout" },
    el("h1", {}, "Rollout ", el("code", { text: r.rollout_id })),
    el("div", { class: "cards" },
      card("status", el("span", { class: `status ${r.status}`, text: r.status })), card("reward", fmt(r.reward)),
      card("mode", r.mode), card("attempts", `${r.attempts}/${r.max_attempts}`), card("duration", secs(r.duration_s)),
      card("resources version", fmt(r.resources_version)),
      card("group", el("a", { href: `#/rollouts?group=${encodeURIComponent(r.group_id)}`, text: r.group_id }))),
    r.error ? el("p", { class: "error", text: r.error }) : null,
    el("h2", { text: "Task" }), el("div", { class: "msg", text: JSON.stringify(r.task, null, 2) }),
    el("h2", { text: "Attempts" }), timeline(d.attempts, r.created_at),
    el("h2", { text: "Credit" }), creditForm,
    el("p", { class: d.credit.note ? "muted" : "", id: "credit-note", text: d.credit.note ||
      `final reward ${fmt(d.credit.final_reward)}; group of ${d.credit.group_size}: G = per-call return, A = advantage (last attempt's calls)` }),
    el("p", { class: "muted", id: "credit-source", text: `credit mode: ${d.credit.mode.source}` }),
    d.attempts.map((a) => el("section", { class: "attempt" },
      el("h2", {}, `Attempt ${a.number} `, el("span", { class: `status ${a.status}`, text: a.status }),
        el("span", { class: "muted", text: ` worker ${a.worker_id} · ${secs(a.end - a.started_at)}` })),
      a.error ? el("p", { class: "error", text: a.error }) : null,
      spanTree(a.spans, a.attempt_id === lastAttempt ? creditBy : {})))));
}

const card = (label, value) => el("div", { class: "card" }, el("div", { class: "muted", text: label }), el("div", {}, value));

function timeline(attempts, t0) {
  if (!attempts.length) return el("p", { class: "muted", text: "No attempt yet (queued)." });
  const W = 720, rowH = 22, left = 80, right = 20, top = 10, H = top + attempts.length * rowH + 34;
  const end = Math.max(...attempts.map((a) => a.end)) - t0 || 1;
  const x = (t) => left + (W - left - right) * (t - t0) / end;
  const g = svg("svg", { width: W, height: H, class: "chart", id: "timeline" });
  attempts.forEach((a, i) => {
    const y = top + i * rowH;
    g.append(svg("text", { x: 4, y: y + 14 }, `attempt ${a.number}`));
    const color = { succeeded: "#52b788", failed: "#e5383b", running: "#4d96ff", cancelled: "#c9a227" }[a.status] || "#999";
    g.append(svg("rect", { x: x(a.started_at), y: y + 3, width: Math.max(2, x(a.end) - x(a.started_at)), height: rowH - 8, fill: color },
      svg("title", {}, `${a.status}: ${secs(a.end - a.started_at)}`)));
    for (const s of a.spans) g.append(svg("line", { x1: x(s.start_time), x2: x(s.start_time), y1: y + 2, y2: y + rowH - 3,
      stroke: s.kind === "reward" ? "#1a7f37" : "#1d2330", "stroke-width": 1.5 }, svg("title", {}, `${s.kind} ${s.name}`)));
  });
  const axisY = top + attempts.length * rowH + 4;
  g.append(svg("line", { x1: left, x2: W - right, y1: axisY, y2: axisY, class: "axis" }));
  const { ticks, digits } = niceTicks(0, end, 4);
  for (const t of ticks.filter((t) => t <= end)) {
    g.append(svg("text", { x: x(t0 + t), y: axisY + 14, "text-anchor": "middle" }, t.toFixed(digits)));
  }
  g.append(svg("text", { x: (W + left) / 2, y: axisY + 28, "text-anchor": "middle" }, "seconds since the rollout was enqueued (ticks: spans)"));
  return g;
}

function spanTree(spans, creditBy) {
  if (!spans.length) return el("p", { class: "muted", text: "No spans recorded." });
  const children = new Map();
  const seqs = new Set(spans.map((s) => s.seq));
  for (const s of spans) {
    const parent = s.parent_seq !== null && seqs.has(s.parent_seq) ? s.parent_seq : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(s);
  }
  const list = (parent) => el("ul", { class: "spans" }, (children.get(parent) || []).map((s) =>
    el("li", { class: `span ${s.kind}`, "data-seq": s.seq }, spanBody(s, creditBy[s.seq]), children.has(s.seq) ? list(s.seq) : null)));
  return list(null);
}

function spanBody(s, credit) {
  const head = el("div", { class: "span-head" }, el("span", { class: `kind ${s.kind}`, text: s.kind }), ` #${s.seq} ${s.name || ""}`);
  if (s.kind === "reward") {
    head.append(" ", el("b", { class: "reward-value", text: `= ${fmt(s.attributes.value)}` }));
    return head;
  }
  if (s.kind !== "llm_call") {
    const attrs = JSON.stringify(s.attributes);
    return el("div", {}, head, attrs !== "{}" ? el("div", { class: "msg", text: attrs }) : null);
  }
  const c = s.call;
  head.append(el("span", { class: "muted", text:
    ` · ${c.model || "?"} · weights v${fmt(c.weights_version)} · prompt ${c.prompt_tokens} tok · completion ${c.completion_tokens} tok · ${c.finish_reason || ""}` }));
  if (credit) head.append(" ", el("span", { class: "credit", text: `G = ${fmt(credit.return)}, A = ${fmt(credit.advantage)}` }));
  const details = el("details", { class: "call" }, el("summary", { text: `${c.messages.length} messages → reply` }),
    c.tools.length ? el("p", { class: "muted", text: `tools offered: ${c.tools.join(", ")}` }) : null,
    c.messages.map((m) => el("div", { class: "msg" }, el("span", { class: "role", text: m.role }),
      typeof m.content === "string" ? m.content : JSON.stringify(m.content ?? m.tool_calls ?? ""))));
  const reply = el("div", { class: "msg reply" }, el("span", { class: "role", text: "reply" }), c.reply ?? "");
  const tools = c.tool_calls.map((t) => el("div", { class: "msg toolcall" }, el("span", { class: "role", text: "tool call" }),
    `${t.function?.name}(${t.function?.arguments})`));
  return el("div", {}, head, details, reply, tools, heatStrip(c));
}

function heatStrip(c) {
  if (!c.logprobs.length) return null;
  // colour by p = exp(log-prob): red (p → 0) through yellow to green (p → 1)
  const strip = el("div", { class: "heat", title: "per-token probability of the sampled token: red low, green high" });
  c.logprobs.forEach((lp, i) => {
    const p = Math.exp(lp);
    const text = c.tokens ? c.tokens[i] : `⟨${c.response_ids[i]}⟩`;
    strip.append(el("span", { style: `background: hsl(${Math.round(120 * p)}, 75%, 78%)`,
      title: `token ${c.response_ids[i]} · log-prob ${lp.toFixed(3)} · p ${p.toFixed(3)}`, text }));
  });
  return el("div", {}, el("div", { class: "muted", text: "log-prob heat strip (hover a token for its value)" }), strip);
}

// -- runs and charts --------------------------------------------------------------------------------

const CHARTS = [
  ["reward", "reward", [["train", "reward_mean", "#1f77b4"], ["val", "val_reward", "#ff7f0e"]]],
  ["loss", "loss", [["train", "loss", "#1f77b4"]]],
  ["KL", "KL to reference", [["train", "kl", "#9467bd"]]],
  ["clip fraction", "fraction of tokens clipped", [["train", "clip_fraction", "#8c564b"]]],
  ["tokens/s", "tokens per second", [["train", "tokens_per_s", "#2ca02c"]]],
];

async function runCharts(path) {
  const run = await api(`/dash/api/runs/${path.split("/").map(encodeURIComponent).join("/")}`);
  const charts = CHARTS.map(([title, ylabel, series]) => lineChart(title, ylabel, series.map(([kind, key, color]) => ({
    name: kind === "val" ? "held-out" : "train", color,
    points: run.records.filter((r) => r.kind === kind && typeof r[key] === "number").map((r) => [r.step, r[key]]),
  }))));
  return el("div", {}, el("h2", {}, "Run ", el("code", { text: run.name }), el("span", { class: "muted", text: ` · ${run.records.length} records` })),
    el("div", { class: "charts", id: "charts" }, charts));
}

async function viewRun(parts) {
  show(await runCharts(parts.join("/")));
}

function niceTicks(lo, hi, n = 5) {
  // round steps (1, 2 or 5 × 10^k) from a multiple at or below lo to one at or above hi; digits to print them
  if (lo === hi) { lo -= 1; hi += 1; }
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw * (1 - 1e-9));
  const ticks = [];
  for (let t = Math.floor(lo / step + 1e-9) * step; t <= Math.ceil(hi / step - 1e-9) * step + step * 1e-9; t += step) {
    ticks.push(+t.toPrecision(12));
  }
  return { ticks, digits: Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) };
}

function lineChart(title, ylabel, series) {
  const W = 430, H = 240, L = 62, R = 12, T = 26, B = 40;
  const pts = series.flatMap((s) => s.points);
  const g = svg("svg", { width: W, height: H, class: "chart", "data-title": title });
  g.append(svg("text", { x: L, y: 16, class: "title" }, title));
  if (!pts.length) {
    g.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted" }, "no values logged yet"));
    return g;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const { ticks: yt, digits } = niceTicks(y0, y1), xt = niceTicks(x0, x1).ticks;
  [y0, y1] = [yt[0], yt[yt.length - 1]];
  const sx = (x) => L + (W - L - R) * (x - x0) / (x1 - x0), sy = (y) => H - B - (H - B - T) * (y - y0) / (y1 - y0);
  for (const t of yt) {
    g.append(svg("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid" }));
    g.append(svg("text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end" }, t.toFixed(digits)));
  }
  for (const t of xt.filter((t) => t >= x0 && t <= x1 && Number.isInteger(t))) {
    g.append(svg("text", { x: sx(t), y: H - B + 15, "text-anchor": "middle" }, t));
  }
  g.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }), svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  g.append(svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "xlabel" }, "training step"));
  g.append(svg("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${(T + H - B) / 2})`, class: "ylabel" }, ylabel));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    g.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 1.8, class: "series", "data-series": s.name }));
    if (s.points.length < 40) for (const p of s.points) g.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color }, svg("title", {}, `step ${p[0]}: ${fmt(p[1], 4)}`)));
    if (series.length > 1) {
      g.append(svg("rect", { x: W - R - 90, y: T + i * 16 - 8, width: 10, height: 10, fill: s.color }));
      g.append(svg("text", { x: W - R - 76, y: T + i * 16 + 1 }, s.name));
    }
  });
  return g;
}

// -- resources --------------------------------------------------------------------------------------

async function viewResource(parts) {
  const name = parts.join("/");
  const h = await api(`/dash/api/resources/${encodeURIComponent(name)}`);
  const versions = [...h.versions].reverse();   // newest first
  show(el("h1", {}, "Resource ", el("code", { text: h.name })),
    versions.map((v) => el("section", { class: "version", "data-version": v.version },
      el("h2", {}, `version ${v.version}`, el("span", { class: "muted", text: ` · ${when(v.created_at)}` })),
      el("pre", { class: "diff" }, v.diff.length ? v.diff.map((line) => el("div", {
        class: line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "", text: line })) : "(no change)"))));
}

route();
