// The dashboard's shared helpers: fetch with CSRF, DOM building, tables, cards, charts.
// Plain ES module, no build step; every page module imports what it needs from here.
// Every URL is relative to the page (/$dashboard/), so a proxy's path prefix is kept.
// Data is put in the page with textContent only, never as HTML.

const REFRESH_MS = 2000;
const state = { session: null, view: null };
// What the shell does when the session is gone (set by app.js: show the login form).
const hooks = { unauthorized: () => {} };

// What one drawn page polls; a navigation stops the previous page's timers, including
// those a page that was still loading would start afterwards.
class View {
  constructor() { this.timers = []; this.closers = []; this.stopped = false; }
  every(ms, fn) { if (!this.stopped) this.timers.push(setInterval(fn, ms)); }
  onStop(fn) { if (this.stopped) fn(); else this.closers.push(fn); }
  stop() {
    this.stopped = true;
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    for (const close of this.closers.splice(0)) close();
  }
}
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function request(method, url, body, headers = {}) {
  const init = { method, headers: { ...headers }, credentials: "same-origin" };
  if (method !== "GET" && state.session) init.headers["X-CSRF-Token"] = state.session.csrfToken;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  const doc = text ? JSON.parse(text) : null;
  if (response.status === 401 && url !== "login") {
    hooks.unauthorized();
    throw new ApiError(401, doc);
  }
  if (!response.ok) throw new ApiError(response.status, doc);
  return { doc, headers: response.headers };
}

const api = async (method, path, body, headers) =>
  (await request(method, "api/" + path, body, headers)).doc;
const enc = encodeURIComponent;
const hcPath = (name) => name.split("/").map(enc).join("/");
const isOperator = () => state.session?.role === "operator";

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function age(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

function table(headings, rows, emptyText) {
  const body = rows.length
    ? rows
    : [el("tr", {}, el("td", { class: "empty", colspan: headings.length, text: emptyText }))];
  return el("div", { class: "scroll" },
    el("table", {}, el("thead", {}, el("tr", {}, headings.map((h) => el("th", { text: h })))),
      el("tbody", {}, body)));
}

function card(stat, label, value, sub) {
  return el("div", { class: "card", "data-stat": stat },
    el("span", { class: "n", text: value }), el("span", { class: "label", text: label }),
    sub ? el("span", { class: "sub", text: sub }) : null);
}

function errorLine(where) {
  return (error) => { where.textContent = error.message; };
}

// A part of a page that is redrawn every REFRESH_MS; forms stay outside it.
function live(view, container, draw) {
  const run = async () => {
    try { container.replaceChildren(...[await draw()].flat().filter(Boolean)); }
    catch (error) { if (!(error instanceof ApiError && error.status === 401)) container.replaceChildren(el("p", { class: "error", text: error.message })); }
  };
  view.every(REFRESH_MS, run);
  return run();
}

// A small line chart drawn as SVG elements (no library, no inline style): one polyline
// per series over the last 15 minutes, the y axis from 0 to the largest value.
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function chart(id, title, points, series, format) {
  const width = 600, height = 120, span = 15 * 60;
  const end = points.length ? points[points.length - 1].time : Date.now() / 1000;
  const top = Math.max(1e-9, ...points.flatMap((p) => series.map((s) => p[s.key])));
  const x = (t) => ((t - (end - span)) / span) * width;
  const y = (v) => height - (v / top) * (height - 8);
  const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title, preserveAspectRatio: "none" });
  drawing.append(svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
  for (const s of series) {
    const line = points.map((p) => `${x(p.time).toFixed(1)},${y(p[s.key]).toFixed(1)}`).join(" ");
    drawing.append(svg("polyline", { points: line, class: `series ${s.class}`, "data-series": s.key }));
  }
  const last = points[points.length - 1];
  const legend = series.map((s) => el("span", { class: `legend ${s.class}`, text: `${s.label} ${last ? format(last[s.key]) : "-"}` }));
  return el("figure", { class: "card chart-card", id }, el("figcaption", { text: title }, " ", legend), drawing,
    el("span", { class: "sub", text: `last 15 min, peak ${format(top === 1e-9 ? 0 : top)}` }));
}

export {
  REFRESH_MS, state, View, $, el, ApiError, request, api, enc, hcPath, isOperator, bytes, age, table, card, errorLine, live, svg, chart, hooks,
};
