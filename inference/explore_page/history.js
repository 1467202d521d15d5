"use strict";
// The training tab: the watched sentences' attention at every validation (DATA.history, written
// by explore_history.py: 8-bit weights in base64) and the mean attention entropy per kind against
// updates, with a marker at the slider's update. page.js owns the state and calls setUp() once
// and render() on every change; this file uses its $, element(), color(), drawMatrix(),
// drawLabelled(), KINDS, SVG, state and update(), and figures.js's word merge.

const KIND_COLOURS = { encoder: "#1f77b4", decoder: "#2ca02c", cross: "#d62728" };
const PLOT = { width: 420, height: 230, left: 40, right: 70, top: 14, bottom: 34 };

const HISTORY_VIEW = (() => {
  const decoded = new Map();  // "step:sentence:kind" -> layers x heads x rows x cols

  function history() {
    return DATA.history || null;
  }

  function sentenceText(pieces) {  // pieces -> the text they spell, specials left out
    return pieces.filter((p) => !SPECIALS.has(p)).join("").replace(/\u2581/g, " ").trim();
  }

  function bytes(text) {  // base64 -> Uint8Array
    const binary = atob(text), out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  }

  // Update index `step`, watched sentence `s`, one kind: layers x heads x rows x cols, in [0, 1].
  function layers(step, s, kind) {
    const key = `${step}:${s}:${kind}`;
    if (!decoded.has(key)) {
      const h = history(), sentence = h.sentences[s], kinds = KINDS[kind];
      const R = sentence[kinds.rows].length, C = sentence[kinds.cols].length;
      const L = DATA.model[kind === "encoder" ? "encoder_layers" : "decoder_layers"];
      const H = DATA.model.heads, values = bytes(h.weights[step][s][kind]);
      const at = (l, k, i, j) => values[((l * H + k) * R + i) * C + j] / h.levels;
      decoded.set(key, Array.from({ length: L }, (_, l) => Array.from({ length: H }, (_, k) =>
        Array.from({ length: R }, (_, i) => Array.from({ length: C }, (_, j) => at(l, k, i, j))))));
    }
    return decoded.get(key);
  }

  // What the tab draws: labels and layers for the chosen update, sentence and kind, merged
  // into words when the page's toggle is on.
  function shown() {
    const sentence = history().sentences[state.historySentence], kind = KINDS[state.kind];
    const rows = sentence[kind.rows], cols = sentence[kind.cols];
    const all = layers(state.historyStep, state.historySentence, state.kind);
    if (!state.merge) return { rows, cols, layers: all };
    const rowGroups = wordGroups(rows), colGroups = wordGroups(cols);
    return { rows: wordLabels(rows, rowGroups), cols: wordLabels(cols, colGroups),
             layers: all.map((heads) => heads.map((m) => mergeMatrix(m, rowGroups, colGroups))) };
  }

  function options(select, count, label) {
    if (select.options.length !== count) {
      select.replaceChildren(...Array.from({ length: count },
        (_, i) => element("option", { value: i }, label(i))));
    }
  }

  function setUp() {
    const h = history();
    $("training-tab").hidden = !h;
    if (!h) return;
    Object.assign(state, { historySentence: 0, historyStep: h.steps.length - 1, historyLayer: 0,
                           historyHead: 0 });
    options($("history-sentence"), h.sentences.length, (i) => `${i + 1}. ` +
      sentenceText(h.sentences[i].src).slice(0, 70));
    $("history-sentence").addEventListener("change", (e) =>
      update({ historySentence: Number(e.target.value) }));
    $("history-layer").addEventListener("change", (e) =>
      update({ historyLayer: Number(e.target.value) }));
    $("history-head").addEventListener("change", (e) =>
      update({ historyHead: Number(e.target.value) }));
    $("history-step").addEventListener("input", (e) =>
      update({ historyStep: Number(e.target.value) }));
    Object.assign(state, { historyShown: shown });
  }

  function render() {
    const h = history();
    if (!h || state.view !== "training") return;
    const { rows, cols, layers: all } = shown(), steps = h.steps;
    options($("history-layer"), all.length, (l) => `${l + 1}`);
    options($("history-head"), DATA.model.heads, (k) => `${k + 1}`);
    state.historyLayer = Math.min(state.historyLayer, all.length - 1);
    $("history-sentence").value = String(state.historySentence);
    $("history-layer").value = String(state.historyLayer);
    $("history-head").value = String(state.historyHead);
    const slider = $("history-step");
    slider.max = String(steps.length - 1);
    slider.value = String(state.historyStep);
    $("history-step-label").textContent = `update ${steps[state.historyStep]}` +
      ` (validation ${state.historyStep + 1} of ${steps.length})`;
    const sentence = h.sentences[state.historySentence];
    $("history-source").textContent = sentenceText(sentence.src);
    $("history-reference").textContent = sentenceText(sentence.tgt_out);
    renderGrid(rows, cols, all);
    const canvas = $("history-canvas"), [l, k] = [state.historyLayer, state.historyHead];
    drawLabelled(canvas, rows, cols, all[l][k], 20);
    canvas.dataset.step = steps[state.historyStep];
    $("history-title").textContent = `${KINDS[state.kind].title}, layer ${l + 1}, head ${k + 1},` +
      ` at update ${steps[state.historyStep]} (rows attend to columns)`;
    renderEntropy(h);
    renderAlignment(h);
  }

  function renderGrid(rows, cols, all) {  // every layer and head at this update; click: enlarge
    const grid = $("history-grid"), cell = Math.max(2, Math.floor(60 / Math.max(rows.length,
      cols.length, 1)));
    grid.style.gridTemplateColumns = `repeat(${all[0].length}, max-content)`;
    grid.replaceChildren(...all.flatMap((heads, l) => heads.map((matrix, k) => {
      const panel = element("div", { class: "panel", "data-layer": l, "data-head": k,
                                     title: `layer ${l + 1}, head ${k + 1}` });
      panel.classList.toggle("chosen", l === state.historyLayer && k === state.historyHead);
      const canvas = element("canvas", { width: cols.length * cell, height: rows.length * cell });
      drawMatrix(canvas, matrix, cell);
      panel.append(canvas);
      panel.addEventListener("click", () => update({ historyLayer: l, historyHead: k }));
      return panel;
    })));
  }

  // Entropy per kind against updates (solid), uniform attention's (dashed), the slider's marker.
  function renderEntropy(h) {
    const svg = $("entropy-plot"), p = PLOT, steps = h.steps;
    svg.setAttribute("width", p.width);
    svg.setAttribute("height", p.height);
    const top = Math.max(...Object.values(h.uniform), ...Object.values(h.entropy).flat()) * 1.05;
    const first = steps[0], span = steps[steps.length - 1] - first || 1;
    const x = (step) => p.left + (p.width - p.left - p.right) * (steps.length > 1
      ? (step - first) / span : 0.5);
    const y = (bits) => p.height - p.bottom - (p.height - p.top - p.bottom) * bits / (top || 1);
    const line = (attributes) => element("line", attributes, null, SVG);
    const text = (x0, y0, label, anchor) => element("text", { x: x0, y: y0, "text-anchor": anchor },
      label, SVG);
    svg.replaceChildren(
      line({ x1: p.left, y1: y(0), x2: p.width - p.right, y2: y(0), stroke: "#888" }),
      line({ x1: p.left, y1: y(0), x2: p.left, y2: p.top, stroke: "#888" }),
      text(p.left - 4, y(0) + 4, "0", "end"), text(p.left - 4, y(top) + 4, top.toFixed(1), "end"),
      text(x(first), y(0) + 14, String(first), "middle"),
      text(x(steps[steps.length - 1]), y(0) + 14, String(steps[steps.length - 1]), "middle"),
      text((p.left + p.width) / 2, p.height - 4, "updates", "middle"));
    Object.keys(h.entropy).forEach((kind, n) => {
      const colour = KIND_COLOURS[kind], width = kind === state.kind ? 3 : 1.5;
      svg.append(line({ x1: p.left, x2: p.width - p.right, y1: y(h.uniform[kind]),
        y2: y(h.uniform[kind]), stroke: colour, "stroke-dasharray": "4 3", "stroke-width": 1 }));
      svg.append(element("polyline", {
        points: steps.map((s, i) => `${x(s).toFixed(2)},${y(h.entropy[kind][i]).toFixed(2)}`)
          .join(" "), fill: "none", stroke: colour, "stroke-width": width, class: "series",
        "data-kind": kind }, null, SVG));
      const key = text(p.width - p.right + 6, p.top + 14 * (n + 1), kind, "start");
      key.setAttribute("fill", colour);
      svg.append(key);
    });
    const at = steps[state.historyStep];
    svg.append(line({ id: "entropy-marker", x1: x(at), x2: x(at), y1: p.top, y2: y(0),
                      stroke: "#222", "stroke-width": 1.5, "data-step": at }));
  }

  // The alignment figure against updates (explore_align.alignment_by_step): the share of the
  // watched sentences' words linked as eflomal links them, per update, marker at the slider's.
  function renderAlignment(h) {
    const box = $("alignment-plot"), a = h.alignment;
    if (!a) {
      box.replaceChildren(element("p", { class: "hint" }, `run \`mha align ${DATA.run} ` +
        "--split val` to see alignment as it forms"));
      return;
    }
    const p = PLOT, steps = h.steps, first = steps[0], span = steps[steps.length - 1] - first || 1;
    const x = (step) => p.left + (p.width - p.left - p.right) * (steps.length > 1
      ? (step - first) / span : 0.5);
    const y = (share) => p.height - p.bottom - (p.height - p.top - p.bottom) * share;
    const svg = element("svg", { id: "alignment-svg", width: p.width, height: p.height }, null, SVG);
    svg.append(element("line", { x1: p.left, y1: y(0), x2: p.width - p.right, y2: y(0),
                                 stroke: "#888" }, null, SVG),
      element("text", { x: p.left - 4, y: y(0) + 4, "text-anchor": "end" }, "0", SVG),
      element("text", { x: p.left - 4, y: y(1) + 4, "text-anchor": "end" }, "1", SVG),
      element("polyline", { fill: "none", stroke: "#000", "stroke-width": 2, class: "series",
        points: steps.map((s, i) => [s, a.agreement[i]]).filter(([, v]) => v !== null)
          .map(([s, v]) => `${x(s).toFixed(2)},${y(v).toFixed(2)}`).join(" ") }, null, SVG),
      element("line", { x1: x(steps[state.historyStep]), x2: x(steps[state.historyStep]),
                        y1: p.top, y2: y(0), stroke: "#222", id: "alignment-marker" }, null, SVG));
    box.replaceChildren(element("h3", {}, "Word links against updates"), svg,
                        element("p", { class: "hint" }, a.label));
  }

  return { setUp, render };
})();
