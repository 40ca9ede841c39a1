// saeprobe explorer front end: talks to the local JSON API only (no network, no CDN).
"use strict";

const state = { ablate: new Set(), op: "subtract", whiten: "none", alpha: 0.1, sides: "both",
                info: null, features: [], evalSeq: 0, sweepSeq: 0, querySeq: 0, lastSweepKey: "" };
const $ = (id) => document.getElementById(id);
const METRIC_ROWS = [];  // filled from /api/info

function fmt(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toFixed(digits);
}

function metricId(name) { return name.replace("@", "").replace(/[^A-Za-z0-9_]/g, "_"); }

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

function setting() {
  return { ablate: Array.from(state.ablate).sort((a, b) => a - b), op: state.op,
           whiten: state.whiten, alpha: state.alpha, sides: state.sides };
}

// ------------------------------------------------------------------ metrics
function buildMetricsTable() {
  const body = document.querySelector("#metrics tbody");
  body.textContent = "";
  for (const name of METRIC_ROWS) {
    const tr = document.createElement("tr");
    const id = metricId(name);
    const th = document.createElement("td");
    th.textContent = name === "median_rank" ? "median rank" : name;
    tr.appendChild(th);
    for (const col of ["before", "after", "delta"]) {
      const td = document.createElement("td");
      td.id = `${col}-${id}`;
      td.textContent = "–";
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function showMetrics(res) {
  for (const name of METRIC_ROWS) {
    const id = metricId(name);
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
  const seq = ++state.evalSeq;
  setStatus("computing…");
  try {
    const res = await api("/api/evaluate", setting());
    if (seq !== state.evalSeq) return;  // a newer request is on its way
    showMetrics(res);
    setStatus(`${res.n_ablated} ablated · ${res.seconds ? fmt(res.seconds * 1000, 1) + " ms" : "cached"} (${res.path} path)`);
    document.body.dataset.evalDone = String(seq);
  } catch (err) {
    if (seq === state.evalSeq) setStatus(`error: ${err.message}`, true);
  }
  loadQuery();
  loadSweep();
}

let timer = null;
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(evaluate, 80);
}

// ------------------------------------------------------------------ features
function tagCell(tag) {
  const span = document.createElement("span");
  span.className = `tag tag-${tag || "unknown"}`;
  span.textContent = tag || "unknown";
  return span;
}

function renderFeatures() {
  const body = document.querySelector("#features tbody");
  body.textContent = "";
  for (const f of state.features) {
    const tr = document.createElement("tr");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "ablate";
    box.dataset.id = String(f.id);
    box.checked = state.ablate.has(f.id);
    box.addEventListener("change", () => {
      if (box.checked) state.ablate.add(f.id); else state.ablate.delete(f.id);
      schedule();
    });
    const cells = [box, String(f.rank), String(f.id), f.name || "", tagCell(f.tag),
                   fmt(f.modality_score, 2), fmt(f.energy, 3), fmt(f.attribution, 4)];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i === 3) td.className = "name";
      if (typeof c === "string") td.textContent = c; else td.appendChild(c);
      tr.appendChild(td);
    });
    body.appendChild(tr);
  }
}

function syncBoxes() {
  document.querySelectorAll("input.ablate").forEach((b) => {
    b.checked = state.ablate.has(Number(b.dataset.id));
  });
}

// ------------------------------------------------------------------ sweep
async function loadSweep() {
  const key = `${state.op}|${state.whiten}|${state.alpha}|${state.sides}`;
  if (key === state.lastSweepKey) return;
  state.lastSweepKey = key;
  const seq = ++state.sweepSeq;
  try {
    const res = await api("/api/sweep", { op: state.op, whiten: state.whiten, alpha: state.alpha,
                                          sides: state.sides, n_max: 32 });
    if (seq !== state.sweepSeq) return;
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
    li.textContent = `${it.label} (${fmt(it.score, 3)})${it.relevant ? " ✓" : ""}`;
    if (it.relevant) li.className = "relevant";
    list.appendChild(li);
  }
}

async function loadQuery() {
  const seq = ++state.querySeq;
  const i = Math.max(0, parseInt($("query-index").value || "0", 10));
  const s = setting();
  const qs = new URLSearchParams({ ablate: s.ablate.join(","), op: s.op, whiten: s.whiten,
                                   alpha: String(s.alpha), sides: s.sides, top: "5" });
  try {
    const res = await api(`/api/query/${i}?${qs}`);
    if (seq !== state.querySeq) return;
    const rel = res.relevant.map((r) => r.label).join(", ") || "none";
    $("query-label").textContent = `${res.label} — relevant: ${rel}`;
    $("rank-before").textContent = res.before.rank ? `(relevant at rank ${res.before.rank})` : "";
    $("rank-after").textContent = res.after.rank ? `(relevant at rank ${res.after.rank})` : "";
    renderTop($("top-before"), res.before.top);
    renderTop($("top-after"), res.after.top);
  } catch (err) {
    if (seq === state.querySeq) $("query-label").textContent = `error: ${err.message}`;
  }
}

// ------------------------------------------------------------------ wiring
function wire() {
  $("op").addEventListener("change", (e) => { state.op = e.target.value; schedule(); });
  $("sides").addEventListener("change", (e) => { state.sides = e.target.value; schedule(); });
  $("whiten").addEventListener("change", (e) => {
    state.whiten = e.target.value;
    $("alpha").disabled = state.whiten === "none";
    schedule();
  });
  $("alpha").addEventListener("input", (e) => {
    state.alpha = Number(e.target.value);
    $("alpha-value").textContent = state.alpha.toFixed(2);
  });
  $("alpha").addEventListener("change", () => schedule());
  $("clear").addEventListener("click", () => { state.ablate.clear(); syncBoxes(); schedule(); });
  $("tick-top").addEventListener("click", () => {
    const n = Math.max(0, parseInt($("top-n").value || "0", 10));
    state.ablate = new Set(state.features.slice(0, n).map((f) => f.id));
    syncBoxes();
    schedule();
  });
  $("query-index").addEventListener("change", loadQuery);
}

async function main() {
  wire();
  try {
    const info = await api("/api/info");
    state.info = info;
    METRIC_ROWS.push(...info.ks.map((k) => `R@${k}`), "MRR", "median_rank");
    buildMetricsTable();
    $("data-info").textContent =
      `${info.n_queries} queries${info.query_modality ? ` (${info.query_modality})` : ""} → ` +
      `${info.n_candidates} candidates${info.candidate_modality ? ` (${info.candidate_modality})` : ""}` +
      ` · d = ${info.d} · SAE width ${info.c} (${info.n_active} active) · statistics from ${info.stats_source}`;
    $("query-index").max = String(info.n_queries - 1);
    const feats = await api("/api/features?limit=300");
    state.features = feats.features;
    renderFeatures();
    document.body.dataset.ready = "1";
    await evaluate();
  } catch (err) {
    setStatus(`error: ${err.message}`, true);
  }
}

main();
