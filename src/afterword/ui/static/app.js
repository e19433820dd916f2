// afterword review UI. Every piece of text from the store is rendered with
// textContent (never innerHTML), so conversation content cannot become markup.
"use strict";

const state = { items: [], index: -1, detail: null, correcting: false, view: "queue" };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function csrf() {
  const m = document.cookie.match(/(?:^|;\s*)aw_csrf=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : "";
}

async function api(path, body) {
  const opts = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = csrf();
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = (data.error && data.error.message) || r.statusText;
    if (r.status === 401) showLogin();
    throw new Error(msg);
  }
  return data;
}

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 1800);
}

function showLogin() {
  $("login").hidden = false;
  $("queue-view").hidden = true;
  $("dash-view").hidden = true;
}

// -- queue --------------------------------------------------------------------

function filters() {
  const p = new URLSearchParams();
  for (const [id, name] of [["f-label", "label"], ["f-reason", "reason"], ["f-user", "user"], ["f-q", "q"]]) {
    const v = $(id).value.trim();
    if (v) p.set(name, v);
  }
  return p.toString();
}

async function loadQueue(keepId) {
  const data = await api("/api/queue?" + filters());
  state.items = data.items;
  $("count").textContent = `${data.total} to review`;
  renderQueue();
  let i = keepId ? state.items.findIndex((x) => x.message_id === keepId) : -1;
  if (i < 0) i = Math.min(Math.max(state.index, 0), state.items.length - 1);
  await select(i);
}

function renderQueue() {
  const ol = $("queue");
  ol.replaceChildren();
  state.items.forEach((it, i) => {
    const label = it.label || "unjudged";
    const li = el(
      "li",
      { "data-id": it.message_id, onclick: () => select(i) },
      el("div", { class: "req", text: it.prompt || "(no request)" }),
      el("div", { class: "resp", text: it.response }),
      el(
        "div",
        { class: "meta" },
        el("span", { class: "pill " + label, text: label }),
        el("span", { text: `priority ${it.priority.toFixed(2)}` }),
        el("span", { text: it.reason }),
        el("span", { text: it.user_id || "" }),
      ),
    );
    ol.append(li);
  });
}

async function select(i) {
  state.correcting = false;
  if (i < 0 || i >= state.items.length) {
    state.index = -1;
    state.detail = null;
    $("detail").replaceChildren(el("p", { class: "muted", text: "The queue is empty. Nothing left to review." }));
    return;
  }
  state.index = i;
  for (const li of $("queue").children) li.classList.toggle("sel", li.dataset.id === state.items[i].message_id);
  $("queue").children[i].scrollIntoView({ block: "nearest" });
  const seq = (state.seq = (state.seq || 0) + 1);
  const detail = await api("/api/item/" + encodeURIComponent(state.items[i].message_id));
  if (seq !== state.seq) return; // a later selection won
  state.detail = detail;
  renderDetail();
}

function renderDetail() {
  const d = state.detail;
  const box = $("detail");
  box.replaceChildren();
  box.append(el("h3", { text: "Conversation" }, el("span", { class: "muted", text: `  user ${d.user_id || "?"}` })));
  for (const m of d.messages) {
    const cls = ["msg", m.role, m.target ? "target" : "", m.evidence ? "evidence" : ""].join(" ");
    const head = el("span", { class: "role", text: m.role + (m.target ? " · under review" : "") });
    if (m.evidence) head.append(el("span", { class: "tag", text: "evidence" }));
    box.append(el("div", { class: cls, "data-id": m.id }, head, el("span", { class: "content", text: m.content })));
  }
  for (const r of d.review_items) {
    const detail = r.detail ? JSON.stringify(r.detail) : "";
    box.append(el("p", { class: "muted", text: `Queued: ${r.reason} ${detail}` }));
  }
  box.append(el("h3", { text: "Judgments" }));
  const t = el("table", {}, el("tr", {}, ...["source", "label", "score", "confidence", "evidence"].map((h) => el("th", { text: h }))));
  for (const j of d.judgments) {
    const ev = el("ul", {});
    for (const e of j.evidence) ev.append(el("li", { text: `${e.signal} (${Number(e.weight).toFixed(2)})${e.detail ? ": " + e.detail : ""}` }));
    t.append(el("tr", {}, el("td", { text: j.source }), el("td", {}, el("span", { class: "pill " + j.label, text: j.label })),
      el("td", { text: j.score.toFixed(2) }), el("td", { text: j.confidence.toFixed(2) }), el("td", {}, ev)));
  }
  box.append(t);
  if (d.feedback.length) {
    box.append(el("h3", { text: "Feedback" }));
    for (const f of d.feedback) box.append(el("p", { text: `${f.kind} (${f.source}): ${f.correction || f.comment || f.thumbs || f.rating || ""}` }));
  }
  const actions = el(
    "div",
    { class: "actions" },
    el("button", { class: "primary", id: "btn-accept", type: "button", onclick: acceptItem, text: "Accept (a)" }),
    el("button", { id: "btn-l1", type: "button", onclick: () => labelItem("dissatisfied"), text: "Dissatisfied (1)" }),
    el("button", { id: "btn-l2", type: "button", onclick: () => labelItem("neutral"), text: "Neutral (2)" }),
    el("button", { id: "btn-l3", type: "button", onclick: () => labelItem("satisfied"), text: "Satisfied (3)" }),
    el("button", { id: "btn-correct", type: "button", onclick: openCorrection, text: "Correct (c)" }),
    el("button", { id: "btn-skip", type: "button", onclick: skip, text: "Skip (s)" }),
  );
  box.append(actions);
}

function openCorrection() {
  const it = current();
  if (!state.detail || !it || state.detail.message_id !== it.message_id || state.correcting) return;
  state.correcting = true;
  const ta = el("textarea", { id: "correction", placeholder: "The right answer… (Ctrl+Enter to save, Esc to cancel)" });
  const save = el("button", { class: "primary", id: "btn-save", type: "button", text: "Save correction", onclick: saveCorrection });
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); saveCorrection(); }
    if (e.key === "Escape") { state.correcting = false; renderDetail(); }
  });
  $("detail").append(ta, el("div", { class: "actions" }, save));
  ta.focus();
}

async function done(promise, message) {
  try {
    await promise;
    toast(message);
    const next = state.items[state.index + 1];
    await loadQueue(next ? next.message_id : null);
  } catch (e) {
    toast("Error: " + e.message);
  }
}

function current() { return state.items[state.index]; }
function acceptItem() { const it = current(); if (it) done(api(`/api/item/${encodeURIComponent(it.message_id)}/accept`, {}), "Accepted"); }
function labelItem(label) { const it = current(); if (it) done(api(`/api/item/${encodeURIComponent(it.message_id)}/label`, { label }), "Labelled " + label); }
function saveCorrection() {
  const it = current();
  const text = $("correction") ? $("correction").value.trim() : "";
  if (!it || !text) return;
  state.correcting = false;
  done(api(`/api/item/${encodeURIComponent(it.message_id)}/correct`, { text }), "Correction saved");
}
function skip() { if (state.index + 1 < state.items.length) select(state.index + 1); else toast("End of queue"); }

// -- dashboard ----------------------------------------------------------------

async function loadDashboard() {
  const box = $("dash");
  box.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  const d = await api("/api/dashboard");
  box.replaceChildren();
  const s = d.stats;
  const cards = el("div", { class: "cards" });
  const cmp = d.comparison ? d.comparison.summary : null;
  for (const [k, v] of [["conversations", s.conversations], ["judgments", s.judgments], ["clusters", d.clusters.clusters.length],
    ["memories", d.memory.memories], ["repeat-mistake rate", cmp && cmp.repeat_mistake_rate_b !== null ? Math.round(cmp.repeat_mistake_rate_b * 100) + "%" : "–"]]) {
    cards.append(el("div", { class: "card" }, el("b", { text: String(v) }), k));
  }
  box.append(cards);
  const sections = [["satisfaction", "Satisfaction over time"], ["clusters", "Failure clusters"], ["memory", "Memory usefulness"],
    ["comparison", "Eval comparison"], ["tandem", "Tandem accuracy"]];
  for (const [key, title] of sections) {
    box.append(el("h3", { text: title }));
    const uri = d.plots[key];
    if (uri && uri.startsWith("data:image/png;base64,")) {
      const img = el("img", { alt: title });
      img.src = uri;
      box.append(img);
    } else {
      box.append(el("p", { class: "muted", text: "Nothing to show yet." }));
    }
  }
  if (d.clusters.clusters.length) {
    const t = el("table", {}, el("tr", {}, ...["cluster", "size", "examples"].map((h) => el("th", { text: h }))));
    for (const c of d.clusters.clusters) t.append(el("tr", {}, el("td", { text: c.name }), el("td", { text: String(c.size) }), el("td", { text: c.examples.join(" | ") })));
    box.append(t);
  }
}

function show(view) {
  state.view = view;
  $("queue-view").hidden = view !== "queue";
  $("dash-view").hidden = view !== "dash";
  $("tab-queue").classList.toggle("active", view === "queue");
  $("tab-dash").classList.toggle("active", view === "dash");
  if (view === "dash") loadDashboard().catch((e) => toast("Error: " + e.message));
}

// -- keyboard -----------------------------------------------------------------

document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (typing || e.ctrlKey || e.metaKey || e.altKey || state.view !== "queue" || !$("login").hidden) return;
  const keys = {
    j: () => select(Math.min(state.index + 1, state.items.length - 1)),
    k: () => select(Math.max(state.index - 1, 0)),
    a: acceptItem,
    "1": () => labelItem("dissatisfied"),
    "2": () => labelItem("neutral"),
    "3": () => labelItem("satisfied"),
    c: openCorrection,
    s: skip,
    "/": () => $("f-q").focus(),
  };
  const fn = keys[e.key];
  if (fn) { e.preventDefault(); fn(); }
});

function init() {
  $("tab-queue").addEventListener("click", () => show("queue"));
  $("tab-dash").addEventListener("click", () => show("dash"));
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); state.index = 0; loadQueue(); });
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("/api/login", { key: $("login-key").value, name: $("login-name").value });
      $("login").hidden = true;
      $("login-error").textContent = "";
      await boot();
    } catch (err) {
      $("login-error").textContent = err.message;
    }
  });
}

async function boot() {
  const s = await api("/api/session");
  if (s.auth_required && !s.signed_in) { showLogin(); return; }
  $("who").textContent = s.reviewer ? "reviewing as " + s.reviewer : "";
  show("queue");
  await loadQueue();
  document.body.dataset.ready = "1";
}

init();
boot().catch((e) => toast("Error: " + e.message));
