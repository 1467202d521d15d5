"use strict";
// Pure functions over attention matrices (arrays of rows, each row a probability distribution).
// The page's per-head figures and its subword -> word merge; tests check them against numpy.

const SPECIALS = new Set(["<s>", "</s>", "<pad>"]);

// Groups of piece indices, one group per word: a piece starting with "\u2581" (SentencePiece's
// word boundary) or a special token starts a new group; other pieces join the previous word.
function wordGroups(pieces) {
  const groups = [];
  pieces.forEach((piece, i) => {
    const previous = i > 0 ? pieces[i - 1] : null;
    if (i === 0 || piece.startsWith("\u2581") || SPECIALS.has(piece) || SPECIALS.has(previous)) {
      groups.push([i]);
    } else {
      groups[groups.length - 1].push(i);
    }
  });
  return groups;
}

function wordLabels(pieces, groups) {
  return groups.map((g) => {
    if (g.length === 1 && SPECIALS.has(pieces[g[0]])) return pieces[g[0]];
    return g.map((i) => pieces[i]).join("").replace(/\u2581/g, "") || "\u2581";
  });
}

// Attention from word a to word b: the mean over a's pieces (queries) of the summed weight on
// b's pieces (keys). Rows still sum to 1.
function mergeMatrix(matrix, rowGroups, colGroups) {
  return rowGroups.map((rows) => colGroups.map((cols) => {
    let total = 0;
    for (const i of rows) for (const j of cols) total += matrix[i][j];
    return total / rows.length;
  }));
}

// Sum of a single row's weights over each word's pieces.
function mergeRow(row, colGroups) {
  return colGroups.map((cols) => cols.reduce((sum, j) => sum + row[j], 0));
}

function rowEntropy(row) {  // bits
  let h = 0;
  for (const p of row) if (p > 0) h -= p * Math.log2(p);
  return h;
}

function argmax(row) {  // first index of the largest weight
  let best = 0;
  for (let j = 1; j < row.length; j++) if (row[j] > row[best]) best = j;
  return best;
}

function mean(values) {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
}

function meanEntropy(matrix) {
  return mean(matrix.map(rowEntropy));
}

function meanMaxWeight(matrix) {
  return mean(matrix.map((row) => row[argmax(row)]));
}

// Jensen-Shannon distance (base 2, so within [0, 1]): sqrt of the JS divergence.
function jsDistance(p, q) {
  let divergence = 0;
  for (let j = 0; j < p.length; j++) {
    const m = (p[j] + q[j]) / 2;
    if (p[j] > 0) divergence += 0.5 * p[j] * Math.log2(p[j] / m);
    if (q[j] > 0) divergence += 0.5 * q[j] * Math.log2(q[j] / m);
  }
  return Math.sqrt(Math.max(divergence, 0));
}

// For head h of a layer (heads: H matrices of the same shape): the mean over the other heads g
// of the mean over rows of jsDistance(row of h, row of g). null with a single head.
function meanJsDistance(heads, h) {
  const others = heads.map((_, g) => g).filter((g) => g !== h);
  if (!others.length) return null;
  return mean(others.map((g) => mean(heads[h].map((row, i) => jsDistance(row, heads[g][i])))));
}

// Share of rows t (T rows over S columns) whose argmax is round(t * S / T), rounding halves up.
function diagonalShare(matrix) {
  const T = matrix.length;
  if (!T) return null;
  const S = matrix[0].length;
  let hits = 0;
  matrix.forEach((row, t) => { if (argmax(row) === Math.floor(t * S / T + 0.5)) hits++; });
  return hits / T;
}

// Every figure for one kind: layers x heads arrays; diagonal only for cross-attention.
function headFigures(layers, withDiagonal) {
  return {
    entropy: layers.map((heads) => heads.map(meanEntropy)),
    maxWeight: layers.map((heads) => heads.map(meanMaxWeight)),
    jsDistance: layers.map((heads) => heads.map((_, h) => meanJsDistance(heads, h))),
    diagonal: withDiagonal ? layers.map((heads) => heads.map(diagonalShare)) : null,
  };
}
