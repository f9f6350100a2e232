// ItemSage demo page: search box -> POST /search; click a product -> POST /similar.
// Facet controls (GET /facets): a select per keyword attribute, min/max per number; they become
// the requests' "filters" and re-run the current search when changed.
// The mode control picks the "mode" of /search and of /similar (dense | lexical | hybrid; empty:
// the server's defaults); the status line says which mode answered.
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
    const res = await post("/search", { query, k: K, filters: currentFilters(), mode: $("mode").value || undefined });
    $("results-title").textContent = `“${query}”`;
    render("results", res.results);
    $("results-section").hidden = false;
    $("similar-section").hidden = true;
    status(`${res.results.length} products · ${res.mode} search · model ${res.model_version} · index ${res.index_version}`);
  } catch (e) {
    status(`Search failed: ${e.message}`);
  }
}

async function showSimilar(hit) {
  status("Finding similar items…");
  try {
    const res = await post("/similar", {
      item_id: hit.item_id,
      k: 12,
      filters: currentFilters(),
      mode: $("mode").value || undefined,
    });
    $("similar-title").textContent = hit.title || hit.item_id;
    render("similar", res.results);
    $("similar-section").hidden = false;
    status(`${res.results.length} similar items · ${res.mode} (${res.surface} query) · model ${res.model_version}`);
    $("similar-section").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (e) {
    status(`Similar items failed: ${e.message}`);
  }
}

// ---- facets -----------------------------------------------------------------------------------
let lastQuery = "";

function facetControl(attr) {
  const label = document.createElement("label");
  label.className = "facet";
  label.textContent = attr.name.replace(/_/g, " ") + " ";
  if (attr.type === "number") {
    for (const bound of ["min", "max"]) {
      const input = document.createElement("input");
      input.type = "number";
      input.step = "any";
      input.dataset.facet = attr.name;
      input.dataset.bound = bound;
      input.placeholder = attr[bound] === null ? bound : `${bound} ${attr[bound]}`;
      input.addEventListener("change", refilter);
      label.appendChild(input);
    }
    return label;
  }
  const select = document.createElement("select");
  select.dataset.facet = attr.name;
  const any = document.createElement("option");
  any.value = "";
  any.textContent = "any";
  select.appendChild(any);
  for (const v of attr.values || []) {
    const opt = document.createElement("option");
    opt.value = v.value;
    opt.textContent = `${v.value} (${v.count})`;
    select.appendChild(opt);
  }
  select.addEventListener("change", refilter);
  label.appendChild(select);
  return label;
}

// The chosen facets as a "filters" object (undefined when none is set, so no key is sent).
function currentFilters() {
  const filters = {};
  for (const el of document.querySelectorAll("#facets [data-facet]")) {
    if (el.value === "") continue;
    if (el.tagName === "SELECT") {
      filters[el.dataset.facet] = el.value;
    } else {
      const range = filters[el.dataset.facet] || {};
      range[el.dataset.bound === "min" ? "gte" : "lte"] = Number(el.value);
      filters[el.dataset.facet] = range;
    }
  }
  return Object.keys(filters).length ? filters : undefined;
}

function refilter() {
  if (lastQuery) search(lastQuery);
}

$("facets").addEventListener("submit", (ev) => {
  ev.preventDefault(); // Enter in a min/max box filters; it must not reload the page
  refilter();
});

fetch("/facets")
  .then((r) => (r.ok ? r.json() : null))
  .then((f) => {
    if (!f || !f.attributes.length) return;
    $("facets").replaceChildren(...f.attributes.map(facetControl));
    $("facets").hidden = false;
  })
  .catch(() => {});

$("mode").addEventListener("change", refilter); // the same query again, in the chosen mode

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("query").value.trim();
  if (q) {
    lastQuery = q;
    search(q);
  }
});

fetch("/version")
  .then((r) => (r.ok ? r.json() : null))
  .then((v) => {
    if (v) $("version").textContent = `model v${v.model.version} · index ${v.index.version} (${v.index.ntotal} items)`;
  })
  .catch(() => {});
