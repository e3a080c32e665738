// The labeling page: fetch the next assignment, show it, answer with keys or clicks.
"use strict";

(() => {
  const { api, el, status } = rlxf;
  const $ = (id) => document.getElementById(id);
  let current = null;   // the assignment on screen
  let busy = false;     // a submission is in flight: ignore further answers
  let onKey = null;     // the key handler of the current question kind

  function isTyping(ev) {
    const t = ev.target;
    return t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT");
  }

  document.addEventListener("keydown", (ev) => {
    if (!current || busy || ev.altKey || ev.metaKey) return;
    if (onKey && onKey(ev)) ev.preventDefault();
  });

  function button(text, key, action, cls = "") {
    return el("button", { type: "button", class: cls, onclick: action },
      text, " ", el("kbd", {}, key));
  }

  function responseCard(label, text, extra = []) {
    return el("article", { class: "response" },
      el("div", { class: "response-head" }, el("span", { class: "badge" }, label), ...extra),
      el("div", { class: "text" }, text));
  }

  async function submit(value) {
    if (busy || !current) return;
    busy = true;
    status("Saving…");
    try {
      await api("/api/labels", { method: "POST",
        body: { assignment_id: current.assignment_id, item_id: current.item_id, value } });
      status("Saved ✓", "ok");
      await refreshMe();
      await loadNext();
    } catch (e) {
      status(e.message, "error");
      if (e.status === 401) { rlxf.clearToken(); location.reload(); }
    } finally {
      busy = false;
    }
  }

  // A clip of a video item: fetched with the token (an <img> cannot send it) and shown from a blob: URL.
  function videoCard(label, url) {
    const img = el("img", { class: "clip", alt: "episode " + label });
    const card = el("article", { class: "response video" },
      el("div", { class: "response-head" }, el("span", { class: "badge" }, label)), img);
    api(url, { raw: true }).then((res) => res.blob()).then((blob) => {
      img.src = URL.createObjectURL(blob);
      img.addEventListener("load", () => { img.dataset.loaded = "1"; }, { once: true });
    }).catch((e) => status(e.message, "error"));
    return card;
  }

  function showPreference(a) {
    const videos = a.videos || null;
    $("question").textContent = videos ? "Which episode does the task better?" : "Which response is better?";
    if (videos) {
      videos.forEach((url, i) => $("responses").append(videoCard(i === 0 ? "A" : "B", url)));
    } else {
      a.responses.forEach((r, i) => $("responses").append(responseCard(i === 0 ? "A" : "B", r)));
    }
    $("controls").append(
      button("A is better", "1", () => submit({ choice: "a" }), "primary"),
      button("B is better", "2", () => submit({ choice: "b" }), "primary"),
      button("Tie", "T", () => submit({ choice: "tie" })),
      button("Skip", "S", () => submit({ choice: "skip" })));
    $("hint").textContent = "Keys: 1 or ← for A, 2 or → for B, T for a tie, S to skip.";
    const keys = { "1": "a", "ArrowLeft": "a", "2": "b", "ArrowRight": "b", "t": "tie", "s": "skip" };
    onKey = (ev) => {
      if (isTyping(ev)) return false;
      const choice = keys[ev.key.length === 1 ? ev.key.toLowerCase() : ev.key];
      if (!choice) return false;
      submit({ choice });
      return true;
    };
  }

  function showRanking(a) {
    const n = a.responses.length;
    const order = [];
    $("question").textContent = "Rank the responses, best first.";
    const badges = a.responses.map(() => el("span", { class: "rank" }, ""));
    a.responses.forEach((r, i) => {
      const card = responseCard(String(i + 1), r, [badges[i]]);
      card.addEventListener("click", () => pick(i));
      $("responses").append(card);
    });
    const go = button("Submit ranking", "Enter", () => done(), "primary");
    $("controls").append(go, button("Reset", "Backspace", () => reset()));
    $("hint").textContent = `Press the response numbers 1–${n} (or click them) from best to worst, then Enter.`;
    function render() {
      badges.forEach((b, i) => {
        const place = order.indexOf(i);
        b.textContent = place < 0 ? "" : "#" + (place + 1);
      });
      go.disabled = order.length !== n;
    }
    function pick(i) { if (!order.includes(i)) order.push(i); render(); }
    function reset() { order.length = 0; render(); }
    function done() { if (order.length === n) submit({ order: order.slice() }); }
    onKey = (ev) => {
      if (isTyping(ev)) return false;
      const d = parseInt(ev.key, 10);
      if (d >= 1 && d <= n) { pick(d - 1); return true; }
      if (ev.key === "Backspace") { order.pop(); render(); return true; }
      if (ev.key === "Enter") { done(); return true; }
      return false;
    };
    render();
  }

  function showRating(a) {
    const [low, high] = a.scale;
    const ratings = a.responses.map(() => null);
    let active = 0;
    $("question").textContent = `Rate each response from ${low} (worst) to ${high} (best).`;
    const rows = a.responses.map((r, i) => {
      const buttons = [];
      for (let v = low; v <= high; v++) {
        buttons.push(el("button", { type: "button", class: "score",
          onclick: () => { active = i; set(v); } }, String(v)));
      }
      const card = responseCard(String(i + 1), r, [el("span", { class: "scores" }, ...buttons)]);
      $("responses").append(card);
      return { card, buttons };
    });
    const go = button("Submit ratings", "Enter", () => done(), "primary");
    $("controls").append(go);
    $("hint").textContent = `Keys: ${low}–${high} rate the highlighted response and move on; ↑/↓ move; Enter submits.`;
    function render() {
      rows.forEach((row, i) => {
        row.card.classList.toggle("active", i === active);
        row.buttons.forEach((b, k) => b.classList.toggle("chosen", ratings[i] === low + k));
      });
      go.disabled = ratings.includes(null);
    }
    function set(v) { ratings[active] = v; active = Math.min(active + 1, rows.length - 1); render(); }
    function done() { if (!ratings.includes(null)) submit({ ratings: ratings.slice() }); }
    onKey = (ev) => {
      if (isTyping(ev)) return false;
      const d = parseInt(ev.key, 10);
      if (d >= low && d <= high) { set(d); return true; }
      if (ev.key === "ArrowDown") { active = Math.min(active + 1, rows.length - 1); render(); return true; }
      if (ev.key === "ArrowUp") { active = Math.max(active - 1, 0); render(); return true; }
      if (ev.key === "Enter") { done(); return true; }
      return false;
    };
    render();
  }

  // The response as numbered steps: click the first wrong one, or "All steps correct".
  // marked: null (no verdict), 0 (all correct) or k (step k is the first wrong one).
  function stepMarker(steps) {
    let marked = null;
    const buttons = steps.map((text, i) => el("button", { type: "button", class: "step",
      "data-step": String(i + 1), "aria-pressed": "false", onclick: () => mark(marked === i + 1 ? null : i + 1) },
      el("span", { class: "step-no" }, String(i + 1)), el("span", { class: "step-text" }, text)));
    const allOk = el("button", { type: "button", id: "all-correct", "aria-pressed": "false",
      onclick: () => mark(marked === 0 ? null : 0) }, "All steps correct");
    const note = el("span", { id: "verdict", class: "muted small" }, "");
    const card = el("article", { class: "response" },
      el("div", { class: "response-head" }, el("span", { class: "badge" }, "Response"), allOk, note),
      el("ol", { class: "steps" }, ...buttons.map((b) => el("li", {}, b))));
    function mark(k) {
      marked = k;
      buttons.forEach((b, i) => {
        b.classList.toggle("wrong", marked === i + 1);
        b.classList.toggle("after", marked > 0 && i + 1 > marked);
        b.classList.toggle("ok", marked === 0 || (marked > 0 && i + 1 < marked));
        b.setAttribute("aria-pressed", String(marked === i + 1));
      });
      allOk.classList.toggle("chosen", marked === 0);
      allOk.setAttribute("aria-pressed", String(marked === 0));
      note.textContent = marked === null ? "no verdict marked"
        : marked === 0 ? "verdict: correct" : `verdict: incorrect from step ${marked}`;
    }
    mark(null);
    // the verdict fields of the label value ({} when nothing is marked)
    const verdict = () => (marked === null ? {} : marked === 0 ? { verdict: "correct" }
      : { verdict: "incorrect", first_wrong_step: marked });
    return { card, verdict };
  }

  function showCritique(a) {
    const limit = a.max_critique_chars;
    $("question").textContent = "Click the first wrong step (or all steps correct), then say what is wrong " +
      "and how you would fix it.";
    const marker = stepMarker(a.steps || [a.responses[0]]);
    $("responses").append(marker.card);
    const crit = el("textarea", { id: "critique", rows: "4", maxlength: String(limit),
      placeholder: "Your critique (required unless you marked the steps)" });
    const fix = el("textarea", { id: "corrected", rows: "3", maxlength: String(limit),
      placeholder: "A corrected response (optional)" });
    const count = el("span", { class: "muted small" }, "");
    crit.addEventListener("input", () => { count.textContent = `${crit.value.length} / ${limit}`; });
    $("controls").append(
      el("label", { for: "critique" }, "Critique"), crit,
      el("label", { for: "corrected" }, "Corrected response"), fix, count,
      button("Submit", "Ctrl+Enter", () => done(), "primary"));
    $("hint").textContent = "Click a step to mark it as the first wrong one (click again to unmark). " +
      "Ctrl+Enter submits from either box.";
    function done() {
      const value = marker.verdict();
      if (!crit.value.trim() && !value.verdict) {
        status("Please write a critique or mark the steps first.", "error"); crit.focus(); return;
      }
      if (crit.value.trim()) value.critique = crit.value;
      if (fix.value.trim()) value.corrected = fix.value;
      submit(value);
    }
    onKey = (ev) => {
      if (ev.key === "Enter" && ev.ctrlKey) { done(); return true; }
      return false;
    };
    crit.focus();
  }

  const SHOW = { preference: showPreference, ranking: showRanking, rating: showRating, critique: showCritique };

  async function loadNext() {
    const a = await api("/api/next");
    $("responses").querySelectorAll("img.clip").forEach((img) => { if (img.src) URL.revokeObjectURL(img.src); });
    $("responses").replaceChildren();
    $("controls").replaceChildren();
    onKey = null;
    if (a.done) {
      current = null;
      $("task").hidden = true;
      $("done").hidden = false;
      return;
    }
    current = a;
    $("task").hidden = false;
    $("prompt").textContent = a.prompt;
    $("task").dataset.assignment = String(a.assignment_id);
    SHOW[a.kind](a);
  }

  async function refreshMe() {
    const me = await api("/api/me");
    $("who").textContent = `${me.name} · ${me.project} · ${me.labeled} labeled`;
  }

  async function start() {
    try {
      await refreshMe();
      await loadNext();
    } catch (e) {
      status(e.message, "error");
      if (e.status === 401 || e.status === 403) { rlxf.clearToken(); rlxf.login(start); }
    }
  }

  if (rlxf.takeToken()) start(); else rlxf.login(start);
})();
