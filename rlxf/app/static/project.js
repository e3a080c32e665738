// The owner's project page: progress, agreement, pace, answers, export.
"use strict";

(() => {
  const { api, el, status } = rlxf;
  const $ = (id) => document.getElementById(id);
  const EXPORTS = { preference: ["comparison"], ranking: ["ranking"], rating: ["rating"],
    critique: ["critique", "correction"] };

  function table(id, header, rows) {
    const t = $(id);
    t.replaceChildren(el("tr", {}, ...header.map((h) => el("th", {}, h))),
      ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c)))));
  }

  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%"; }

  async function download(record) {
    try {
      const res = await api(`/api/export?record=${record}&format=jsonl`, { raw: true });
      const blob = await res.blob();
      const a = el("a", { href: URL.createObjectURL(blob), download: `${record}s.jsonl` });
      document.body.append(a);
      a.click();
      a.remove();
      status(`Exported ${record}s.jsonl`, "ok");
    } catch (e) { status(e.message, "error"); }
  }

  function render(s) {
    $("title").textContent = `${s.project} (${s.kind})`;
    $("progress").textContent = `${s.labels} / ${s.target_labels}`;
    $("meter-fill").style.width = Math.min(100, 100 * s.progress).toFixed(1) + "%";
    $("agreement").textContent = pct(s.agreement.rate);
    $("agreement-note").textContent = `${s.agreement.overlaps} overlapping judgements (overlap ${s.settings.overlap})`;
    $("pace").textContent = s.pace.per_hour.toFixed(1);
    $("pace-note").textContent = `${s.pace.last_hour} in the last hour`;
    table("labelers", ["Labeler", "Labels"], Object.entries(s.labelers));
    table("distribution", ["Answer", "Count"], Object.entries(s.distribution));
    table("recent", ["Labeler", "Item", "Prompt", "Answer"],
      s.recent.map((r) => [r.labeler, String(r.item_id), r.prompt, JSON.stringify(r.value)]));
    if (s.best_prompt && s.best_prompt.prompt !== null) {  // a prompt-duel project: what APOHF reports
      $("best-prompt-card").hidden = false;
      $("best-prompt").textContent = s.best_prompt.prompt || "(empty prompt)";
      $("best-prompt-note").textContent = `candidate ${s.best_prompt.index}, after ${s.best_prompt.duels} answered duels`;
    }
    const box = $("export-buttons");
    if (!box.childElementCount) {
      for (const record of EXPORTS[s.kind]) {
        box.append(el("button", { type: "button", class: "primary", onclick: () => download(record) },
          `Export ${record}s (JSONL)`));
      }
    }
  }

  async function refresh() {
    try {
      const s = await api("/api/project");
      $("overview").hidden = false;
      render(s);
    } catch (e) {
      status(e.message, "error");
      if (e.status === 401 || e.status === 403) { rlxf.clearToken(); rlxf.login(start); return false; }
    }
    return true;
  }

  async function start() {
    if (await refresh()) setInterval(refresh, 10000);
  }

  if (rlxf.takeToken()) start(); else rlxf.login(start);
})();
