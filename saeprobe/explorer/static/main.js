// saeprobe explorer: model / task menus, event wiring, start-up (after card.js and app.js).
"use strict";

// ------------------------------------------------------------------ model / task menus
function fillMenus() {
  const models = state.run.models;
  const m = $("model");
  m.textContent = "";
  for (const x of models) m.appendChild(new Option(x.name + (x.hook_point ? ` (${x.hook_point})` : ""), x.name));
  m.value = state.model;
  $("model-pick").hidden = models.length < 2;
  const tasks = models.find((x) => x.name === state.model).tasks;
  const t = $("task");
  t.textContent = "";
  for (const x of tasks) t.appendChild(new Option(x, x));
  if (state.task) t.value = state.task;
  $("task-pick").hidden = tasks.length < 2;
}

async function loadModel() {
  fillMenus();
  const info = await api(`/api/info?${where()}`);
  state.info = info;
  METRIC_ROWS.length = 0;
  METRIC_ROWS.push(...(info.ks || []).map((k) => `R@${k}`), "MRR", "median_rank");
  buildMetricsTable();
  const side = (n, m) => `${n} ${m ? `(${m})` : ""}`;
  $("data-info").textContent = info.no_task
    ? `SAE width ${info.c} (${info.n_active} active) · no retrieval task for this model`
    : `${side(info.n_queries, info.query_modality)} queries → ${side(info.n_candidates, info.candidate_modality)} candidates` +
      ` · d = ${info.d} · SAE width ${info.c} (${info.n_active} active) · statistics from ${info.stats_source}`;
  $("query-index").max = String(Math.max(0, (info.n_queries || 1) - 1));
  syncControls();
  await Promise.all([loadFeatures(), loadScatter()]);
  if (state.card !== null) openCard(state.card);
  document.body.dataset.ready = "1";
  if (!info.no_task) await evaluate(); else writeUrl();
}

function resetForModel() {
  state.ablate.clear();
  state.card = null;
  state.query = 0;
  state.lastSweepKey = "";
  $("card").textContent = "Click a point or a row to open a concept's card.";
}

// ------------------------------------------------------------------ wiring
function wire() {
  $("model").addEventListener("change", (e) => {
    state.model = e.target.value;
    state.task = null;
    const m = state.run.models.find((x) => x.name === state.model);
    state.task = m.tasks[0] || null;
    resetForModel();
    loadModel().catch((err) => setStatus(`error: ${err.message}`, true));
  });
  $("task").addEventListener("change", (e) => {
    state.task = e.target.value;
    resetForModel();
    loadModel().catch((err) => setStatus(`error: ${err.message}`, true));
  });
  $("op").addEventListener("change", (e) => { state.op = e.target.value; schedule(); });
  $("sides").addEventListener("change", (e) => { state.sides = e.target.value; schedule(); });
  $("whiten").addEventListener("change", (e) => {
    state.whiten = e.target.value;
    $("alpha").disabled = state.whiten === "none";
    schedule();
  });
  $("alpha").addEventListener("input", (e) => {  // live: recompute while the slider moves
    state.alpha = Number(e.target.value);
    $("alpha-value").textContent = state.alpha.toFixed(2);
    if (state.whiten !== "none") schedule(40);
  });
  $("clear").addEventListener("click", () => { state.ablate.clear(); selectionChanged(); });
  $("tick-top").addEventListener("click", () => {
    const n = Math.max(0, parseInt($("top-n").value || "0", 10));
    state.ablate = new Set((state.info.top_distractors || []).slice(0, n));
    selectionChanged();
  });
  $("export").addEventListener("click", exportJson);
  $("share-url").addEventListener("focus", (e) => e.target.select());
  $("query-index").addEventListener("change", () => setQuery(Math.max(0, parseInt($("query-index").value || "0", 10))));
  $("query-prev").addEventListener("click", () => setQuery(Math.max(0, state.query - 1)));
  $("query-next").addEventListener("click", () => setQuery(state.query + 1));
  let searchTimer = null;
  $("search").addEventListener("input", (e) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.search = e.target.value.trim(); writeUrl(); loadFeatures(); }, 150);
  });
  $("tag-filter").addEventListener("change", (e) => { state.tag = e.target.value; writeUrl(); loadFeatures(); });
  document.querySelectorAll("#features th[data-sort]").forEach((th) => {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      if (state.sort === key) state.desc = !(state.desc ?? key !== "rank");
      else { state.sort = key; state.desc = null; }
      writeUrl();
      loadFeatures();
    });
  });
}

async function main() {
  readUrl();
  wire();
  try {
    state.run = await api("/api/run");
    $("run-title").textContent = state.run.title || "";
    const names = state.run.models.map((m) => m.name);
    if (!names.includes(state.model)) { state.model = state.run.default.model; state.task = null; }
    const tasks = state.run.models.find((m) => m.name === state.model).tasks;
    if (!tasks.includes(state.task)) state.task = tasks[0] || null;
    await loadModel();
  } catch (err) {
    setStatus(`error: ${err.message}`, true);
  }
}

main();
