"use strict";
// The explore page: reads the JSON in #mha-data (written by mha.inference.explore) and draws
// its views of it. Everything the page shows is derived from `state`; tests read it through
// window.mhaState. Needs figures.js (wordGroups, mergeMatrix, headFigures, ...),
// importance.js (the stored head figures' colours and texts) and the views in files of their own
// (history.js: the training tab; embeddings.js; align.js) loaded first. A token that shows a piece carries
// data-piece (and data-word when it is a merged word): a click on it looks it up in embeddings.js.

const DATA = JSON.parse(document.getElementById("mha-data").textContent);
const REPORT = DATA.heads || null;  // RUN/heads.json, as explore.py checked it; null without
const STORED = new Map((REPORT ? REPORT.heads : []).map((r) =>
  [headKey(r.kind, r.layer, r.head), r]));  // its records by headKey()
const SCALE = REPORT ? importanceScale(REPORT.heads) : 1;
const KINDS = {  // which labels name a kind's rows (queries) and columns (keys)
  encoder: { title: "encoder self-attention", rows: "src", cols: "src" },
  decoder: { title: "decoder masked self-attention", rows: "tgt_out", cols: "tgt_in" },
  cross: { title: "encoder-decoder attention", rows: "tgt_out", cols: "src" },
};
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
                "#7b4173", "#3182bd"];
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const LINE_MIN = 0.005;  // lighter lines are not drawn: invisible, and they would crowd the SVG
const HIDDEN_COLOUR = "#b0b0b0", HIDDEN_OPACITY = 0.3;  // a hidden head's lines: grey, faint
const EXTRA_VIEWS = [HISTORY_VIEW, EMBEDDINGS_VIEW, ALIGN_VIEW];  // each {setUp(), render()}

const state = {
  sentence: 0, kind: "cross", view: "model", merge: false, layer: 0, average: false, step: 0,
  heads: Array.from({ length: DATA.model.heads }, () => true),  // chosen in the head view
  enlarged: null,  // [layer, head] of the enlarged matrix in the model view
  hover: null,  // {side: "left" | "right", index} in the head view
  highlighted: [],  // ids "head:row:col" of the lines lit by the hover
  hidden: [],  // headKey()s of the heads hidden with "hide this head"
};

const $ = (id) => document.getElementById(id);

function element(tag, attributes = {}, text = null, namespace = null) {
  const node = namespace ? document.createElementNS(namespace, tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function color(weight) {  // viridis, 0 dark purple to 1 yellow
  const x = Math.min(Math.max(weight, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const c = VIRIDIS[i].map((v, k) => Math.round(v + (VIRIDIS[i + 1][k] - v) * (x - i)));
  return `rgb(${c.join(",")})`;
}

// A shown token's data-piece, and data-word when subwords are merged into words.
function pieceAttributes(text) {
  return state.merge ? { "data-piece": text, "data-word": "" } : { "data-piece": text };
}

function headKey(kind, layer, head) {
  return `${kind}:${layer}:${head}`;
}

function stored(kind, layer, head) {  // a head's record in heads.json, or null
  return STORED.get(headKey(kind, layer, head)) || null;
}

function isHidden(layer, head, kind = state.kind) {
  return state.hidden.includes(headKey(kind, layer, head));
}

function toggleHidden(layer, head) {
  const key = headKey(state.kind, layer, head);
  update({ hidden: isHidden(layer, head) ? state.hidden.filter((k) => k !== key)
    : [...state.hidden, key] });
}

function sentence() {
  return DATA.sentences[state.sentence];
}

// The chosen sentence and kind as shown: labels and layers x heads x rows x cols weights,
// merged into words when the toggle is on.
function current() {
  const s = sentence();
  const kind = KINDS[state.kind];
  const rows = s[kind.rows], cols = s[kind.cols], layers = s.weights[state.kind];
  if (!state.merge) return { rows, cols, layers };
  const rowGroups = wordGroups(rows), colGroups = wordGroups(cols);
  return {
    rows: wordLabels(rows, rowGroups), cols: wordLabels(cols, colGroups),
    layers: layers.map((heads) => heads.map((m) => mergeMatrix(m, rowGroups, colGroups))),
  };
}

function figures() {
  return headFigures(current().layers, state.kind === "cross");
}

function drawMatrix(canvas, matrix, cell, left = 0, top = 0) {
  const context = canvas.getContext("2d");
  matrix.forEach((row, i) => row.forEach((w, j) => {
    context.fillStyle = color(w);
    context.fillRect(left + j * cell, top + i * cell, cell, cell);
  }));
}

function renderHeader() {
  const s = sentence(), m = DATA.model;
  $("run-info").textContent = `run ${DATA.run}, checkpoint ${DATA.checkpoint};` +
    ` ${m.heads} heads of d_k ${m.d_model / m.heads}, ${m.encoder_layers} encoder and` +
    ` ${m.decoder_layers} decoder layers; ${DATA.beam > 1 ? `beam ${DATA.beam}` : "greedy"}`;
  $("source-text").textContent = s.text || "(empty line)";
  $("output-text").textContent = s.translation || "(empty)";
  $("sentence").value = String(state.sentence);
  $("kind").value = state.kind;
  $("merge").checked = state.merge;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.view === state.view);
  }
  for (const view of document.querySelectorAll(".view")) {
    view.hidden = view.id !== `${state.view}-view`;
  }
}

function renderModel() {
  const { rows, cols, layers } = current();
  const cell = Math.max(2, Math.floor(110 / Math.max(rows.length, cols.length, 1)));
  const grid = $("grid");
  grid.replaceChildren();
  grid.style.gridTemplateColumns = `repeat(${layers[0].length + 1}, max-content)`;
  layers.forEach((heads, l) => {
    grid.append(element("div", { class: "row-label" }, `layer ${l + 1}`));
    heads.forEach((matrix, h) => {
      const panel = element("div", { class: "panel", "data-layer": l, "data-head": h });
      const chosen = state.enlarged && state.enlarged[0] === l && state.enlarged[1] === h;
      panel.classList.toggle("chosen", Boolean(chosen));
      panel.classList.toggle("hidden-head", isHidden(l, h));
      const canvas = element("canvas", { width: cols.length * cell, height: rows.length * cell });
      drawMatrix(canvas, matrix, cell);
      const label = element("div", {}, `head ${h + 1}`), record = stored(state.kind, l, h);
      if (record) {
        panel.dataset.importance = record.bleu_drop;
        label.prepend(importanceChip(record, SCALE, REPORT.heads.length));
      }
      panel.append(canvas, label);
      panel.addEventListener("click", () => update({ enlarged: [l, h] }));
      grid.append(panel);
    });
  });
  renderEnlarged(rows, cols, layers);
}

function renderEnlarged(rows, cols, layers) {
  const box = $("enlarged");
  const chosen = state.enlarged;
  box.hidden = !chosen || chosen[0] >= layers.length;
  if (box.hidden) return;
  const [l, h] = chosen, matrix = layers[l][h], cell = 20, canvas = $("enlarged-canvas");
  const { left, top } = drawLabelled(canvas, rows, cols, matrix, cell);
  $("enlarged-title").textContent = `${KINDS[state.kind].title}, layer ${l + 1}, head ${h + 1}` +
    " (rows attend to columns)";
  canvas.onmousemove = (event) => {
    const i = Math.floor((event.offsetY - top) / cell), j = Math.floor((event.offsetX - left) / cell);
    $("enlarged-cell").textContent = i >= 0 && j >= 0 && i < rows.length && j < cols.length
      ? `${rows[i]} \u2192 ${cols[j]}: ${matrix[i][j].toFixed(4)}` : "";
  };
}

// A heatmap with its row labels on the left and column labels above; cell i, j starts at
// (left + j * cell, top + i * cell), kept in the canvas's data-left, data-top and data-cell.
function drawLabelled(canvas, rows, cols, matrix, cell) {
  const context = canvas.getContext("2d");
  context.font = "12px system-ui, sans-serif";
  const widest = (labels) => Math.max(0, ...labels.map((t) => context.measureText(t).width));
  const left = widest(rows) + 10, top = widest(cols) + 10;
  canvas.width = left + cols.length * cell + 4;
  canvas.height = top + rows.length * cell + 4;
  context.font = "12px system-ui, sans-serif";
  context.fillStyle = "#222";
  context.textAlign = "right";
  context.textBaseline = "middle";
  rows.forEach((t, i) => context.fillText(t, left - 5, top + (i + 0.5) * cell));
  cols.forEach((t, j) => {
    context.save();
    context.translate(left + (j + 0.5) * cell, top - 5);
    context.rotate(-Math.PI / 2);
    context.textAlign = "left";
    context.fillText(t, 0, 0);
    context.restore();
  });
  drawMatrix(canvas, matrix, cell, left, top);
  Object.assign(canvas.dataset, { left, top, cell });
  return { left, top };
}

const SVG = "http://www.w3.org/2000/svg";

function renderHeadControls(layerCount) {
  const layer = $("layer");
  if (layer.options.length !== layerCount) {
    layer.replaceChildren(...Array.from({ length: layerCount },
      (_, l) => element("option", { value: l }, `${l + 1}`)));
  }
  state.layer = Math.min(state.layer, layerCount - 1);
  layer.value = String(state.layer);
  $("average").checked = state.average;
  const chooser = $("head-chooser");
  chooser.replaceChildren(...state.heads.map((on, h) => {
    const label = element("label", { class: "head-choice", title: `head ${h + 1}` });
    const box = element("input", { type: "checkbox", "data-head": h });
    box.checked = on;
    box.addEventListener("change", () => {
      const heads = state.heads.slice();
      heads[h] = box.checked;
      update({ heads });
    });
    const swatch = element("span", { class: "swatch" });
    swatch.style.background = COLORS[h % COLORS.length];
    label.append(box, swatch, document.createTextNode(`${h + 1}`));
    return label;
  }));
}

// The stored figures of the chosen layer's heads, each with its "hide this head" toggle.
function renderImportance() {
  const box = $("importance");
  box.hidden = !REPORT;
  if (!REPORT) return;
  const records = state.heads.map((_, h) => stored(state.kind, state.layer, h));
  box.replaceChildren(element("p", { class: "hint" }, `${KINDS[state.kind].title}, layer` +
    ` ${state.layer + 1}:`), ...importanceRows(records, SCALE, REPORT.heads.length,
    (h) => isHidden(state.layer, h), (h) => toggleHidden(state.layer, h)));
}

// Line sets to draw: [{head, colour, matrix, hidden}], one per chosen head (hidden heads grey)
// or the average of the chosen heads not hidden.
function lineSets(heads) {
  const chosen = state.heads.map((on, h) => (on ? h : -1)).filter((h) => h >= 0);
  if (!state.average) {
    return chosen.map((h) => {
      const hidden = isHidden(state.layer, h);
      return { head: h, colour: hidden ? HIDDEN_COLOUR : COLORS[h % COLORS.length],
               matrix: heads[h], hidden };
    });
  }
  const kept = chosen.filter((h) => !isHidden(state.layer, h));
  if (!kept.length) return [];
  const matrix = heads[0].map((row, i) => row.map((_, j) =>
    kept.reduce((sum, h) => sum + heads[h][i][j], 0) / kept.length));
  return [{ head: "mean", colour: "#444", matrix, hidden: false }];
}

function renderHead() {
  const { rows, cols, layers } = current();
  renderHeadControls(layers.length);
  renderImportance();
  const svg = $("lines"), rowHeight = 22, width = 620, leftX = 200, rightX = 420;
  svg.replaceChildren();
  svg.setAttribute("width", width);
  svg.setAttribute("height", Math.max(rows.length, cols.length) * rowHeight + 30);
  const y = (i) => 30 + i * rowHeight;
  svg.append(element("text", { x: leftX, y: 12, "text-anchor": "end" }, "attends (rows)", SVG));
  svg.append(element("text", { x: rightX, y: 12 }, "attended to (columns)", SVG));
  for (const set of lineSets(layers[state.layer])) {
    set.matrix.forEach((row, i) => row.forEach((w, j) => {
      if (w < LINE_MIN) return;
      svg.append(element("line", {
        x1: leftX + 6, y1: y(i) - 4, x2: rightX - 6, y2: y(j) - 4, stroke: set.colour,
        "stroke-width": 2, "stroke-opacity": (set.hidden ? w * HIDDEN_OPACITY : w).toFixed(4),
        "data-weight": w, "data-row": i, "data-col": j, "data-head": set.head,
        class: set.hidden ? "line hidden-head" : "line",
      }, null, SVG));
    }));
  }
  const token = (side, text, i) => {
    const node = element("text", {
      x: side === "left" ? leftX : rightX, y: y(i), class: `token ${side}`, "data-index": i,
      "text-anchor": side === "left" ? "end" : "start", ...pieceAttributes(text),
    }, text, SVG);
    node.addEventListener("mouseenter", () => hover({ side, index: i }));
    node.addEventListener("mouseleave", () => hover(null));
    return node;
  };
  rows.forEach((t, i) => svg.append(token("left", t, i)));
  cols.forEach((t, j) => svg.append(token("right", t, j)));
  hover(state.hover && state.hover.side ? state.hover : null);
}

// Light the lines of the hovered token, dim the rest. A lit line's opacity is its weight over
// the heaviest lit line's, so a spread-out row still shows which keys lead. Hidden heads' lines
// stay unlit.
function hover(target) {
  state.hover = target;
  const lines = Array.from($("lines").querySelectorAll("line.line"));
  const on = lines.map((line) => Boolean(target) && !line.classList.contains("hidden-head") &&
    Number(target.side === "left" ? line.dataset.row : line.dataset.col) === target.index);
  const heaviest = Math.max(0, ...lines.filter((_, n) => on[n]).map((l) => Number(l.dataset.weight)));
  const lit = [];
  lines.forEach((line, n) => {
    line.classList.toggle("hl", on[n]);
    line.classList.toggle("dim", Boolean(target) && !on[n]);
    line.style.strokeOpacity = on[n] ? String(Number(line.dataset.weight) / heaviest) : "";
    if (on[n]) lit.push(`${line.dataset.head}:${line.dataset.row}:${line.dataset.col}`);
  });
  for (const node of $("lines").querySelectorAll("text.token")) {
    const side = node.classList.contains("left") ? "left" : "right";
    node.classList.toggle("hl", Boolean(target) && side === target.side &&
      Number(node.dataset.index) === target.index);
  }
  state.highlighted = lit;
}

function renderSteps() {
  const s = sentence(), T = s.steps.length, slider = $("step");
  slider.max = String(T - 1);
  state.step = Math.min(state.step, T - 1);
  slider.value = String(state.step);
  const step = s.steps[state.step];
  $("step-label").textContent = `${state.step + 1} of ${T}: chose ${step.chosen}`;
  $("prefix").replaceChildren(...s.tgt_out.slice(0, state.step + 1).map((t, i) =>
    element("span", { class: i === state.step ? "current" : "", "data-piece": t }, t)));
  $("candidates").replaceChildren(...step.candidates.map(([piece, p]) => {
    const item = element("li", { class: piece === step.chosen ? "chosen-token" : "",
      "data-piece": piece }, `${piece} ${(100 * p).toFixed(1)}%`);
    const bar = element("span", { class: "bar" });
    bar.style.width = `${Math.round(200 * p)}px`;
    item.append(bar);
    return item;
  }));
  $("beam-box").hidden = !step.beams;
  $("beams").replaceChildren(...(step.beams || []).map(([text, score]) =>
    element("li", {}, `${text || "(empty)"}  score ${score.toFixed(3)}`)));
  renderStepAttention(s);
}

function renderStepAttention(s) {
  const groups = state.merge ? wordGroups(s.src) : s.src.map((_, j) => [j]);
  const labels = state.merge ? wordLabels(s.src, groups) : s.src;
  const table = $("step-attention");
  const header = element("tr", {}, null);
  header.append(element("th", {}, ""), ...labels.map((t) => element("th", pieceAttributes(t), t)));
  table.replaceChildren(header);
  s.weights.cross.forEach((heads, l) => heads.forEach((matrix, h) => {
    const tr = element("tr", { class: isHidden(l, h, "cross") ? "hidden-head" : "" }, null);
    const name = element("th", {}, `layer ${l + 1} head ${h + 1}`), record = stored("cross", l, h);
    if (record) name.prepend(importanceChip(record, SCALE, REPORT.heads.length));
    tr.append(name);
    for (const w of mergeRow(matrix[state.step], groups)) {
      const td = element("td", { class: "cell", title: w.toFixed(4) });
      td.style.background = color(w);
      tr.append(td);
    }
    table.append(tr);
  }));
}

const FIGURES = [
  ["entropy", "Mean row entropy (bits)"], ["maxWeight", "Mean max weight"],
  ["jsDistance", "Mean JS distance to the other heads"], ["diagonal", "Diagonal share"],
];

// A layers x heads table; paint(v) gives a cell's style.
function figureTable(key, title, values, format, paint = () => ({})) {
  const table = element("table", { class: "figure-table", "data-figure": key });
  table.append(element("caption", {}, title));
  const header = element("tr");
  header.append(element("th"), ...values[0].map((_, h) => element("th", {}, `head ${h + 1}`)));
  table.append(header);
  values.forEach((heads, l) => {
    const tr = element("tr");
    tr.append(element("th", {}, `layer ${l + 1}`));
    tr.append(...heads.map((v) => {
      const td = element("td", {}, v === null || v === undefined ? "\u2013" : format(v));
      Object.assign(td.style, paint(v));
      return td;
    }));
    table.append(tr);
  });
  return table;
}

function renderFigures() {
  const values = figures(), box = $("figure-tables");
  box.replaceChildren(element("p", { class: "hint" }, `${KINDS[state.kind].title}` +
    `${state.merge ? ", subwords merged into words" : ""}; definitions in the legend below.`));
  for (const [key, title] of FIGURES) {
    if (values[key]) box.append(figureTable(key, title, values[key], (v) => v.toFixed(3)));
  }
  if (!REPORT) return;
  const layers = DATA.model[state.kind === "encoder" ? "encoder_layers" : "decoder_layers"];
  box.append(...storedFigureTables(Array.from({ length: layers }, (_, l) =>
    state.heads.map((_, h) => stored(state.kind, l, h))), REPORT, SCALE));
}

function renderHeadsInfo() {  // once: the stored figures do not change with the choices
  const box = $("heads-info"), warning = $("heads-warning");
  box.hidden = !REPORT;
  warning.textContent = REPORT ? stepWarning(REPORT, DATA.run, DATA.checkpoint_step) : "";
  warning.hidden = !warning.textContent;
  if (REPORT) box.replaceChildren(...reportSummary(REPORT, DATA.run, SCALE));
}

function render() {
  const empty = !DATA.sentences.length;  // the live page before its first sentence
  for (const part of document.querySelectorAll("header .controls, .pair, nav, main")) {
    part.style.display = empty ? "none" : "";  // a style: .controls sets display: flex
  }
  if (empty) return;
  renderHeader();
  renderModel();
  renderHead();
  renderSteps();
  renderFigures();
  for (const view of EXTRA_VIEWS) view.render();
}

function update(patch) {
  Object.assign(state, patch);
  render();
}

function listSentences() {
  $("sentence").replaceChildren(...DATA.sentences.map((s, i) =>
    element("option", { value: i }, `${i + 1}. ${(s.text || "(empty line)").slice(0, 70)}`)));
}

// Another source of the page's JSON (live.js: the server's answers) replaces it and shows
// sentence `index`; the views redraw from it as from the inline block.
function show(data, index = 0) {
  Object.assign(DATA, data);
  listSentences();
  update({ sentence: index, step: 0, enlarged: null, hover: null });
}

function setUp() {
  listSentences();
  $("sentence").addEventListener("change", (e) =>
    update({ sentence: Number(e.target.value), step: 0, enlarged: null, hover: null }));
  $("kind").addEventListener("change", (e) =>
    update({ kind: e.target.value, enlarged: null, hover: null }));
  $("merge").addEventListener("change", (e) => update({ merge: e.target.checked, hover: null }));
  $("layer").addEventListener("change", (e) => update({ layer: Number(e.target.value) }));
  $("average").addEventListener("change", (e) => update({ average: e.target.checked }));
  $("step").addEventListener("input", (e) => update({ step: Number(e.target.value) }));
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => update({ view: tab.dataset.view }));
  }
  window.mhaState = Object.assign(state, { data: DATA, current, figures, update, stored, show,
                                            color });
  for (const view of EXTRA_VIEWS) view.setUp();
  renderHeadsInfo();
  render();
}

setUp();
