// The devices pages: the registry (server-side search and paging that stay fast over
// 100k devices), and one device (keys, connection string, timeline, check-in).
// Everything goes through the management API: GET /devices?prefix=&contains=&status=
// &connectionState=, POST /devices/{id}/regenerateKey, GET /devices/{id}/timeline.
import {
  REFRESH_MS, age, api, card, el, enc, errorLine, isOperator, live, request, state, table,
} from "./lib.js";

const PAGE_SIZE = 50;
const NEVER = "0001"; // IoT Hub's "never" time starts with year 1

function keyCells(device) {
  const keys = device.authentication?.symmetricKey || {};
  if (!keys.primaryKey) return el("span", { class: "note", text: "no keys (X.509)" });
  return el("div", { class: "keys" },
    el("span", {}, "primary ", el("code", { class: "primary-key volatile", text: keys.primaryKey })),
    el("span", {}, "secondary ", el("code", { class: "secondary-key volatile", text: keys.secondaryKey || "" })));
}

const seen = (iso) => Boolean(iso) && !iso.startsWith(NEVER);

function every(seconds) {
  if (!seconds) return "";
  if (seconds % 86400 === 0) return `every ${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `every ${seconds / 3600} h`;
  if (seconds % 60 === 0) return `every ${seconds / 60} min`;
  return `every ${seconds} s`;
}

// The list's verdict from the document alone (the device page asks the relay's).
function checkIn(device) {
  const interval = device.checkInIntervalSeconds;
  if (!interval) return { verdict: "unscheduled", text: "" };
  if (!seen(device.lastActivityTime)) return { verdict: "never", text: `never seen (${every(interval)})` };
  const late = Date.now() - Date.parse(device.lastActivityTime) > interval * 1000;
  return late ? { verdict: "overdue", text: `overdue (${every(interval)})` } : { verdict: "onSchedule", text: `on schedule (${every(interval)})` };
}

// The connection string the device client reads (hybridrelay.protocol.device_sas
// parse_device_connection_string), IoT Hub's format. HostName is the relay's public host
// (the session's relayUrl), not this page's: the dashboard is served on an origin of its own.
function connectionString(deviceId, key) {
  const relay = state.session?.relayUrl ? new URL(state.session.relayUrl).host : location.host;
  return `HostName=${relay};DeviceId=${deviceId};SharedAccessKey=${key}`;
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy it";
  }
}

async function setStatus(deviceId, enable) {
  const { doc, headers } = await request("GET", "api/devices/" + enc(deviceId));
  doc.status = enable ? "enabled" : "disabled";
  doc.statusReason = enable ? "" : "disabled from the dashboard";
  await api("PUT", "devices/" + enc(deviceId), doc, { "If-Match": headers.get("ETag") || "*" });
}

async function devices(main, view) {
  main.append(el("h1", { text: "Devices" }));
  const message = el("p", { class: "error", role: "alert" });
  const search = el("input", { id: "device-search", type: "search", placeholder: "device id", "aria-label": "device id" });
  const mode = el("select", { id: "device-search-mode", "aria-label": "match" },
    el("option", { value: "contains", text: "contains" }), el("option", { value: "prefix", text: "starts with" }));
  const status = el("select", { id: "device-status", "aria-label": "status" },
    el("option", { value: "", text: "any status" }), el("option", { value: "enabled", text: "enabled" }),
    el("option", { value: "disabled", text: "disabled" }));
  const connection = el("select", { id: "device-connection", "aria-label": "connection" },
    el("option", { value: "", text: "any connection" }), el("option", { value: "connected", text: "connected" }),
    el("option", { value: "disconnected", text: "disconnected" }));
  const list = el("div", { id: "device-list" });
  const note = el("p", { class: "note", id: "device-search-note" });
  const pager = el("div", { class: "inline", id: "device-pager" });
  const pages = [null]; // the continuation token each page was loaded with
  let page = { value: [], continuationToken: null };
  const shown = new Map(); // devices whose keys were asked for, until the page is left
  main.append(el("form", { class: "inline", role: "search", onsubmit: (e) => e.preventDefault() }, mode, search, status, connection),
    message, list, note, pager);
  if (isOperator()) {
    const patterns = (input) => input.value.split(",").map((p) => p.trim()).filter(Boolean);
    const id = el("input", { id: "device-id", placeholder: "new device id", required: true });
    const send = el("input", { id: "device-send", placeholder: "may send to (e.g. sensors/*)" });
    const listen = el("input", { id: "device-listen", placeholder: "may listen on" });
    const interval = el("input", { id: "device-check-in", type: "number", min: 1, placeholder: "checks in every (s)" });
    const created = el("div", { id: "device-created" });
    main.append(el("h2", { text: "New device" }), el("form", {
      class: "inline",
      onsubmit: (event) => {
        event.preventDefault();
        const body = { grants: { send: patterns(send), listen: patterns(listen) } };
        if (interval.value) body.checkInIntervalSeconds = Number(interval.value);
        api("PUT", "devices/" + enc(id.value.trim()), body)
          .then((device) => { created.replaceChildren(el("p", { text: `Created ${device.deviceId}:` }), keyCells(device)); return load(pages[pages.length - 1]); })
          .catch(errorLine(message));
      },
    }, id, send, listen, interval, el("button", { type: "submit", class: "primary", text: "Create device" })), created);
  }

  function terms() {
    const query = new URLSearchParams({ top: String(PAGE_SIZE) });
    const needle = search.value.trim();
    if (needle) query.set(mode.value, needle);
    if (status.value) query.set("status", status.value);
    if (connection.value) query.set("connectionState", connection.value);
    return query;
  }

  function draw() {
    const rows = page.value.map((d) => {
      const due = checkIn(d);
      return el("tr", { "data-device": d.deviceId },
        el("td", {}, el("a", { href: "#/device/" + enc(d.deviceId), text: d.deviceId })),
        el("td", { class: `status-${d.status}`, text: d.status + (d.statusReason ? ` (${d.statusReason})` : "") }),
        el("td", { class: `status-${String(d.connectionState).toLowerCase()}`, text: d.connectionState }),
        el("td", { class: "volatile", text: seen(d.lastActivityTime) ? `${age(d.lastActivityTime)} ago` : "never", title: d.lastActivityTime }),
        el("td", { class: `check-in check-${due.verdict}`, text: due.text }),
        el("td", { text: d.authentication?.type || "" }),
        el("td", { class: "key-cell" }, shown.has(d.deviceId) ? keyCells(shown.get(d.deviceId)) : null),
        el("td", {},
          isOperator() ? el("button", { type: "button", text: "Show keys", onclick: () => api("GET", "devices/" + enc(d.deviceId)).then((full) => { shown.set(d.deviceId, full); draw(); }).catch(errorLine(message)) }) : null,
          " ",
          isOperator() ? el("button", { type: "button", class: d.status === "enabled" ? "danger" : "", text: d.status === "enabled" ? "Disable" : "Enable", onclick: () => setStatus(d.deviceId, d.status !== "enabled").then(() => load(pages[pages.length - 1])).catch(errorLine(message)) }) : null));
    });
    const searching = terms().toString() !== `top=${PAGE_SIZE}`;
    list.replaceChildren(table(["Device id", "Status", "Connection", "Last activity", "Check-in", "Auth", "Keys", ""], rows,
      searching && page.continuationToken ? "No match in this stretch of the registry" : searching ? "No device matches" : "No devices"));
    // A search looks at a bounded stretch per page (device_search_scan): a short page with
    // a token means "more to look at", not "no more matches".
    note.textContent = searching && page.continuationToken && page.value.length < PAGE_SIZE
      ? "Searched part of the registry; the next page looks further." : "";
    pager.replaceChildren(...[
      pages.length > 1 ? el("button", { type: "button", text: "Previous page", onclick: () => { pages.pop(); load(pages[pages.length - 1]).catch(errorLine(message)); } }) : null,
      page.continuationToken ? el("button", { type: "button", text: "Next page", onclick: () => { pages.push(page.continuationToken); load(page.continuationToken).catch(errorLine(message)); } }) : null,
    ].filter(Boolean));
  }

  let asked = 0; // answers to older searches are dropped
  async function load(token) {
    const query = terms();
    if (token) query.set("continuationToken", token);
    const mine = ++asked;
    const answer = await api("GET", "devices?" + query.toString());
    if (mine !== asked) return;
    page = answer;
    draw();
  }
  let typing = null;
  const restart = () => {
    clearTimeout(typing);
    typing = setTimeout(() => { pages.splice(1); message.textContent = ""; load(null).catch(errorLine(message)); }, 250);
  };
  view.onStop(() => clearTimeout(typing));
  search.addEventListener("input", restart);
  for (const select of [mode, status, connection]) select.addEventListener("change", restart);
  view.every(REFRESH_MS * 2, () => load(pages[pages.length - 1]).catch(() => {}));
  await load(null);
}

const VERDICTS = { onSchedule: "on schedule", overdue: "overdue", never: "never seen", unscheduled: "no schedule" };

async function device(main, view, deviceId) {
  const path = "devices/" + enc(deviceId);
  main.append(el("p", {}, el("a", { href: "#/devices", text: "← Devices" })), el("h1", { text: deviceId }));
  const message = el("p", { class: "error", role: "alert" });
  const summary = el("div", { class: "cards", id: "device-cards" });
  const keys = el("div", { id: "device-keys" });
  const timeline = el("div", { id: "timeline" });
  main.append(summary, message);

  if (isOperator()) {
    const drawKeys = (doc) => {
      const primary = doc.authentication?.symmetricKey?.primaryKey;
      const text = primary ? connectionString(doc.deviceId, primary) : "";
      const copyButton = el("button", { type: "button", text: "Copy", onclick: () => copy(text, copyButton) });
      keys.replaceChildren(keyCells(doc), primary ? el("p", { class: "inline" }, "Connection string ",
        el("code", { id: "connection-string", class: "volatile", text }), " ", copyButton) : null);
    };
    const regenerate = (keyType) => api("POST", `${path}/regenerateKey`, { keyType }).then(drawKeys).catch(errorLine(message));
    main.append(el("h2", { text: "Keys" }), el("div", { class: "inline" },
      el("button", { type: "button", text: "Show keys", onclick: () => api("GET", path).then(drawKeys).catch(errorLine(message)) }),
      el("button", { type: "button", text: "Regenerate primary", onclick: () => regenerate("primary") }),
      el("button", { type: "button", text: "Regenerate secondary", onclick: () => regenerate("secondary") })), keys);
  }
  main.append(el("h2", { text: "Timeline (this node)" }),
    el("p", { class: "note", text: "Connects, disconnects with their reasons, and refused logins; newest first." }), timeline);

  await live(view, summary, async () => {
    const [doc, line] = await Promise.all([api("GET", path), api("GET", path + "/timeline")]);
    const toggle = isOperator()
      ? el("button", { type: "button", id: "device-toggle", class: doc.status === "enabled" ? "danger" : "", text: doc.status === "enabled" ? "Disable" : "Enable", onclick: () => setStatus(deviceId, doc.status !== "enabled").catch(errorLine(message)) })
      : null;
    const rows = line.value.map((e) => el("tr", { "data-kind": e.kind },
      el("td", { class: "volatile", text: `${age(e.time)} ago`, title: e.time }),
      el("td", { class: `kind-${e.kind}`, text: e.kind === "authFailed" ? `auth failed (${e.status})` : e.kind }),
      el("td", { text: e.role }), el("td", { text: e.hybridConnection }),
      el("td", { class: "reason", text: e.reason + (e.closeCode ? ` (${e.closeCode})` : "") })));
    timeline.replaceChildren(table(["When", "What", "As", "Hybrid connection", "Reason"], rows, "Nothing seen on this node yet"));
    return [
      card("status", "Status", doc.status, doc.statusReason || null),
      card("connection", "Connection", doc.connectionState),
      card("last-activity", "Last activity", seen(doc.lastActivityTime) ? `${age(doc.lastActivityTime)} ago` : "never"),
      card("check-in", "Check-in", VERDICTS[line.checkIn] || line.checkIn,
        line.checkInIntervalSeconds ? `${every(line.checkInIntervalSeconds)}${line.nextCheckInDue ? `, due ${new Date(line.nextCheckInDue).toLocaleString()}` : ""}` : "no expected interval"),
      el("div", { class: "card" }, el("span", { class: "label", text: doc.authentication?.type || "" }), el("span", { class: "sub" }, toggle)),
    ];
  });
}

export { device, devices };
