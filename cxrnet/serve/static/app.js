// cxrnet viewer. Plain JavaScript, no framework, nothing fetched from elsewhere. Text from the server is
// always set as textContent, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const state = {
    sid: null,
    info: null,
    heartbeat: null,
    current: null,
    table: null,
    sort: { key: "id", dir: 1 },
    generation: 0, // bumped when the session is replaced: pollers of the old one stop
  };
  const SVG = "http://www.w3.org/2000/svg";
  const DEFAULT_ON = { lung: true, infection: true, explanation: false, zones: true };
  const ZONE_TITLES = {
    right_upper: "right upper", right_middle: "right middle", right_lower: "right lower",
    left_upper: "left upper", left_middle: "left middle", left_lower: "left lower",
  };

  function el(tag, options = {}, ...children) {
    const node = document.createElement(tag);
    if (options.text !== undefined) node.textContent = options.text;
    if (options.cls) node.className = options.cls;
    for (const [key, value] of Object.entries(options.attrs || {})) node.setAttribute(key, value);
    node.append(...children);
    return node;
  }

  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
  const num = (x, digits = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function showMessage(text, kind = "error") {
    const box = $("message");
    box.textContent = text || "";
    box.className = kind === "info" ? "info" : "";
    box.hidden = !text;
  }

  // "a `code` and **bold** text" as nodes: the model card's Markdown, the little of it there is.
  function rich(text) {
    const out = document.createDocumentFragment();
    for (const part of String(text).split(/(`[^`]*`|\*\*[^*]*\*\*)/)) {
      if (part.startsWith("`") && part.endsWith("`") && part.length > 1) out.append(el("code", { text: part.slice(1, -1) }));
      else if (part.startsWith("**") && part.endsWith("**") && part.length > 3) out.append(el("strong", { text: part.slice(2, -2) }));
      else out.append(part);
    }
    return out;
  }

  async function api(path, options = {}) {
    const response = await fetch(path, options);
    const type = response.headers.get("content-type") || "";
    const body = type.includes("application/json") ? await response.json() : null;
    if (!response.ok) {
      const error = new Error((body && body.detail) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      error.body = body;
      throw error;
    }
    return body;
  }

  const sessionPath = (path) => `/api/sessions/${encodeURIComponent(state.sid)}${path}`;

  // ------------------------------------------------------------------------------------------ session

  async function openSession() {
    const opened = await api("/api/sessions", { method: "POST" });
    state.sid = opened.session;
    clearInterval(state.heartbeat);
    const every = Math.max(1000, Math.min(60000, (opened.ttl * 1000) / 3));
    state.heartbeat = setInterval(ping, every);
  }

  async function ping() {
    if (!state.sid) return;
    try {
      await api(sessionPath("/ping"), { method: "POST" });
    } catch (error) {
      if (error.status === 404) await restartSession("Your session ended and its uploads were deleted on the server; upload again.");
    }
  }

  async function restartSession(text) {
    state.generation += 1;
    clearResults();
    await openSession();
    if (text) showMessage(text, "info");
  }

  function closeSession() {
    if (state.sid) navigator.sendBeacon(sessionPath("/close"));
    state.sid = null;
    clearInterval(state.heartbeat);
  }

  function clearResults() {
    $("results-list").replaceChildren();
    $("result").hidden = true;
    $("progress-row").hidden = true;
    $("keep").checked = false;
    $("keep").disabled = false;
    $("keep-status").textContent = "";
    state.current = null;
  }

  // ------------------------------------------------------------------------------------------ upload

  function checkBatch(files) {
    const limits = state.info.limits;
    if (files.length > limits.max_files) {
      return `Too many files at once: ${files.length} chosen, at most ${limits.max_files} per upload. Upload them in smaller batches.`;
    }
    const large = files.filter((f) => f.size > limits.max_upload_mb * 1024 * 1024);
    if (large.length) {
      return `Larger than the limit of ${limits.max_upload_mb} MB: ${large.map((f) => f.name).join(", ")}. Nothing was uploaded.`;
    }
    return null;
  }

  async function upload(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    const problem = checkBatch(files);
    if (problem) {
      showMessage(problem);
      return;
    }
    showMessage("");
    const form = new FormData();
    for (const file of files) form.append("files", file, file.name);
    let job;
    try {
      job = await api(sessionPath("/jobs"), { method: "POST", body: form });
    } catch (error) {
      showMessage(`Upload refused: ${error.message}`);
      return;
    }
    await track(job);
  }

  function itemNode(item) {
    let node = document.querySelector(`#results-list li[data-id="${item.id}"]`);
    if (!node) {
      node = el("li", { attrs: { "data-id": item.id } }, el("span", { cls: "name", text: item.name }), el("span", { cls: "state" }));
      node.addEventListener("click", () => {
        if (node.dataset.status === "done") openResult(item.id);
      });
      $("results-list").append(node);
    }
    return node;
  }

  function renderItems(job) {
    for (const item of job.items) {
      const node = itemNode(item);
      node.dataset.status = item.status;
      node.classList.toggle("error", item.status === "error");
      node.querySelector(".state").textContent = item.status === "done" ? (item.label || "done") : item.status;
      if (item.error) node.title = item.error;
    }
    $("progress-row").hidden = false;
    $("progress").max = job.total;
    $("progress").value = job.done;
    $("progress-text").textContent = `${job.done} of ${job.total} done${job.status === "done" ? "" : " …"}`;
    const problems = [
      ...job.refused.map((r) => `${r.name}: ${r.reason}`),
      ...job.items.filter((i) => i.status === "error").map((i) => i.error),
    ];
    if (problems.length) showMessage(`Refused:\n${problems.join("\n")}`);
  }

  async function track(job) {
    const generation = state.generation;
    let opened = false;
    for (;;) {
      renderItems(job);
      const first = job.items.find((i) => i.status === "done");
      if (first && !opened) {
        opened = true;
        await openResult(first.id);
      }
      if (job.status === "done") return;
      await sleep(400);
      if (generation !== state.generation) return;
      try {
        job = await api(sessionPath(`/jobs/${job.job}`));
      } catch (error) {
        showMessage(error.message);
        return;
      }
    }
  }

  // ------------------------------------------------------------------------------------------ result

  async function openResult(rid) {
    let doc;
    try {
      doc = await api(sessionPath(`/results/${rid}`));
    } catch (error) {
      showMessage(error.message);
      return;
    }
    renderResult(doc);
  }

  function renderResult(doc) {
    state.current = doc.id;
    for (const node of document.querySelectorAll("#results-list li")) node.classList.toggle("active", node.dataset.id === doc.id);
    const base = sessionPath(`/results/${doc.id}`);
    $("result").hidden = false;
    $("result-title").textContent = `${doc.name} (${doc.width}×${doc.height} px)`;
    $("layer-image").src = `${base}/layers/image.png`;
    renderLayers(doc, base);
    renderZoneScores(doc);
    $("label").textContent = doc.label === null ? "Predicted: n/a (classifier untrained)" : `Predicted: ${doc.label}`;
    renderProbabilities(doc);
    renderSeverity(doc);
    renderDownloads(doc, base);
    const notes = [...doc.caveats, ...doc.notes];
    $("result-caveats").replaceChildren(...notes.map((text) => el("li", { text })));
  }

  function renderLayers(doc, base) {
    const toggles = $("layer-toggles");
    toggles.replaceChildren();
    for (const layer of doc.layers) {
      const image = $(`layer-${layer.name}`);
      const box = el("input", { attrs: { type: "checkbox", id: `toggle-${layer.name}` } });
      const label = el("label", {}, box, ` ${layer.title}`);
      if (layer.available) {
        image.src = `${base}/layers/${layer.name}.png`;
        box.checked = DEFAULT_ON[layer.name];
      } else {
        image.removeAttribute("src");
        box.disabled = true;
        label.classList.add("unavailable");
        label.append(` (${layer.reason})`);
      }
      const apply = () => {
        image.hidden = !box.checked;
        if (layer.name === "zones") $("zone-scores").style.display = box.checked ? "" : "none";
      };
      box.addEventListener("change", apply);
      apply();
      toggles.append(label);
    }
    applyOpacity();
  }

  function applyOpacity() {
    const value = Number($("opacity").value) / 100;
    for (const node of document.querySelectorAll("#stack .heat")) node.style.opacity = String(value);
  }

  function renderZoneScores(doc) {
    const svg = $("zone-scores");
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${doc.preview_width} ${doc.preview_height}`);
    // In the preview's pixels (the viewBox), so the numbers keep their size relative to the image.
    const size = Math.max(doc.preview_width, doc.preview_height) / 16;
    for (const zone of doc.zones) {
      if (zone.x === null || zone.score === null) continue;
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", String(zone.x * doc.preview_width));
      text.setAttribute("y", String(zone.y * doc.preview_height));
      text.setAttribute("font-size", String(size));
      text.setAttribute("stroke-width", String(size / 10));
      text.setAttribute("data-zone", zone.zone);
      text.setAttribute("data-score", String(zone.score));
      text.textContent = String(zone.score);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${ZONE_TITLES[zone.zone]}: score ${zone.score}/3, ${pct(zone.fraction)} infected`;
      text.append(title);
      svg.append(text);
    }
  }

  function renderProbabilities(doc) {
    const box = $("probabilities");
    box.replaceChildren();
    if (!doc.probabilities.length) return;
    const best = Math.max(...doc.probabilities.map((c) => c.p));
    const grid = el("div", { cls: "bars", attrs: { role: "list", "aria-label": "class probabilities" } });
    for (const item of doc.probabilities) {
      const fill = el("span");
      fill.style.width = `${(100 * item.p).toFixed(1)}%`;
      grid.append(
        el("span", { text: item.name, cls: item.p === best ? "top" : "", attrs: { role: "listitem" } }),
        el("div", { cls: "bar" }, fill),
        el("span", { cls: "num", text: pct(item.p) }),
      );
    }
    box.append(el("h3", { text: "Class probabilities" }), grid);
  }

  function table(rows, header) {
    const body = el("tbody");
    const numeric = (cell) => /^[-\d.,\s%/–]+$/.test(String(cell)) || String(cell) === "untrained";
    for (const row of rows) {
      body.append(el("tr", {}, ...row.map((cell, i) => el(i ? "td" : "th", { text: String(cell), cls: i && numeric(cell) ? "num" : "" }))));
    }
    const head = header ? el("thead", {}, el("tr", {}, ...header.map((h) => el("th", { text: h })))) : "";
    return el("table", {}, head, body);
  }

  function renderSeverity(doc) {
    const box = $("severity");
    box.replaceChildren();
    const maps = doc.severity.from_maps;
    if (maps) {
      box.append(
        el("h3", { text: "Severity from the maps" }),
        el("p", { cls: "grade", attrs: { id: "severity-summary" }, text: `Grade ${maps.grade}: Brixia-like total ${maps.brixia_total}/18, geographic extent ${maps.geographic_extent}/8` }),
        table(
          [
            ["right lung", pct(maps.fraction_right), `${maps.extent_right}/4`],
            ["left lung", pct(maps.fraction_left), `${maps.extent_left}/4`],
            ["both lungs", pct(maps.fraction_total), `${maps.geographic_extent}/8`],
          ],
          ["", "infected", "extent"],
        ),
        table(
          doc.zones.map((z) => [ZONE_TITLES[z.zone], pct(z.fraction), `${z.score}/3`]),
          ["zone", "infected", "score"],
        ),
      );
    } else if (doc.untrained.includes("severity.from_maps")) {
      const why = ["lung_mask", "infection_map"].filter((k) => doc.untrained.includes(k)).map((k) => doc.untrained_text[k]);
      box.append(el("h3", { text: "Severity from the maps" }), el("p", { text: `not available: ${why.join(", ") || "untrained"}` }));
    }
    const learned = doc.severity.learned || {};
    const unlearned = doc.untrained.filter((k) => k.startsWith("severity.learned.")).map((k) => k.slice("severity.learned.".length));
    const rows = [...Object.entries(learned).map(([k, v]) => [k.replace(/_/g, " "), num(v)]), ...unlearned.map((k) => [k.replace(/_/g, " "), "untrained"])];
    if (rows.length) box.append(el("h3", { text: "Severity, learned head" }), table(rows));
  }

  function renderDownloads(doc, base) {
    const box = $("downloads");
    box.replaceChildren("Download: ");
    const names = { lung_mask: ["lung_mask.png", "lung mask (PNG)"], infection_mask: ["infection_mask.png", "infection mask (PNG)"], json: ["prediction.json", "prediction (JSON)"] };
    for (const key of doc.downloads) {
      const [file, text] = names[key];
      box.append(el("a", { text, attrs: { href: `${base}/download/${file}`, download: "" } }), " ");
    }
    if (doc.source === "browse" && doc.row !== null) {
      box.append(el("a", { text: "stored record (JSON)", attrs: { href: `/api/browse/${doc.row}/record.json`, download: "" } }), " ");
      const row = state.table && state.table.rows[doc.row];
      if (row && row.overlay) box.append(el("a", { text: "stored overlay", attrs: { href: `/api/browse/${doc.row}/overlay.png`, target: "_blank" } }));
    }
  }

  // ------------------------------------------------------------------------------------------ browse

  function browseColumns(t) {
    return [
      { key: "id", title: "#", value: (r) => r.id },
      { key: "name", title: "file", value: (r) => r.name },
      { key: "status", title: "status", value: (r) => r.status },
      { key: "error", title: "error", value: (r) => r.error, cls: "error-cell" },
      { key: "label", title: "label", value: (r) => r.label },
      ...t.classes.map((c) => ({ key: `p_${c}`, title: `p(${c})`, value: (r) => r.probabilities[c], show: pct })),
      { key: "fraction", title: "infected", value: (r) => r.severity.infected_fraction_total, show: pct },
      { key: "brixia", title: "Brixia /18", value: (r) => r.severity.brixia_total, show: (v) => num(v, 0) },
      { key: "extent", title: "extent /8", value: (r) => r.severity.geographic_extent, show: (v) => num(v, 0) },
      { key: "grade", title: "grade", value: (r) => r.severity.grade },
      ...t.severity_targets.map((s) => ({ key: `l_${s}`, title: `learned ${s}`, value: (r) => r.learned[s], show: num })),
    ];
  }

  async function loadBrowse() {
    try {
      state.table = await api("/api/browse");
    } catch (error) {
      showMessage(error.message);
      return;
    }
    const t = state.table;
    const labels = [...new Set(t.rows.map((r) => r.label).filter((l) => l))].sort();
    $("filter-label").append(...labels.map((l) => el("option", { text: l, attrs: { value: l } })));
    const caveats = [...t.caveats, ...(t.truncated ? ["the table is longer than shown: only its first rows were read"] : [])];
    $("browse-caveats").textContent = caveats.join(" · ");
    renderBrowse();
  }

  function renderBrowse() {
    const t = state.table;
    if (!t) return;
    const columns = browseColumns(t);
    const head = el("tr");
    for (const column of columns) {
      const button = el("button", { text: column.title, attrs: { type: "button" } });
      button.addEventListener("click", () => {
        state.sort = { key: column.key, dir: state.sort.key === column.key ? -state.sort.dir : 1 };
        renderBrowse();
      });
      const th = el("th", { attrs: { "data-key": column.key } }, button);
      if (state.sort.key === column.key) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
      head.append(th);
    }
    $("browse-table").tHead.replaceChildren(head);
    const text = $("filter").value.trim().toLowerCase();
    const label = $("filter-label").value;
    const status = $("filter-status").value;
    let rows = t.rows.filter((r) =>
      (!text || `${r.name} ${r.label || ""} ${r.error}`.toLowerCase().includes(text)) &&
      (!label || r.label === label) &&
      (!status || r.status === status));
    const sortColumn = columns.find((c) => c.key === state.sort.key) || columns[0];
    const dir = state.sort.dir;
    rows = rows.slice().sort((a, b) => {
      const x = sortColumn.value(a);
      const y = sortColumn.value(b);
      if (x === y) return a.id - b.id;
      if (x === null || x === undefined || x === "") return 1; // empty cells last, whichever the direction
      if (y === null || y === undefined || y === "") return -1;
      return (x < y ? -1 : 1) * dir;
    });
    const body = $("browse-table").tBodies[0];
    body.replaceChildren(
      ...rows.map((r) => {
        const tr = el("tr", { cls: r.status === "error" ? "error" : "", attrs: { "data-row": String(r.id) } },
          ...columns.map((c) => {
            const v = c.value(r);
            // An empty number of a predicted row is an untrained head's; of an error row, there is none.
            const empty = r.status === "ok" && c.show ? "untrained" : "–";
            const text = v === null || v === undefined ? empty : c.show ? c.show(v) : String(v);
            return el("td", { text, cls: c.cls || "" });
          }));
        tr.addEventListener("click", () => openRow(r.id));
        return tr;
      }),
    );
    $("browse-count").textContent = `${rows.length} of ${t.rows.length} rows`;
  }

  async function openRow(row) {
    showMessage("");
    let job;
    try {
      job = await api(sessionPath(`/browse/${row}`), { method: "POST" });
    } catch (error) {
      showMessage(error.message);
      return;
    }
    await track(job);
  }

  // ------------------------------------------------------------------------------------------ model card

  function renderCard(card) {
    const box = $("card");
    const parts = [
      el("h2", { text: `Model card: ${card.name}` }),
      el("p", { cls: "caveat" }, rich(card.notice)),
      el("h3", { text: "Intended use" }),
      el("p", {}, rich(card.intended_use)),
      el("h3", { text: "Classes" }),
      table(card.classes.map((c, i) => [i, c.name, c.training_items ?? "not recorded"]), ["index", "class", "training items"]),
      el("h3", { text: "Training data" }),
    ];
    if (card.training_data) {
      const sources = Object.entries(card.training_data.sources).map(([s, n]) => `${s} (${n})`).join(", ");
      parts.push(el("p", { text: `${card.training_data.n_items ?? "?"} training items; sources: ${sources}` }));
    } else {
      parts.push(el("p", { text: "The model does not record its training data." }));
    }
    if (card.heads) {
      parts.push(table(card.heads.map((h) => [h.head, h.trained ? "yes" : "no", h.items ?? "–", Object.entries(h.sources).map(([s, n]) => `${s} (${n})`).join(", ") || "–"]), ["head", "trained", "items", "sources"]));
    }
    parts.push(
      el("h3", { text: "Inputs and outputs" }),
      el("p", { text: `Letterboxed to ${card.image_size} px; temperature ${card.temperature}; runs at ${card.precision}. Learned severity targets: ${card.severity_targets.join(", ") || "none"}.` }),
    );
    if (card.untrained.length) parts.push(el("p", { cls: "caveat", text: `Withheld (heads that saw no training target): ${card.untrained.join(", ")}` }));
    for (const caveat of card.caveats) parts.push(el("p", { cls: "caveat", text: `Caveat: ${caveat}` }));
    parts.push(el("h3", { text: "Limitations" }), el("ul", {}, ...card.limitations.map((l) => el("li", {}, rich(l)))));
    box.replaceChildren(...parts);
  }

  // ------------------------------------------------------------------------------------------ wiring

  function showView(name) {
    for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-pressed", String(tab.dataset.view === name));
    for (const view of ["upload", "browse", "card"]) $(`${view}-view`).hidden = view !== name;
  }

  function wire() {
    for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
    const zone = $("dropzone");
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      upload(e.dataTransfer.files);
    });
    // A file dropped beside the zone must not make the browser navigate away (and end the session).
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("file-input").addEventListener("change", (e) => {
      upload(e.target.files);
      e.target.value = "";
    });
    $("opacity").addEventListener("input", applyOpacity);
    for (const id of ["filter", "filter-label", "filter-status"]) $(id).addEventListener("input", renderBrowse);
    $("keep").addEventListener("change", async (e) => {
      if (!e.target.checked) return;
      try {
        const kept = await api(sessionPath("/keep"), { method: "POST" });
        e.target.disabled = true;
        $("keep-status").textContent = `copies go to ${kept.folder} on the server`;
      } catch (error) {
        e.target.checked = false;
        showMessage(error.message);
      }
    });
    window.addEventListener("pagehide", closeSession);
    window.addEventListener("pageshow", (e) => {
      if (e.persisted) restartSession("");
    });
  }

  async function start() {
    wire();
    try {
      state.info = await api("/api/info");
      await openSession();
    } catch (error) {
      showMessage(`The viewer cannot start: ${error.message}`);
      return;
    }
    const info = state.info;
    $("notice").textContent = info.notice;
    $("limits").textContent = `Up to ${info.limits.max_files} files at once, ${info.limits.max_upload_mb} MB each. ` +
      "Uploads are deleted from the server when you close this page.";
    $("keep-row").hidden = !info.limits.keep_available;
    renderCard(info.model);
    if (info.browse) {
      $("browse-tab").hidden = false;
      $("browse-tab").textContent = `Browse predictions (${info.browse.rows})`;
      await loadBrowse();
    }
    document.body.dataset.ready = "true";
  }

  start();
})();
