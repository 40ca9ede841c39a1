// saeprobe explorer: rendering of items (thumbnails, heatmaps, highlighted tokens) and cards.
"use strict";

const View = (() => {
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmt(v, digits = 3) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const x = Number(v);
    if (x !== 0 && Math.abs(x) < 10 ** -digits) return x.toExponential(1);
    return x.toFixed(digits);
  }

  function tagChip(tag) {
    return el("span", `tag tag-${tag || "unknown"}`, tag || "unknown");
  }

  // an item as content: its thumbnail (optionally with a heatmap) or its text
  function itemThumb(item, grid, max) {
    const box = el("div", "thumb");
    if (item && item.thumb) {
      const img = el("img");
      img.src = item.thumb;
      img.alt = item.id || "image";
      img.loading = "lazy";
      box.appendChild(img);
      if (grid && grid.rows > 0 && grid.cols > 0) box.appendChild(heatmap(grid, max));
    } else {
      box.classList.add("no-image");
    }
    return box;
  }

  // image-token activations as a grid over the thumbnail (rows x cols, reading order)
  function heatmap(grid, max) {
    const heat = el("div", "heat");
    heat.style.gridTemplateColumns = `repeat(${grid.cols}, 1fr)`;
    heat.style.gridTemplateRows = `repeat(${grid.rows}, 1fr)`;
    const top = max > 0 ? max : Math.max(1e-12, ...grid.values);
    grid.values.forEach((v) => {
      const cell = el("div", "cell");
      const a = Math.max(0, Math.min(1, v / top));
      cell.style.backgroundColor = `rgba(255, 64, 0, ${(0.78 * a).toFixed(3)})`;
      cell.title = `activation ${fmt(v, 3)}`;
      heat.appendChild(cell);
    });
    heat.dataset.rows = String(grid.rows);
    heat.dataset.cols = String(grid.cols);
    return heat;
  }

  // tokens with their activation as a highlight (template tokens dimmed)
  function tokenStrip(tokens, max) {
    const p = el("p", "tokens");
    const top = max > 0 ? max : Math.max(1e-12, ...tokens.map((t) => t.act));
    let skipped = false;
    for (const t of tokens) {
      if (t.kind === "template" && !(t.act > 0)) {  // quiet prompt-template tokens: elided
        skipped = true;
        continue;
      }
      if (skipped && p.childNodes.length) p.appendChild(el("span", "tok tpl", " … "));
      skipped = false;
      const span = el("span", t.kind === "template" ? "tok tpl" : "tok", t.text);
      const a = Math.max(0, Math.min(1, t.act / top));
      if (a > 0) span.style.backgroundColor = `rgba(255, 140, 0, ${(0.15 + 0.7 * a).toFixed(3)})`;
      span.title = `position ${t.position} · activation ${fmt(t.act, 3)}`;
      p.appendChild(span);
    }
    return p;
  }

  function statRow(tbody, name, value) {
    const tr = el("tr");
    tr.appendChild(el("td", null, name));
    tr.appendChild(el("td", null, value));
    tbody.appendChild(tr);
  }

  // the card of a concept: stats, tag, partners, top items
  function card(container, c, handlers) {
    container.textContent = "";
    const r = c.row;
    const head = el("div", "card-head");
    head.appendChild(el("h3", null, `Concept ${c.id}${r.name ? ` · ${r.name}` : ""}`));
    head.appendChild(tagChip(r.tag));
    if (r.is_distractor) head.appendChild(el("span", "flag", "distractor"));
    const toggle = el("button", "ablate-toggle", handlers.isAblated(c.id) ? "un-ablate" : "ablate");
    toggle.type = "button";
    toggle.addEventListener("click", () => handlers.toggle(c.id));
    head.appendChild(toggle);
    container.appendChild(head);

    const stats = el("table", "stats");
    const tb = el("tbody");
    statRow(tb, "rank by attribution", r.rank ?? "–");
    statRow(tb, "attribution", `${fmt(r.attribution, 4)} (${fmt(100 * (r.attribution_share || 0), 1)}%)`);
    statRow(tb, "modality score (1 = textual)", fmt(r.modality_score, 3));
    statRow(tb, "energy", `${fmt(r.energy, 4)} (share ${fmt(100 * (r.energy_share || 0), 2)}%)`);
    statRow(tb, "frequency", fmt(r.frequency, 4));
    if (r.bridge_score !== null && r.bridge_score !== undefined) statRow(tb, "bridge score", fmt(r.bridge_score, 3));
    stats.appendChild(tb);
    container.appendChild(stats);

    if (c.bridge_partners && c.bridge_partners.length) {
      const p = el("p", "partners", "bridge partners: ");
      for (const b of c.bridge_partners) {
        const a = el("button", "chip", `${b.id} (${fmt(b.score, 3)})`);
        a.type = "button";
        a.title = `open concept ${b.id} (${b.tag})`;
        a.addEventListener("click", () => handlers.open(b.id));
        p.appendChild(a);
      }
      container.appendChild(p);
    }
    if (c.note) container.appendChild(el("p", "muted small", c.note));
    const grid = el("div", "top-items");
    for (const it of c.items || []) grid.appendChild(topItem(it, c.max_activation));
    container.appendChild(grid);
  }

  function topItem(it, max) {
    const box = el("figure", "top-item");
    box.dataset.sample = String(it.sample_id);
    if (it.image) box.appendChild(itemThumb(it.item, it.image, max));
    const cap = el("figcaption");
    const text = it.item && it.item.text;
    if (it.tokens && it.tokens.length) {
      cap.appendChild(tokenStrip(it.tokens, max));
    } else if (text) {
      cap.appendChild(el("p", "tokens", text));
    }
    cap.appendChild(el("p", "muted small", `${it.item ? it.item.id : it.sample_id} · max ${fmt(it.activation, 3)}`));
    box.appendChild(cap);
    return box;
  }

  // a ranked candidate (or the query) with its thumbnail and caption
  function candidate(li, entry, showScore = true) {
    const item = entry.item;
    if (item && item.thumb) li.appendChild(itemThumb(item, null, 0));
    const label = el("span", "label", entry.label);
    li.appendChild(label);
    if (showScore) li.appendChild(el("span", "score", ` (${fmt(entry.score, 3)})`));
    if (entry.relevant) {
      li.classList.add("relevant");
      li.appendChild(el("span", "mark", " ✓ relevant"));
    }
  }

  return { el, fmt, tagChip, card, candidate, itemThumb };
})();
