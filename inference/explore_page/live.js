"use strict";
// The live page's data source (`mha serve`, after page.js): a text box; each typed sentence is
// sent to POST /explore, whose JSON (what `mha explore` embeds) joins the sentences shown, and
// page.js's `show` redraws every view from it. The server's warnings (unknown characters, as
// the CLI words them) and errors appear under the box. Tests read window.mhaLive.

const live = { pending: false, sentences: [], warnings: [], error: null };

function liveForm() {
  const form = element("form", { id: "live-form" });
  const box = element("input", {
    id: "live-text", type: "text", size: 80, placeholder: "Type a sentence and press Enter",
    "aria-label": "sentence to translate",
  });
  const button = element("button", { id: "live-submit", type: "submit" }, "Translate");
  const status = element("p", { id: "live-status", class: "hint", role: "status" });
  form.append(box, document.createTextNode(" "), button, status);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (box.value.trim() && !live.pending) explain(box.value);
  });
  $("run-info").after(form);
  box.focus();
}

function liveStatus(text, isError = false) {
  const status = $("live-status");
  status.textContent = text;
  status.style.color = isError ? "#b00020" : "";
}

async function explain(text) {
  live.pending = true;
  $("live-submit").disabled = true;
  liveStatus("translating\u2026");
  try {
    const response = await fetch("explore", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    live.sentences.push(answer.sentences[0]);
    live.warnings = answer.warnings;
    live.error = null;
    liveStatus(answer.warnings.join(" "));
    show({ ...answer, sentences: live.sentences }, live.sentences.length - 1);
  } catch (error) {
    live.error = String(error.message || error);
    liveStatus(`error: ${live.error}`, true);
  } finally {
    live.pending = false;
    $("live-submit").disabled = false;
  }
}

liveForm();
window.mhaLive = live;
