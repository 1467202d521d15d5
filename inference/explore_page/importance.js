"use strict";
// The stored head figures of RUN/heads.json (`mha heads`: each head's single-head ablation,
// Michel et al.'s gradient estimate, its rank and, when measured, its role and entropy), as the
// pieces the views place beside each head: a colour chip, a row per head with its "hide this
// head" toggle, tables for the figures view, the report's summary. page.js owns the data
// (REPORT, stored(), the hidden heads) and passes records in; this file reads no global data.
// Uses page.js's element() and figureTable().

const IMPORTANCE_LOW = [33, 102, 172];  // removing the head raised BLEU
const IMPORTANCE_MID = [247, 247, 247];  // no change
const IMPORTANCE_HIGH = [178, 24, 43];  // removing the head lowered BLEU: it matters
const MINUS = "\u2212";

// The colour scale's end: the largest |BLEU drop| of any head; 1 when every head's is 0.
function importanceScale(records) {
  return Math.max(0, ...records.map((r) => Math.abs(r.bleu_drop))) || 1;
}

// Diverging, white at a drop of 0: the redder, the more BLEU falls without the head; blue
// where BLEU rises without it.
function importanceColour(drop, scale) {
  const t = Math.min(Math.max(drop / scale, -1), 1);
  const end = t < 0 ? IMPORTANCE_LOW : IMPORTANCE_HIGH;
  const c = IMPORTANCE_MID.map((v, k) => Math.round(v + (end[k] - v) * Math.abs(t)));
  return `rgb(${c.join(",")})`;
}

// A table cell in the head's colour, its text white where the colour is dark.
function importanceStyle(drop, scale) {
  const dark = Math.abs(drop / scale) > 0.6;
  return { background: importanceColour(drop, scale), color: dark ? "#fff" : "" };
}

function signed(value, digits) {
  return `${value < 0 ? MINUS : "+"}${Math.abs(value).toFixed(digits)}`;
}

function withoutText(record) {
  return `without this head: val BLEU ${record.val_bleu.toFixed(2)}` +
    ` (${signed(-record.bleu_drop, 2)}), loss ${record.val_loss.toFixed(4)}` +
    ` (${signed(record.loss_rise, 4)})`;
}

function rankText(record, total) {
  return `rank ${record.rank} of ${total}, gradient importance` +
    ` ${record.grad_importance.toFixed(4)}`;
}

// "role: previous, entropy 0.41 nats"; "" when heads.json has neither.
function roleText(record) {
  const parts = [];
  if (record.roles) parts.push(record.role ? `role: ${record.role}` : "no role");
  if (record.entropy !== null && record.entropy !== undefined) {
    parts.push(`entropy ${record.entropy.toFixed(2)} nats`);
  }
  return parts.join(", ");
}

// Everything stored about a head, one figure a line: the tooltip of each coloured head.
function headTitle(record, total) {
  const lines = [withoutText(record), rankText(record, total)];
  if (roleText(record)) lines.push(roleText(record));
  if (record.roles) {
    const shares = Object.entries(record.roles).filter(([, share]) => share !== null)
      .sort((a, b) => b[1] - a[1]);
    lines.push(`queries by role: ${shares.map(([role, share]) =>
      `${role} ${(100 * share).toFixed(0)}%`).join(", ")}`);
  }
  return lines.join("\n");
}

function pruningText(report) {
  const total = report.heads.length;
  const drops = Object.entries(report.can_remove).map(([drop, count], i) =>
    i ? `${count} before it drops by ${drop}` : `${count} of ${total} heads can go before val` +
      ` BLEU drops by ${drop}`);
  const rho = report.spearman === null ? "undefined (a constant ranking)"
    : report.spearman.toFixed(2);
  return `Pruning, least important first: ${drops.join(", ")}. The gradient estimate ranks` +
    ` the heads like the ablation with Spearman ${rho}.`;
}

// Where the figures come from, their colour scale and the pruning summary: header lines.
function reportSummary(report, run, scale) {
  const base = report.baseline;
  return [
    element("div", {}, `Head figures from ${run}/heads.json: ${report.sentences}` +
      ` ${report.split} sentences, checkpoint ${report.checkpoint} (step` +
      ` ${report.checkpoint_step}); with every head val BLEU ${base.val_bleu.toFixed(2)}, loss` +
      ` ${base.val_loss.toFixed(4)}.`),
    importanceLegend(scale), element("div", {}, pruningText(report)),
  ];
}

// "" when the figures were measured on the page's checkpoint (its step pageStep).
function stepWarning(report, run, pageStep) {
  if (report.checkpoint_step === pageStep) return "";
  return `These head figures were measured on the checkpoint of step ${report.checkpoint_step};` +
    ` this page shows step ${pageStep}: rerun \`mha heads ${run}\`.`;
}

// A small square in the head's importance colour, its BLEU drop in data-importance.
function importanceChip(record, scale, total) {
  const chip = element("span", {
    class: "importance-chip", "data-importance": record.bleu_drop, title: headTitle(record, total),
  });
  chip.style.background = importanceColour(record.bleu_drop, scale);
  return chip;
}

// The scale's legend: blue at -scale through white to red at +scale.
function importanceLegend(scale) {
  const bar = element("span", { class: "importance-bar" });
  bar.style.background = `linear-gradient(to right, ${importanceColour(-scale, scale)},` +
    ` ${importanceColour(0, scale)}, ${importanceColour(scale, scale)})`;
  const box = element("span", { class: "importance-legend" });
  box.append(`BLEU drop without the head: ${MINUS}${scale.toFixed(2)} `, bar,
    ` +${scale.toFixed(2)} (redder: matters more)`);
  return box;
}

// One row per head of a layer: its chip, figures, role, and a "hide this head" toggle that
// greys the head out and shows the stored ablation result. records: the layer's H records;
// hidden(h) says whether head h is hidden, toggle(h) hides or shows it.
function importanceRows(records, scale, total, hidden, toggle) {
  const hint = element("p", { class: "hint" }, "As `mha heads` measured them. Hiding a head" +
    " greys its lines out and shows the stored result of the model without it; nothing is" +
    " translated again.");
  return [hint, ...records.map((record, h) => {
    const row = element("div", {
      class: "head-row", "data-head": h, "data-importance": record.bleu_drop,
      title: headTitle(record, total),
    });
    row.classList.toggle("hidden-head", hidden(h));
    const button = element("button", { class: "hide-head", "data-head": h },
      hidden(h) ? "show this head" : "hide this head");
    button.addEventListener("click", () => toggle(h));
    row.append(importanceChip(record, scale, total), element("b", {}, `head ${h + 1}`),
      element("span", {}, `BLEU drop ${signed(record.bleu_drop, 2)}; ${rankText(record, total)}`),
      element("span", { class: "role" }, roleText(record)), button);
    if (hidden(h)) row.append(element("div", { class: "ablation" }, withoutText(record)));
    return row;
  })];
}

// Stored per-head figures as tables in the figures view: key -> [title, value -> text].
const STORED_FIGURES = {
  bleu_drop: ["BLEU drop without the head (stored)", (v) => signed(v, 2)],
  loss_rise: ["Loss rise without the head (stored)", (v) => signed(v, 4)],
  grad_importance: ["Gradient importance (stored)", (v) => v.toFixed(4)],
  rank: ["Importance rank (stored, 1 = most)", (v) => String(v)],
  entropy: ["Mean entropy, nats (stored)", (v) => v.toFixed(2)],
  role: ["Role (stored)", (v) => v || "\u2013"],
};

// The figures view's tables of stored figures, those heads.json holds. layers: layers x heads
// records of one kind.
function storedFigureTables(layers, report, scale) {
  const held = (key) => report.heads.some((r) => (key === "role" ? r.roles : r[key]) != null);
  return Object.keys(STORED_FIGURES).filter(held).map((key) => {
    const [title, format] = STORED_FIGURES[key];
    const values = layers.map((heads) => heads.map((r) => r[key]));
    const paint = key === "bleu_drop" ? (v) => importanceStyle(v, scale) : undefined;
    return figureTable(`stored-${key}`, title, values, format, paint);
  });
}
