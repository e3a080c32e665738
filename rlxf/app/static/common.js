// Shared helpers: token handling, the JSON API, and DOM building with textContent only.
"use strict";

const rlxf = (() => {
  const KEY = "rlxf-token:" + location.pathname;

  function takeToken() {
    // A token may arrive in the URL fragment (#token=...), which is never sent to the server.
    const m = location.hash.match(/token=([A-Za-z0-9_\-]+)/);
    if (m) {
      sessionStorage.setItem(KEY, m[1]);
      history.replaceState(null, "", location.pathname);
    }
    return sessionStorage.getItem(KEY);
  }

  function setToken(t) { sessionStorage.setItem(KEY, t); }
  function clearToken() { sessionStorage.removeItem(KEY); }

  async function api(path, options = {}) {
    const headers = { "Authorization": "Bearer " + sessionStorage.getItem(KEY) };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, { method: options.method || "GET", headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body) });
    if (options.raw && res.ok) return res;
    let data = {};
    try { data = await res.json(); } catch (e) { /* empty body */ }
    if (!res.ok) {
      const err = new Error(data.error || ("request failed: HTTP " + res.status));
      err.status = res.status;
      throw err;
    }
    return data;
  }

  // el("div", {class: "x"}, "text", child...) -- strings become text nodes, never HTML.
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function status(text, kind = "") {
    const s = document.getElementById("status");
    s.textContent = text;
    s.className = "status " + kind;
  }

  function login(onReady) {
    const box = document.getElementById("login");
    const form = document.getElementById("login-form");
    box.hidden = false;
    const input = document.getElementById("token-input");
    input.focus();
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      setToken(input.value.trim());
      box.hidden = true;
      onReady();
    });
  }

  return { takeToken, setToken, clearToken, api, el, status, login };
})();
