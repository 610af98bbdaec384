// llmdock dashboard: vanilla JS, no build step, nothing loaded from elsewhere (the CSP allows only this
// origin). Everything shown comes from the admin API (/admin/v1/...) and /v1 of this gateway.
"use strict";

const S = {
  strings: {},
  lang: "en",
  key: sessionStorage.getItem("llmdock.key") || "",
  page: "",
  timer: null,
  deployments: [],
  phases: {},
  logs: null, // AbortController of the log being followed
  chat: null, // AbortController of the answer being streamed
  history: [],
  planBody: null,
  shown: {}, // page -> the last data drawn, redrawn on a language switch
};
const $ = (id) => document.getElementById(id);
const GiB = 2 ** 30;
const PALETTE = ["#2b6cdf", "#1d8a4e", "#d97706", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#b45309", "#4f46e5", "#0d9488"];
const REFRESH_MS = { deployments: 2000, gpus: 5000, keys: 5000 };

// ---- strings -------------------------------------------------------------------------------------
function t(id, vars) {
  let s = (S.strings[S.lang] || {})[id] ?? (S.strings.en || {})[id] ?? id;
  for (const [k, v] of Object.entries(vars || {})) s = s.split("{" + k + "}").join(String(v));
  return s;
}

function translate() {
  document.documentElement.lang = S.lang === "zh" ? "zh-CN" : "en";
  document.title = t("title");
  for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-placeholder]")) e.placeholder = t(e.dataset.i18nPlaceholder);
  $("lang").value = S.lang;
}

// ---- DOM and HTTP helpers --------------------------------------------------------------------------
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "data") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function call(path, opts = {}) {
  const headers = {};
  if (S.key) headers.Authorization = "Bearer " + S.key;
  const init = { method: opts.method || "GET", headers, signal: opts.signal };
  if (init.method !== "GET") {
    headers["Content-Type"] = "application/json"; // the admin API takes changes only as JSON
    if (opts.body !== undefined) init.body = JSON.stringify(opts.body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(t("err.network", { message: e.message }), 0);
  }
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try {
      message = (await r.json()).error.message || message;
    } catch (_) {
      /* not an error envelope */
    }
    throw new ApiError([401, 403].includes(r.status) ? t("err.auth", { message }) : message, r.status);
  }
  return opts.raw ? r : r.json();
}

let noticeTimer = null;
function notice(text, error) {
  const box = $("status");
  box.textContent = text;
  box.className = error ? "error" : "";
  box.hidden = false;
  clearTimeout(noticeTimer);
  if (!error) noticeTimer = setTimeout(() => (box.hidden = true), 5000);
}

function failed(e) {
  if (e && e.name === "AbortError") return;
  notice(e.message || String(e), true);
}

function confirmThen(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

function colour(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

function size(n) {
  return n >= GiB ? (n / GiB).toFixed(1) + " GiB" : Math.round(n / 2 ** 20) + " MiB";
}

function clock(epoch, withDay) {
  const d = new Date(epoch * 1000);
  const hm = d.toTimeString().slice(0, 5);
  return withDay ? d.getMonth() + 1 + "/" + d.getDate() + " " + hm : hm;
}

function shellJoin(argv) {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : "'" + a.replace(/'/g, "'\\''") + "'")).join(" ");
}

// ---- pages ---------------------------------------------------------------------------------------
const PAGES = {
  deployments: loadDeployments,
  gpus: loadGpus,
  logs: loadLogsPage,
  chat: loadChat,
  keys: loadKeys,
  plan: () => {},
};

function show(page) {
  if (!PAGES[page]) page = "deployments";
  if (S.page === "logs" && page !== "logs") stopLogs();
  S.page = page;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== "page-" + page;
  clearInterval(S.timer);
  refresh();
  if (REFRESH_MS[page]) S.timer = setInterval(refresh, REFRESH_MS[page]);
}

async function refresh() {
  const page = S.page;
  try {
    await PAGES[page]();
  } catch (e) {
    failed(e);
  }
}

// ---- deployments -----------------------------------------------------------------------------------
async function loadDeployments() {
  const [deps, phases] = await Promise.all([call("/admin/v1/deployments"), call("/admin/v1/phases")]);
  S.deployments = deps;
  S.phases = phases;
  drawDeployments();
}

function drawDeployments() {
  const deps = S.deployments;
  $("deployments").replaceChildren(...deps.map(deploymentRow));
  $("deployments-empty").hidden = deps.length > 0;
  $("deployments-updated").textContent = t("updated", { time: new Date().toLocaleTimeString() });
}

function deploymentRow(d) {
  // d.status is the gateway's one derivation (llmdock.states.derive): ready, starting, unhealthy, stopped…
  const running = d.state === "running";
  const last = S.phases[d.name];
  const code = d.status === "failed" && d.exit_code !== null ? " (" + d.exit_code + ")" : "";
  const tone = { ready: "ok", starting: "warn", pending: "warn", stopping: "warn", stopped: "" }[d.status];
  const state = el("span", { class: "badge " + (tone ?? "bad"), text: t("status." + d.status) + code });
  let phase;
  if (d.healthy && running) phase = el("span", { class: "badge ok", text: t("dep.ready") });
  else if (running) phase = el("span", { class: "badge warn", text: last || t("dep.starting") });
  else if (last === "failed") phase = el("span", { class: "badge bad", text: last });
  else phase = el("span", { class: "muted", text: "—" });
  const model = d.group || d.name;
  const url = el(
    "td",
    {},
    el("code", { text: location.origin + "/v1" }),
    el("div", { class: "muted", text: t("dep.model") + " " + model + (d.port ? " · " + t("dep.engine_url") + " http://127.0.0.1:" + d.port + "/v1" : "") })
  );
  const act = (action, label, cls) => el("button", { class: "small " + (cls || ""), data: { action }, text: t(label), onclick: () => lifecycle(action, d) });
  return el(
    "tr",
    { data: { name: d.name } },
    el("td", {}, el("b", { text: d.name }), d.group && d.group !== d.name ? el("div", { class: "muted", text: d.group }) : null),
    el("td", {}, state),
    el("td", { class: "phase" }, phase),
    el("td", { text: d.engine + (d.runtime === "local" ? " (local)" : "") }),
    el("td", { text: d.gpus.length ? d.gpus.join(",") : t("dep.cpu") }),
    url,
    el(
      "td",
      {},
      running ? act("stop", "act.stop", "quiet") : act("start", "act.start"),
      act("rm", "act.rm", "danger"),
      act("logs", "act.logs", "quiet"),
      running ? act("chat", "act.chat", "quiet") : null
    )
  );
}

async function lifecycle(action, d) {
  const name = d.name;
  const path = "/admin/v1/deployments/" + encodeURIComponent(name);
  if (action === "logs") return go("logs", name);
  if (action === "chat") return go("chat", d.group || name);
  if (!(await confirmThen(t("confirm." + action, { name })))) return;
  try {
    if (action === "rm") await call(path + (d.state === "running" ? "?force=true" : ""), { method: "DELETE" });
    else await call(path + "/" + action, { method: "POST", body: {} });
    notice(t("done." + action, { name }));
  } catch (e) {
    failed(e);
  }
  refresh();
}

function go(page, value) {
  S.pick = value;
  location.hash = "#" + page;
}

// ---- GPUs ----------------------------------------------------------------------------------------
async function loadGpus() {
  S.shown.gpus = await call("/admin/v1/inventory");
  drawGpus();
}

function drawGpus() {
  const inv = S.shown.gpus;
  if (!inv) return;
  const cards = inv.gpus.map((g) =>
    memoryCard(el("span", {}, "GPU " + g.index + " · " + g.name), g.total, g.total - g.free, g.deployments, g.other)
  );
  if (!inv.gpus.length) cards.push(el("p", { class: "empty", id: "no-gpu", text: t("gpu.none") }));
  const h = inv.host;
  cards.push(memoryCard(el("span", {}, t("gpu.host")), h.total, h.total - h.available, h.deployments, h.other));
  $("gpus").replaceChildren(...cards);
}

function memoryCard(title, total, used, shares, other) {
  const bar = el("div", { class: "bar" });
  const legend = el("div", { class: "legend" });
  for (const s of shares) {
    const seg = el("span", { title: s.deployment + ": " + size(s.bytes), data: { deployment: s.deployment } });
    seg.style.width = (100 * s.bytes) / (total || 1) + "%";
    seg.style.background = colour(s.deployment);
    bar.append(seg);
    const dot = el("i");
    dot.style.background = colour(s.deployment);
    legend.append(el("span", {}, dot, s.deployment + " " + size(s.bytes)));
  }
  if (other > 0) {
    const seg = el("span", { class: "other", title: t("gpu.other") + ": " + size(other) });
    seg.style.width = (100 * other) / (total || 1) + "%";
    bar.append(seg);
    legend.append(el("span", {}, el("i", { class: "other" }), t("gpu.other") + " " + size(other)));
  }
  legend.append(el("span", {}, el("i", { class: "free" }), t("gpu.free") + " " + size(Math.max(total - used, 0))));
  return el("div", { class: "gpu" }, el("h3", {}, title, el("span", { class: "muted", text: t("gpu.used_of", { used: size(used), total: size(total) }) })), bar, legend);
}

// ---- logs ----------------------------------------------------------------------------------------
async function loadLogsPage() {
  const deps = await call("/admin/v1/deployments");
  const select = $("logs-name");
  const want = S.pick || select.value;
  select.replaceChildren(...deps.map((d) => el("option", { value: d.name, text: d.name })));
  if (deps.some((d) => d.name === want)) select.value = want;
  if (S.pick) {
    S.pick = null;
    followLogs();
  }
}

function stopLogs() {
  if (S.logs) S.logs.abort();
  S.logs = null;
  $("logs-stop").disabled = true;
}

async function followLogs() {
  stopLogs();
  const name = $("logs-name").value;
  if (!name) return;
  const out = $("logs-out");
  out.textContent = "";
  const follow = $("logs-follow").checked;
  const ctl = new AbortController();
  S.logs = ctl;
  $("logs-stop").disabled = !follow;
  $("logs-state").textContent = follow ? t("logs.following") : "";
  const query = "?tail=" + encodeURIComponent($("logs-tail").value || "200") + (follow ? "&follow=true" : "");
  try {
    const r = await call("/admin/v1/deployments/" + encodeURIComponent(name) + "/logs" + query, { raw: true, signal: ctl.signal });
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 20;
      out.append(decoder.decode(value, { stream: true }));
      if (out.textContent.length > 400000) out.textContent = out.textContent.slice(-300000);
      if (atEnd) out.scrollTop = out.scrollHeight;
    }
    if (S.logs === ctl) $("logs-state").textContent = t("logs.ended");
  } catch (e) {
    failed(e);
  } finally {
    if (S.logs === ctl) stopLogs();
  }
}

// ---- playground ----------------------------------------------------------------------------------
async function loadChat() {
  const models = (await call("/v1/models")).data;
  const select = $("chat-model");
  const want = S.pick || select.value;
  S.pick = null;
  select.replaceChildren(
    ...models.map((m) => el("option", { value: m.id, text: m.id + (m.llmdock && !m.llmdock.ready ? " (" + t("dep.not_ready") + ")" : "") }))
  );
  if (models.some((m) => m.id === want)) select.value = want;
  if (!models.length) $("chat-usage").textContent = t("chat.no_models");
}

function chatMessage(role, text) {
  const body = el("div", { class: "text", text });
  const msg = el("div", { class: "msg " + role, data: { role } }, el("div", { class: "who", text: t(role === "user" ? "chat.you" : "chat.assistant") }), body);
  $("chat-log").append(msg);
  return body;
}

async function sendChat(ev) {
  ev.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  const model = $("chat-model").value;
  if (!text || !model || S.chat) return;
  input.value = "";
  S.history.push({ role: "user", content: text });
  chatMessage("user", text);
  const answer = chatMessage("assistant", "");
  const log = $("chat-log");
  const ctl = new AbortController();
  S.chat = ctl;
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  $("chat-usage").textContent = "";
  const body = { model, messages: S.history, stream: true, stream_options: { include_usage: true }, max_tokens: Number($("chat-max").value) || 64 };
  try {
    const r = await call("/v1/chat/completions", { method: "POST", body, raw: true, signal: ctl.signal });
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const event = JSON.parse(data);
        if (event.error) throw new ApiError(event.error.message, 0);
        const delta = event.choices && event.choices[0] && event.choices[0].delta;
        if (delta && delta.content) {
          answer.textContent += delta.content;
          answer.parentElement.dataset.chunks = Number(answer.parentElement.dataset.chunks || 0) + 1;
          log.scrollTop = log.scrollHeight;
        }
        if (event.usage) $("chat-usage").textContent = t("chat.usage", { prompt: event.usage.prompt_tokens, completion: event.usage.completion_tokens });
      }
    }
    answer.parentElement.dataset.done = "true";
  } catch (e) {
    failed(e);
  } finally {
    S.history.push({ role: "assistant", content: answer.textContent });
    S.chat = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
}

// ---- keys and usage ------------------------------------------------------------------------------
async function loadKeys() {
  const range = Number($("usage-range").value);
  const step = range <= 3600 ? 60 : range <= 86400 ? 1800 : 21600;
  const since = Math.floor(Date.now() / 1000) - range;
  const [keys, totals, series] = await Promise.all([
    call("/admin/v1/keys"),
    call("/admin/v1/usage?since=" + since),
    call("/admin/v1/usage/series?since=" + since + "&step=" + step),
  ]);
  S.shown.keys = { keys, totals, series, since, range };
  drawKeys();
}

function drawKeys() {
  const data = S.shown.keys;
  if (!data) return;
  const { keys, totals, series, since, range } = data;
  const keyName = (k) => (k === "-" ? t("usage.nokey") : k);
  $("usage-table").replaceChildren(
    ...totals.map((u) =>
      el(
        "tr",
        { data: { key: u.key, model: u.model } },
        el("td", { text: keyName(u.key) }),
        el("td", { text: u.model }),
        ...[u.requests, u.errors, u.prompt_tokens, u.completion_tokens].map((n) => el("td", { class: "num", text: n.toLocaleString() }))
      )
    )
  );
  $("usage-empty").hidden = totals.length > 0;
  const metric = $("usage-metric").value;
  $("usage-charts").replaceChildren(...series.series.map((s) => chart(s, series.step, since, range, metric, keyName)));
  $("keys").replaceChildren(
    ...keys.map((k) =>
      el(
        "tr",
        { data: { name: k.name } },
        el("td", { text: k.name }),
        el("td", {}, el("code", { text: k.prefix + "…" })),
        el("td", { text: k.models.length ? k.models.join(", ") : t("keys.all") }),
        el("td", { text: limits(k) }),
        el("td", { class: "num", text: k.usage ? k.usage.tokens_today.toLocaleString() : "—" }),
        el("td", { text: k.admin ? "✓" : "" }),
        el("td", { text: new Date(k.created_at * 1000).toLocaleString() }),
        el("td", {}, el("button", { class: "small danger", text: t("keys.revoke"), onclick: () => revoke(k.name) }))
      )
    )
  );
  $("keys-empty").hidden = keys.length > 0;
}

function chart(s, step, since, range, metric, keyName) {
  // One bar per bucket over the whole range (empty buckets drawn as gaps), drawn as plain SVG.
  const value = (p) => (metric === "tokens" ? p[3] + p[4] : metric === "errors" ? p[2] : p[1]);
  const first = Math.floor(since / step) * step;
  const n = Math.ceil(range / step) + 1;
  const buckets = new Array(n).fill(0);
  for (const p of s.points) {
    const i = Math.round((p[0] - first) / step);
    if (i >= 0 && i < n) buckets[i] += value(p);
  }
  const max = Math.max(1, ...buckets);
  const W = 360, H = 150, L = 36, R = 6, T = 8, B = 20;
  const pw = W - L - R, ph = H - T - B, bw = pw / n;
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", preserveAspectRatio: "none" });
  for (const f of [0.5, 1]) g.append(svg("line", { class: "grid-line", x1: L, x2: W - R, y1: T + ph * (1 - f), y2: T + ph * (1 - f) }));
  g.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: T + ph, y2: T + ph }));
  g.append(svg("text", { x: L - 4, y: T + 8, "text-anchor": "end" }, max.toLocaleString()));
  g.append(svg("text", { x: L - 4, y: T + ph, "text-anchor": "end" }, "0"));
  buckets.forEach((v, i) => {
    if (!v) return;
    const h = Math.max((ph * v) / max, 1);
    const bar = svg("rect", { class: "v", x: L + i * bw + bw * 0.1, y: T + ph - h, width: Math.max(bw * 0.8, 1), height: h });
    bar.append(svg("title", {}, `${clock(first + i * step, range > 86400)}: ${v}`));
    g.append(bar);
  });
  const day = range > 86400;
  for (const [f, anchor] of [[0, "start"], [0.5, "middle"], [1, "end"]]) {
    g.append(svg("text", { x: L + pw * f, y: H - 5, "text-anchor": anchor }, clock(first + f * (n - 1) * step, day)));
  }
  const total = buckets.reduce((a, b) => a + b, 0);
  return el(
    "div",
    { class: "chart", data: { key: s.key, model: s.model } },
    el("h3", {}, keyName(s.key) + " · " + s.model + " ", el("span", { class: "total", text: "Σ " + total.toLocaleString() + " " + t("usage." + metric) })),
    g
  );
}

const LIMITS = ["tokens_per_day", "tokens_per_month", "rpm", "tpm", "max_concurrent"];

function limits(k) {
  const set = LIMITS.filter((n) => k[n]).map((n) => t("keys." + n) + " " + k[n].toLocaleString());
  return set.length ? set.join(" · ") : t("keys.unlimited");
}

async function revoke(name) {
  if (!(await confirmThen(t("confirm.revoke", { name })))) return;
  try {
    await call("/admin/v1/keys/" + encodeURIComponent(name), { method: "DELETE" });
  } catch (e) {
    failed(e);
  }
  refresh();
}

async function createKey(ev) {
  ev.preventDefault();
  const models = $("key-models").value.split(",").map((m) => m.trim()).filter(Boolean);
  const number = (id) => ($(id).value ? Number($(id).value) : null);
  const body = { name: $("key-name").value, models, rpm: number("key-rpm"), tokens_per_day: number("key-tpd"), admin: $("key-admin").checked };
  try {
    const made = await call("/admin/v1/keys", { method: "POST", body });
    $("key-new-value").textContent = made.key;
    $("key-new").hidden = false;
    $("key-form").reset();
  } catch (e) {
    failed(e);
  }
  refresh();
}

// ---- plan ----------------------------------------------------------------------------------------
function planBody() {
  const body = {};
  for (const input of $("plan-form").elements) {
    if (!input.name || input.value.trim() === "") continue;
    body[input.name] = input.type === "number" ? Number(input.value) : input.value.trim();
  }
  return body;
}

async function runPlan(ev) {
  ev.preventDefault();
  const body = planBody();
  $("plan-up").disabled = true;
  try {
    S.shown.plan = { result: await call("/admin/v1/plan", { method: "POST", body }), body };
    drawPlan();
  } catch (e) {
    failed(e);
  }
}

function drawPlan() {
  if (!S.shown.plan) return;
  const { result, body } = S.shown.plan;
  const members = result.members.length ? result.members : [result];
  const out = [];
  for (const p of members) {
    const where = p.gpus.length ? "GPU " + p.gpus.join(",") : t("dep.cpu");
    const blocked = p.blocking.length > 0;
    out.push(
      el(
        "p",
        { class: "verdict " + (blocked ? "bad" : "ok"), data: { verdict: blocked ? "cannot" : "would" } },
        el("b", { text: t(blocked ? "plan.cannot" : "plan.would") }),
        " " + p.name + ": " + t("plan.on", { engine: p.engine, where, port: p.port })
      )
    );
    const host = p.problems.filter((x) => !p.blocking.includes(x));
    out.push(
      el(
        "ul",
        { class: "problems" },
        p.blocking.map((x) => el("li", { class: "bad", text: "✗ " + x })),
        host.map((x) => el("li", { class: "warn", text: "! " + x }))
      )
    );
  }
  if (body.assume_gpus) out.push(el("p", { class: "muted", text: t("plan.whatif") }));
  const fit = result.fit;
  if (fit && fit.per_gpu) {
    out.push(el("h2", { text: t("plan.memory") }));
    out.push(
      el("p", {}, t("plan.fit", { tp: fit.tensor_parallel_size, len: fit.max_model_len.toLocaleString(), kv: fit.kv_tokens.toLocaleString(), seqs: fit.concurrent_seqs.toFixed(1) }))
    );
    const cols = ["total", "budget", "weights", "activation", "vision", "runtime", "cuda_graph", "kv_cache"];
    out.push(memoryTable(["mem.gpu", ...cols.map((c) => "mem." + c)], fit.per_gpu.map((g) => [String(g.index), ...cols.map((c) => g[c])])));
  } else if (fit && fit.host_memory) {
    out.push(el("h2", { text: t("plan.host_memory") }));
    const m = fit.host_memory;
    const cols = ["weights", "kv_cache", "runtime", "need", "available", "total"];
    out.push(memoryTable(cols.map((c) => "mem." + c), [cols.map((c) => m[c])]));
  }
  const notes = [...result.notes, ...((fit && fit.notes) || [])];
  if (notes.length) out.push(el("h2", { text: t("plan.notes") }), el("ul", { class: "problems" }, notes.map((x) => el("li", { class: "note", text: x }))));
  out.push(el("h2", { text: t("plan.command") }), el("pre", { class: "cmd", text: shellJoin(result.command) }));
  if (result.docker_run) out.push(el("h2", { text: t("plan.docker") }), el("pre", { class: "cmd", text: result.docker_run }));
  $("plan-out").replaceChildren(...out);
  const startable = !members.some((p) => p.blocking.length) && !body.assume_gpus;
  $("plan-up").disabled = !startable;
  S.planBody = startable ? body : null;
}

function memoryTable(headers, rows) {
  return el(
    "table",
    { class: "grid memory" },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { class: "num", text: t(h) })))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((v) => el("td", { class: "num", text: typeof v === "number" ? (v / GiB).toFixed(1) : v })))))
  );
}

async function startPlanned() {
  const body = S.planBody;
  if (!body) return;
  const name = S.shown.plan.result.name;
  if (!(await confirmThen(t("confirm.up", { name })))) return;
  try {
    await call("/admin/v1/deployments", { method: "POST", body: { ...body, wait: false } });
    notice(t("done.up", { name }));
    location.hash = "#deployments";
  } catch (e) {
    failed(e);
  }
}

// ---- start ---------------------------------------------------------------------------------------
function redraw() {
  translate();
  $("status").hidden = true; // a notice in the other language
  if (S.page === "deployments") drawDeployments();
  if (S.page === "gpus") drawGpus();
  if (S.page === "keys") drawKeys();
  if (S.page === "plan") drawPlan();
}

async function main() {
  S.strings = await (await fetch("/ui/i18n.json")).json();
  const chosen = localStorage.getItem("llmdock.lang");
  S.lang = chosen in S.strings ? chosen : document.documentElement.lang.startsWith("zh") ? "zh" : "en";
  $("api-key").value = S.key;
  translate();
  $("lang").addEventListener("change", () => {
    S.lang = $("lang").value;
    localStorage.setItem("llmdock.lang", S.lang);
    redraw();
  });
  $("key-save").addEventListener("click", () => {
    S.key = $("api-key").value.trim();
    sessionStorage.setItem("llmdock.key", S.key);
    notice(t("key.saved"));
    refresh();
  });
  $("key-forget").addEventListener("click", () => {
    S.key = "";
    $("api-key").value = "";
    sessionStorage.removeItem("llmdock.key");
  });
  $("logs-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    followLogs();
  });
  $("logs-stop").addEventListener("click", () => {
    stopLogs();
    $("logs-state").textContent = "";
  });
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) sendChat(ev);
  });
  $("chat-stop").addEventListener("click", () => S.chat && S.chat.abort());
  $("chat-clear").addEventListener("click", () => {
    S.history = [];
    $("chat-log").replaceChildren();
    $("chat-usage").textContent = "";
  });
  $("usage-range").addEventListener("change", refresh);
  $("usage-metric").addEventListener("change", drawKeys);
  $("key-form").addEventListener("submit", createKey);
  $("plan-form").addEventListener("submit", runPlan);
  $("plan-up").addEventListener("click", startPlanned);
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  show(location.hash.slice(1));
}

main().catch(failed);
