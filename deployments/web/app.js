// ItemSage demo page: search box -> POST /search; click a product -> POST /similar.
// Plain DOM code, no framework and no build step; every string from the API goes through
// textContent (never innerHTML), so catalog text cannot inject markup.
"use strict";

const K = 24;
const $ = (id) => document.getElementById(id);

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
    throw new Error(detail || `HTTP ${r.status}`);
  }
  return data;
}

function noImage() {
  const ph = document.createElement("div");
  ph.className = "noimage";
  ph.textContent = "no image";
  return ph;
}

function card(hit) {
  const el = document.createElement("button");
  el.className = "card";
  el.type = "button";
  el.dataset.itemId = hit.item_id;
  el.title = "Show similar items";
  if (hit.image_url) {
    const img = document.createElement("img");
    img.src = hit.image_url;
    img.alt = hit.title || hit.item_id;
    img.loading = "lazy";
    // A catalog image that cannot be served (file gone, not decodable) shows the placeholder,
    // not the browser's broken-image icon.
    img.addEventListener("error", () => img.replaceWith(noImage()), { once: true });
    el.appendChild(img);
  } else {
    el.appendChild(noImage());
  }
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = hit.title || hit.item_id;
  el.appendChild(title);
  const meta = document.createElement("div");
  meta.className = "meta muted";
  meta.textContent = `${hit.product_types || ""} · ${hit.score.toFixed(3)}`;
  el.appendChild(meta);
  el.addEventListener("click", () => showSimilar(hit));
  return el;
}

function render(gridId, hits) {
  const grid = $(gridId);
  grid.replaceChildren(...hits.map(card));
}

function status(text) {
  $("status").textContent = text;
}

async function search(query) {
  status("Searching…");
  try {
    const res = await post("/search", { query, k: K });
    $("results-title").textContent = `“${query}”`;
    render("results", res.results);
    $("results-section").hidden = false;
    $("similar-section").hidden = true;
    status(`${res.results.length} products · model ${res.model_version} · index ${res.index_version}`);
  } catch (e) {
    status(`Search failed: ${e.message}`);
  }
}

async function showSimilar(hit) {
  status("Finding similar items…");
  try {
    const res = await post("/similar", { item_id: hit.item_id, k: 12 });
    $("similar-title").textContent = hit.title || hit.item_id;
    render("similar", res.results);
    $("similar-section").hidden = false;
    status(`${res.results.length} similar items (${res.surface} query) · model ${res.model_version}`);
    $("similar-section").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (e) {
    status(`Similar items failed: ${e.message}`);
  }
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("query").value.trim();
  if (q) search(q);
});

fetch("/version")
  .then((r) => (r.ok ? r.json() : null))
  .then((v) => {
    if (v) $("version").textContent = `model v${v.model.version} · index ${v.index.version} (${v.index.ntotal} items)`;
  })
  .catch(() => {});
