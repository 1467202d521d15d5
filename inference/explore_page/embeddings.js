"use strict";
// The embeddings tab: a typed word's (or a clicked piece's) nearest neighbours by cosine in each
// of the model's embedding tables (DATA.embeddings, written by explore_embeddings.py: int8 rows,
// a float32 scale per row, base64), as mha.inference.embeddings.neighbours finds them. The rule
// for a typed word is stated in the tab (#embed-rule). page.js owns the state and calls setUp()
// once and render() on every change; this file uses its $, element(), state and update().

const WORD_START = "\u2581";

const EMBEDDINGS_VIEW = (() => {
  let decodedTables = null;  // DATA.embeddings.tables, decoded on first use

  function bytes(text) {  // base64 -> ArrayBuffer
    const binary = atob(text), out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out.buffer;
  }

  // Each table: {name, pieces, ids (piece -> id), rows Int8Array (V * D), scales, norms, D}.
  function tables() {
    if (decodedTables) return decodedTables;
    const e = DATA.embeddings;
    decodedTables = e.tables.map((t) => {
      const pieces = e.vocabularies[t.vocabulary], rows = new Int8Array(bytes(t.rows));
      const scales = new Float32Array(bytes(t.scales)), V = pieces.length, D = rows.length / V;
      const norms = new Float64Array(V);
      for (let v = 0; v < V; v++) {
        let sum = 0;
        for (let d = 0; d < D; d++) sum += rows[v * D + d] ** 2;
        norms[v] = Math.sqrt(sum);
      }
      return { name: t.name, pieces, ids: new Map(pieces.map((p, i) => [p, i])), rows, scales,
               norms, D, longest: Math.max(...pieces.map((p) => [...p].length)) };
    });
    return decodedTables;
  }

  // The query's piece ids in a table and the characters no piece covers. exact: the text is one
  // piece as written; otherwise a word: WORD_START in front (spaces become it), then split from
  // the left into the longest pieces of the vocabulary (special pieces never match).
  function segment(table, text, exact) {
    if (exact) {
      return table.ids.has(text) ? { ids: [table.ids.get(text)], unknown: [] }
        : { ids: [], unknown: [text] };
    }
    const word = text.normalize("NFKC").trim().replace(/\s+/g, WORD_START);
    const chars = [...(word.startsWith(WORD_START) ? word : WORD_START + word)];
    const specials = new Set(DATA.embeddings.specials), ids = [], unknown = [];
    for (let i = 0; i < chars.length;) {
      let found = 0;
      for (let n = Math.min(table.longest, chars.length - i); n > 0 && !found; n--) {
        const id = table.ids.get(chars.slice(i, i + n).join(""));
        if (id !== undefined && !specials.has(id)) {
          ids.push(id);
          found = n;
        }
      }
      if (!found) unknown.push(chars[i]);
      i += found || 1;
    }
    return { ids, unknown };
  }

  // The k rows nearest by cosine to the mean of the rows `ids`: [[piece, similarity]], the
  // special pieces and `ids` themselves left out.
  function nearest(table, ids) {
    const { rows, scales, norms, D } = table, query = new Float64Array(D);
    for (const id of ids) for (let d = 0; d < D; d++) query[d] += rows[id * D + d] * scales[id];
    const length = Math.sqrt(query.reduce((sum, q) => sum + q * q, 0));
    const skip = new Set([...DATA.embeddings.specials, ...ids]), found = [];
    for (let v = 0; v < table.pieces.length; v++) {
      if (skip.has(v)) continue;
      let dot = 0;
      for (let d = 0; d < D; d++) dot += rows[v * D + d] * query[d];
      found.push([v, norms[v] && length ? dot / (norms[v] * length) : 0]);
    }
    found.sort((a, b) => b[1] - a[1]);
    return found.slice(0, DATA.embeddings.k).map(([v, s]) => [table.pieces[v], s]);
  }

  // What the tab shows for the query: per table {name, pieces, unknown, neighbours}.
  function answer() {
    const { text, exact } = state.embedQuery;
    if (!text.trim()) return [];
    return tables().map((table) => {
      const { ids, unknown } = segment(table, text, exact);
      return { name: table.name, pieces: ids.map((id) => table.pieces[id]), unknown,
               neighbours: ids.length ? nearest(table, ids) : [] };
    });
  }

  function lookUp(text, exact) {
    update({ view: "embeddings", embedQuery: { text, exact } });
  }

  function setUp() {
    state.embedQuery = { text: "", exact: false };
    $("embeddings-tab").hidden = !DATA.embeddings;
    if (!DATA.embeddings) return;  // a page built without them
    Object.assign(state, { embeddingAnswer: answer, lookUp });
    const box = $("embed-query"), exact = $("embed-exact");
    box.addEventListener("input", () => lookUp(box.value, exact.checked));
    exact.addEventListener("change", () => lookUp(box.value, exact.checked));
    document.addEventListener("click", (event) => {  // a piece anywhere on the page
      const node = event.target.closest("[data-piece]");
      if (node) lookUp(node.dataset.piece, node.dataset.word === undefined);
    });
  }

  function render() {
    if (!DATA.embeddings || state.view !== "embeddings") return;
    const box = $("embed-query");
    if (box.value !== state.embedQuery.text) box.value = state.embedQuery.text;
    $("embed-exact").checked = state.embedQuery.exact;
    $("neighbour-tables").replaceChildren(...answer().map((found) => {
      const part = element("div", { class: "neighbour-table", "data-table": found.name });
      const split = found.pieces.length ? `pieces ${found.pieces.join(" + ")}` : "no piece";
      part.append(element("h3", {}, `${found.name} table: ${split}`));
      if (found.unknown.length) {
        part.append(element("p", { class: "warning" }, `not in this vocabulary: ` +
          found.unknown.join(" ")));
      }
      const list = element("ol");
      list.append(...found.neighbours.map(([piece, similarity]) => {
        const item = element("li", { "data-piece": piece, "data-similarity": similarity }, piece);
        item.append(element("span", { class: "similarity" }, similarity.toFixed(3)));
        return item;
      }));
      part.append(list);
      return part;
    }));
  }

  return { setUp, render };
})();
