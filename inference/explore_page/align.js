"use strict";
// The alignment parts of the page (DATA.alignment: RUN/align.json as explore_align.py checked
// it; each sentence's `links`, word links from the best layer of its own cross-attention):
// the per-head AER figure in the figures view, and "show word links" in the head view, dashed
// black lines from each output word to the source word it is linked to. page.js owns the state
// and calls setUp() once and render() after its own views (the head view's SVG is drawn then);
// this file uses its $, element(), SVG, state, update(), current() and figures.js's wordGroups.

const ALIGN_VIEW = (() => {
  const report = () => DATA.alignment || null;

  function setUp() {
    state.links = false;
    $("word-links").addEventListener("change", (e) => update({ links: e.target.checked }));
  }

  function render() {
    const on = Boolean(report()) && state.kind === "cross";
    $("word-links-choice").hidden = !on;
    $("word-links").checked = state.links;
    renderTables();
    if (on && state.links) drawLinks();
  }

  // A score or a dash, three decimals.
  const cell = (v) => element("td", {}, v === null || v === undefined ? "\u2013" : v.toFixed(3));

  function renderTables() {
    const box = $("alignment-figures"), r = report();
    box.hidden = !r || state.kind !== "cross";
    if (box.hidden) return;
    const table = element("table", { class: "figure-table", "data-figure": "aer" });
    table.append(element("caption", {}, `AER by layer and head (lower is closer), ` +
      `${r.sentences} ${r.split} sentences, step ${r.checkpoint_step}: ` +
      (r.reference === "gold" ? "AER against gold" : "agreement with eflomal, not accuracy")));
    const header = element("tr");
    header.append(element("th"), ...r.layers[0].heads.map((h) => element("th", {},
      `head ${h.head + 1}`)), element("th", {}, "heads averaged"), element("th", {}, "Shift-Att"));
    table.append(header);
    for (const entry of r.layers) {
      const tr = element("tr", { "data-layer": entry.layer });
      tr.append(element("th", {}, `layer ${entry.layer + 1}` +
        (entry.layer === r.best_layer ? " (best)" : "")));
      tr.append(...entry.heads.map((h) => cell(h.naive.aer)), cell(entry.mean.naive.aer),
                cell(entry.mean.shift.aer));
      table.append(tr);
    }
    box.replaceChildren(table, element("p", { class: "hint" }, r.what));
  }

  // Word links over the head view's lines: output word j (left) to source word i (right).
  function drawLinks() {
    const s = sentence(), svg = $("lines"), y = (i) => 26 + i * 22;
    const rows = state.merge ? null : wordGroups(s.tgt_out), cols = state.merge ? null
      : wordGroups(s.src);
    for (const [i, j] of s.links || []) {
      const row = rows ? rows[j][0] : j, col = cols ? cols[i][0] : i;
      svg.append(element("line", { x1: 206, y1: y(row), x2: 414, y2: y(col), stroke: "#000",
        "stroke-width": 2.5, "stroke-dasharray": "6 3", class: "word-link",
        "data-source": i, "data-target": j }, null, SVG));
    }
  }

  return { setUp, render };
})();
