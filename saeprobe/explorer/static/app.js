// saeprobe explorer front end: talks to the local JSON API only (no network, no CDN).
// The page state (model, task, setting, query, open card, table filters) lives in the URL.
"use strict";

const state = {
  model: null, task: null, ablate: new Set(), op: "subtract", whiten: "none", alpha: 0.1,
  sides: "both", query: 0, card: null, tag: "", search: "", sort: "rank", desc: null,
  run: null, info: null, features: [], scatter: null, seq: { eval: 0, sweep: 0, query: 0, feats: 0, card: 0 },
  lastSweepKey: "",
};
const $ = (id) => document.getElementById(id);
const METRIC_ROWS = [];
const fmt = View.fmt;

// ------------------------------------------------------------------ API
async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function where() {
  const p = new URLSearchParams();
  if (state.model) p.set("model", state.model);
  if (state.task) p.set("task", state.task);
  return p;
}

function setting() {
  return { model: state.model, task: state.task, ablate: Array.from(state.ablate).sort((a, b) => a - b),
           op: state.op, whiten: state.whiten, alpha: state.alpha, sides: state.sides };
}

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

// ------------------------------------------------------------------ URL state
function readUrl() {
  const p = new URLSearchParams(window.location.search);
  state.model = p.get("model") || null;
  state.task = p.get("task") || null;
  const ids = (p.get("ablate") || "").split(",").filter((x) => /^\d+$/.test(x)).map(Number);
  state.ablate = new Set(ids);
  for (const key of ["op", "whiten", "sides", "tag", "sort"]) if (p.get(key)) state[key] = p.get(key);
  if (p.get("search")) state.search = p.get("search");
  if (p.get("alpha") && !Number.isNaN(Number(p.get("alpha")))) state.alpha = Number(p.get("alpha"));
  if (/^\d+$/.test(p.get("q") || "")) state.query = Number(p.get("q"));
  if (/^\d+$/.test(p.get("card") || "")) state.card = Number(p.get("card"));
  if (p.get("desc") !== null) state.desc = p.get("desc") === "1";
}

function writeUrl() {
  const p = where();
  const s = setting();
  if (s.ablate.length) p.set("ablate", s.ablate.join(","));
  if (s.op !== "subtract") p.set("op", s.op);
  if (s.sides !== "both") p.set("sides", s.sides);
  if (s.whiten !== "none") { p.set("whiten", s.whiten); p.set("alpha", String(s.alpha)); }
  if (state.query) p.set("q", String(state.query));
  if (state.card !== null) p.set("card", String(state.card));
  if (state.tag) p.set("tag", state.tag);
  if (state.search) p.set("search", state.search);
  if (state.sort !== "rank") p.set("sort", state.sort);
  if (state.desc !== null) p.set("desc", state.desc ? "1" : "0");
  const qs = p.toString();
  window.history.replaceState(null, "", qs ? `?${qs}` : window.location.pathname);
  $("share-url").value = window.location.href;
}

function syncControls() {
  $("op").value = state.op;
  $("sides").value = state.sides;
  $("whiten").value = state.whiten;
  $("alpha").value = String(state.alpha);
  $("alpha").disabled = state.whiten === "none";
  $("alpha-value").textContent = state.alpha.toFixed(2);
  $("tag-filter").value = state.tag;
  $("search").value = state.search;
  $("query-index").value = String(state.query);
}

// ------------------------------------------------------------------ metrics
function buildMetricsTable() {
  const body = document.querySelector("#metrics tbody");
  body.textContent = "";
  for (const name of METRIC_ROWS) {
    const tr = document.createElement("tr");
    tr.appendChild(View.el("td", null, name === "median_rank" ? "median rank" : name));
    for (const col of ["before", "after", "delta"]) {
      const td = View.el("td", null, "–");
      td.id = `${col}-${name.replace("@", "").replace(/[^A-Za-z0-9_]/g, "_")}`;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function showMetrics(res) {
  for (const name of METRIC_ROWS) {
    const id = name.replace("@", "").replace(/[^A-Za-z0-9_]/g, "_");
    const digits = name === "median_rank" ? 1 : 3;
    $(`before-${id}`).textContent = fmt(res.baseline[name], digits);
    $(`after-${id}`).textContent = fmt(res.metrics[name], digits);
    const d = res.delta[name];
    const cell = $(`delta-${id}`);
    cell.textContent = d === null || d === undefined ? "–" : (d > 0 ? "+" : "") + fmt(d, digits);
    const better = name === "median_rank" ? d < 0 : d > 0;
    cell.className = d ? (better ? "pos" : "neg") : "";
  }
  $("n-ablated").textContent = String(res.n_ablated);
}

async function evaluate() {
  const seq = ++state.seq.eval;
  writeUrl();
  setStatus("computing…");
  try {
    const res = await api("/api/evaluate", setting());
    if (seq !== state.seq.eval) return;  // a newer request is on its way
    showMetrics(res);
    const ms = res.seconds ? `${fmt(res.seconds * 1000, 1)} ms` : "cached";
    setStatus(`${res.n_ablated} ablated · ${ms} (${res.path} path)`);
    document.body.dataset.evalDone = String(seq);
  } catch (err) {
    if (seq === state.seq.eval) setStatus(`error: ${err.message}`, true);
  }
  loadQuery();
  loadSweep();
}

let timer = null;
function schedule(delay = 60) {
  clearTimeout(timer);
  timer = setTimeout(evaluate, delay);
}

function selectionChanged() {
  syncBoxes();
  drawScatter();
  if (state.card !== null) {
    const t = document.querySelector("#card .ablate-toggle");
    if (t) t.textContent = state.ablate.has(state.card) ? "un-ablate" : "ablate";
  }
  schedule();
}

// ------------------------------------------------------------------ feature table
function renderFeatures() {
  const body = document.querySelector("#features tbody");
  body.textContent = "";
  for (const f of state.features) {
    const tr = document.createElement("tr");
    tr.dataset.id = String(f.id);
    if (f.id === state.card) tr.classList.add("open");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "ablate";
    box.dataset.id = String(f.id);
    box.checked = state.ablate.has(f.id);
    box.addEventListener("click", (e) => e.stopPropagation());
    box.addEventListener("change", () => {
      if (box.checked) state.ablate.add(f.id); else state.ablate.delete(f.id);
      selectionChanged();
    });
    const cells = [box, String(f.rank ?? "–"), String(f.id), f.name || "", View.tagChip(f.tag),
                   fmt(f.modality_score, 2), fmt(f.energy, 3), fmt(f.frequency, 3), fmt(f.attribution, 4)];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i === 3) td.className = "name";
      if (typeof c === "string") td.textContent = c; else td.appendChild(c);
      tr.appendChild(td);
    });
    tr.addEventListener("click", () => openCard(f.id));
    body.appendChild(tr);
  }
  document.querySelectorAll("#features th[data-sort]").forEach((th) => {
    th.classList.toggle("sorted", th.dataset.sort === state.sort);
  });
}

async function loadFeatures() {
  const seq = ++state.seq.feats;
  const p = where();
  p.set("limit", "300");
  p.set("sort", state.sort);
  if (state.desc !== null) p.set("desc", state.desc ? "1" : "0");
  if (state.tag) p.set("tag", state.tag);
  if (state.search) p.set("q", state.search);
  try {
    const res = await api(`/api/features?${p}`);
    if (seq !== state.seq.feats) return;
    state.features = res.features;
    $("feature-count").textContent = `${res.total} concepts${res.total > res.features.length ? ` (first ${res.features.length} shown)` : ""}`;
    renderFeatures();
    document.body.dataset.featuresDone = String(seq);
  } catch (err) {
    setStatus(`features: ${err.message}`, true);
  }
}

function syncBoxes() {
  document.querySelectorAll("input.ablate").forEach((b) => {
    b.checked = state.ablate.has(Number(b.dataset.id));
  });
}

// ------------------------------------------------------------------ scatter
const TAG_COLORS = { textual: "#2f6fde", visual: "#e8590c", bimodal: "#12805c", unknown: "#98a2b3" };

function drawScatter() {
  const s = state.scatter;
  if (!s) return;
  const traces = [];
  for (const tag of ["textual", "visual", "bimodal", "unknown"]) {
    const idx = s.id.map((_, i) => i).filter((i) => (s.tag[i] || "unknown") === tag);
    if (!idx.length) continue;
    const fmax = Math.max(1e-12, ...s.frequency);
    traces.push({
      x: idx.map((i) => s.x[i]), y: idx.map((i) => s.y[i]), customdata: idx.map((i) => s.id[i]),
      text: idx.map((i) => `concept ${s.id[i]}${s.name[i] ? ` · ${s.name[i]}` : ""}`),
      mode: "markers", type: "scatter", name: `${tag} (${idx.length})`,
      marker: { color: TAG_COLORS[tag], opacity: 0.75,
                size: idx.map((i) => 5 + 14 * Math.sqrt(s.frequency[i] / fmax)) },
      hovertemplate: "%{text}<br>modality %{x:.3f}<br>energy %{y:.3g}<extra></extra>",
    });
  }
  const sel = s.id.map((_, i) => i).filter((i) => state.ablate.has(s.id[i]));
  traces.push({
    x: sel.map((i) => s.x[i]), y: sel.map((i) => s.y[i]), customdata: sel.map((i) => s.id[i]),
    mode: "markers", type: "scatter", name: "ablated", hoverinfo: "skip",
    marker: { symbol: "circle-open", size: 16, color: "#c4320a", line: { width: 2 } },
  });
  const layout = {
    margin: { l: 55, r: 10, t: 10, b: 45 }, showlegend: true, legend: { orientation: "h", y: 1.1 },
    xaxis: { title: { text: "modality score (1 = textual)" }, range: [-0.05, 1.05] },
    yaxis: { title: { text: "energy E[z]" }, type: "log", dtick: 1, exponentformat: "power" },
    hovermode: "closest",
  };
  Plotly.react("scatter", traces, layout, { displaylogo: false, responsive: true });
  document.body.dataset.scatterDone = "1";
}

async function loadScatter() {
  try {
    state.scatter = await api(`/api/scatter?${where()}`);
    const n = state.scatter.n_without_score;
    $("scatter-note").textContent = n ? `${n} active concepts have no modality score and are not drawn.` : "";
    drawScatter();
    const plot = $("scatter");
    if (!plot.dataset.wired) {
      plot.on("plotly_click", (ev) => {
        const pt = ev.points && ev.points[0];
        if (pt && pt.customdata !== undefined) openCard(Number(pt.customdata));
      });
      plot.dataset.wired = "1";
    }
  } catch (err) {
    setStatus(`scatter: ${err.message}`, true);
  }
}

// ------------------------------------------------------------------ card
const cardHandlers = {
  isAblated: (id) => state.ablate.has(id),
  toggle: (id) => { if (state.ablate.has(id)) state.ablate.delete(id); else state.ablate.add(id); selectionChanged(); },
  open: (id) => openCard(id),
};

async function openCard(id) {
  state.card = id;
  writeUrl();
  document.querySelectorAll("#features tbody tr").forEach((tr) => tr.classList.toggle("open", Number(tr.dataset.id) === id));
  const seq = ++state.seq.card;
  const box = $("card");
  try {
    const c = await api(`/api/card/${id}?${where()}`);
    if (seq !== state.seq.card) return;
    View.card(box, c, cardHandlers);
    document.body.dataset.cardDone = String(id);
  } catch (err) {
    if (seq === state.seq.card) box.textContent = `error: ${err.message}`;
  }
}

// ------------------------------------------------------------------ sweep
async function loadSweep() {
  const key = `${state.model}|${state.task}|${state.op}|${state.whiten}|${state.alpha}|${state.sides}`;
  if (key === state.lastSweepKey) return;
  state.lastSweepKey = key;
  const seq = ++state.seq.sweep;
  try {
    const s = setting();
    delete s.ablate;
    const res = await api("/api/sweep", { ...s, n_max: 32 });
    if (seq !== state.seq.sweep) return;
    const traces = Object.entries(res.recall).map(([k, ys]) => ({
      x: res.x, y: ys, mode: "lines+markers", name: `Recall@${k}` }));
    traces.push({ x: res.x, y: res.MRR, mode: "lines+markers", name: "MRR@10", line: { dash: "dot" } });
    const layout = {
      margin: { l: 50, r: 20, t: 10, b: 45 },
      xaxis: { title: { text: res.xlabel }, type: "linear" },
      yaxis: { title: { text: "score" }, range: [0, 1.02] },
      legend: { orientation: "h", y: 1.08 },
    };
    Plotly.react("sweep", traces, layout, { displaylogo: false, responsive: true });
    document.body.dataset.sweepDone = String(seq);
  } catch (err) {
    state.lastSweepKey = "";
    setStatus(`sweep error: ${err.message}`, true);
  }
}

// ------------------------------------------------------------------ per query
function renderTop(list, items) {
  list.textContent = "";
  for (const it of items) {
    const li = document.createElement("li");
    View.candidate(li, it);
    list.appendChild(li);
  }
}

async function loadQuery() {
  const seq = ++state.seq.query;
  const n = state.info ? state.info.n_queries : 1;
  state.query = Math.min(Math.max(0, state.query), Math.max(0, n - 1));
  const s = setting();
  const p = where();
  p.set("ablate", s.ablate.join(","));
  p.set("op", s.op); p.set("whiten", s.whiten); p.set("alpha", String(s.alpha)); p.set("sides", s.sides);
  p.set("top", "5");
  try {
    const res = await api(`/api/query/${state.query}?${p}`);
    if (seq !== state.seq.query) return;
    const rel = res.relevant.map((r) => r.label).join(", ") || "none";
    $("query-label").textContent = `${res.label} — relevant: ${rel}`;
    const qi = $("query-item");
    qi.textContent = "";
    if (res.item && res.item.thumb) qi.appendChild(View.itemThumb(res.item, null, 0));
    $("rank-before").textContent = res.before.rank ? `(relevant at rank ${res.before.rank})` : "";
    $("rank-after").textContent = res.after.rank ? `(relevant at rank ${res.after.rank})` : "";
    renderTop($("top-before"), res.before.top);
    renderTop($("top-after"), res.after.top);
    document.body.dataset.queryDone = String(seq);
  } catch (err) {
    if (seq === state.seq.query) $("query-label").textContent = `error: ${err.message}`;
  }
}

function setQuery(i) {
  state.query = i;
  $("query-index").value = String(state.query);
  writeUrl();
  loadQuery();
}

// ------------------------------------------------------------------ export
async function exportJson() {
  try {
    const res = await api("/api/export", setting());
    const blob = new Blob([JSON.stringify(res, null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `saeprobe-explorer-${res.model}-${res.task}.json`;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    setStatus(`exported ${res.n_ablated} features and their metrics`);
  } catch (err) {
    setStatus(`export: ${err.message}`, true);
  }
}
