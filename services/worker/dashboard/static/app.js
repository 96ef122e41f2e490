/* flywheel dashboard: log in with an API key, route between pages, poll the worker's views, run admin actions. */
"use strict";

const POLL_MS = 5000; // the open page re-reads its view this often (the worker serves cached results)
const KEY_STORE = "flywheel-dashboard-key";
const app = { key: sessionStorage.getItem(KEY_STORE), you: null, page: null, mounted: null, timer: null, busy: false };

/** Call the worker's API with the key; returns {status, body}; a 401 logs out. */
async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + app.key };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: options.method || "GET", headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) logout("The key was refused (missing, unknown or revoked). Log in again.");
  return { status: response.status, body };
}

function detail(body) {
  if (!body) return "no answer";
  if (typeof body.detail === "string") return body.detail;
  if (body.error && body.error.message) return body.error.message;
  return JSON.stringify(body.detail || body);
}

/** Ask for confirmation in a modal dialog (Escape or Cancel says no). */
function confirmAction(title, text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

/** Run an admin action after confirmation; reports the outcome in the page's status line. */
async function runAction(title, text, path, body) {
  if (!(await confirmAction(title, text))) { say(`${title}: cancelled.`); return; }
  say(`${title}: sending…`);
  const { status, body: answer } = await api(path, { method: "POST", body: body === undefined ? {} : body });
  if (status >= 200 && status < 300) say(`${title}: done.`, "ok");
  else say(`${title}: refused (${status}): ${detail(answer)}`, "error");
  await refresh();
}

function say(message, kind) {
  const line = document.getElementById("action-status");
  if (line) { line.textContent = message; line.className = kind === "error" ? "error" : ""; }
}

function parseRoute() {
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return { page: PAGES[page] ? page : "overview", arg: rest.length ? decodeURIComponent(rest.join("/")) : null };
}

/** Mount the page named by the URL's hash (its static parts once) and read its data. */
async function navigate() {
  if (!app.key) return showLogin();
  const { page, arg } = parseRoute();
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  const root = document.getElementById("page");
  root.replaceChildren();
  app.page = { name: page, arg };
  app.mounted = PAGES[page].mount(root, arg);
  document.title = `${PAGES[page].title} · flywheel`;
  await refresh();
}

/** Re-read the open page's data and redraw its data region. */
async function refresh() {
  if (!app.key || !app.page || app.busy) return;
  app.busy = true;
  try {
    const shown = await PAGES[app.page.name].update(app.mounted, app.page.arg);
    document.getElementById("updated").textContent = shown === false ? "" : `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("updated").textContent = `Could not update: ${error.message}`;
  } finally {
    app.busy = false;
  }
}

async function login(key) {
  app.key = key.trim();
  const { status, body } = await api("/v1/dashboard/overview");
  const error = document.getElementById("login-error");
  if (status === 200) {
    sessionStorage.setItem(KEY_STORE, app.key);
    app.you = body.you;
    return showApp();
  }
  app.key = null;
  error.textContent = status === 403 ? `This key's role may not use the dashboard: ${detail(body)}` : `Log in failed (${status}): ${detail(body)}`;
}

function logout(message) {
  sessionStorage.removeItem(KEY_STORE);
  app.key = null; app.you = null;
  showLogin(message);
}

function showLogin(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("who").replaceChildren();
  document.getElementById("page").replaceChildren();
  document.getElementById("updated").textContent = "";
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("key").focus();
}

async function showApp() {
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  if (!app.you) { const { status, body } = await api("/v1/dashboard/overview"); if (status !== 200) return logout(detail(body)); app.you = body.you; }
  document.getElementById("who").replaceChildren(
    h("span", { id: "role" }, `${app.you.name} · ${app.you.role}${app.you.deploy ? "" : " (read-only)"}`),
    h("button", { type: "button", onclick: () => logout("Logged out.") }, "Log out"));
  await navigate();
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  login(document.getElementById("key").value);
});
window.addEventListener("hashchange", navigate);
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
app.timer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
if (app.key) showApp(); else showLogin();
