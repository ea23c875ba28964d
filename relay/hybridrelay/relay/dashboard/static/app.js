// The hybridrelay dashboard's shell: login, navigation and the page table.
// Plain ES module, no build step, no inline script or style. Every URL is relative to the
// page (/$dashboard/), so a proxy's path prefix is kept. Data is put in the page with
// textContent only, never as HTML. Each page lives in its own module (pages.js and the
// modules it names); the shared helpers are in lib.js.
import { $, ApiError, View, el, hooks, request, state } from "./lib.js";
import { events, hybridConnection, hybridConnections, overview, streams } from "./pages.js";
import { device, devices } from "./devices.js";
import { cluster } from "./cluster.js";
import { jobs } from "./jobs.js";
import { inspector } from "./inspector.js";
// --- shell ---------------------------------------------------------------------------------

function showLogin() {
  state.session = null;
  state.view?.stop();
  $("main").replaceChildren();
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
}

async function route() {
  state.view?.stop();
  const view = (state.view = new View());
  delete $("main").dataset.ready;
  if (!state.session) return;
  const [, page = "overview", ...rest] = (location.hash || "#/overview").split("/");
  const section = { hc: "hcs", device: "devices" }[page] || page;
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("current", link.dataset.page === section);
  const main = $("main");
  main.replaceChildren();
  const pages = { overview, hcs: hybridConnections, streams, devices, events, jobs, cluster };
  try {
    const target = el("div");
    if (page === "hc") await hybridConnection(target, view, decodeURIComponent(rest.join("/")));
    else if (page === "device") await device(target, view, decodeURIComponent(rest.join("/")));
    else if (page === "inspector") await inspector(target, view, decodeURIComponent(rest.join("/")));
    else await (pages[page] || overview)(target, view);
    if (view.stopped) return; // a newer navigation is drawing
    main.replaceChildren(...target.childNodes);
    main.dataset.ready = page;
  } catch (error) {
    if (view.stopped) return;
    if (!(error instanceof ApiError && error.status === 401)) main.append(el("p", { class: "error", text: error.message }));
  }
}

function signedIn(session) {
  state.session = session;
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = `${session.who} (${session.role})`;
  route();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const jwt = $("jwt").value.trim();
  const body = jwt ? { token: jwt } : { keyName: $("key-name").value.trim(), key: $("key").value };
  $("login-error").textContent = "";
  try {
    const { doc } = await request("POST", "login", body);
    $("key").value = "";
    $("jwt").value = "";
    signedIn(doc);
  } catch (error) {
    $("login-error").textContent = error.status === 429 ? "Too many failed logins; wait a minute." : `Login refused: ${error.message}`;
  }
});

$("logout").addEventListener("click", async () => {
  try { await request("POST", "logout"); } finally { showLogin(); }
});

hooks.unauthorized = showLogin;
window.addEventListener("hashchange", route);

request("GET", "session").then(({ doc }) => signedIn(doc)).catch(() => showLogin());
