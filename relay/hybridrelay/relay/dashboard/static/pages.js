// The dashboard's first pages: overview, hybrid connections, live streams, events
// (devices: devices.js).
import {
  REFRESH_MS, api, age, bytes, card, chart, el, enc, errorLine, hcPath, isOperator, live,
  table,
} from "./lib.js";


async function overview(main, view) {
  main.append(el("h1", { text: "Overview" }));
  const cards = el("div", { class: "cards", id: "overview-cards" });
  const refusals = el("div", { id: "refusals" });
  const charts = el("div", { class: "charts", id: "charts" });
  main.append(cards, charts, el("h2", { text: "Refusals by reason" }), refusals);
  await live(view, cards, async () => {
    const [stats, hcs, devices, nodes] = await Promise.all([
      api("GET", "stats"), api("GET", "hybridconnections?top=1000"), api("GET", "devices?top=1000"),
      api("GET", "nodes"),
    ]);
    const draining = nodes.value.filter((n) => n.draining).length;
    const more = (page) => (page.continuationToken ? "+" : "");
    const enabled = devices.value.filter((d) => d.status === "enabled").length;
    const connected = devices.value.filter((d) => d.connectionState === "connected").length;
    return [
      card("hybridconnections", "Hybrid connections", `${hcs.value.length}${more(hcs)}`),
      card("nodes", "Relay nodes", nodes.value.length, draining ? `${draining} draining` : "none draining"),
      card("listeners", "Listeners online", stats.listeners),
      card("streams", "Live streams", stats.activeStreams, `${stats.connections} since start`),
      card("devices", "Devices", `${devices.value.length}${more(devices)}`,
        `${enabled} enabled, ${devices.value.length - enabled} disabled, ${connected} connected`),
      card("bytes", "Bytes relayed", bytes(stats.bytesSenderToListener + stats.bytesListenerToSender),
        `${bytes(stats.bytesSenderToListener)} up, ${bytes(stats.bytesListenerToSender)} down`),
    ];
  });
  await live(view, charts, async () => {
    const points = (await api("GET", "stats")).traffic.points;
    return [
      chart("chart-bytes", "Bytes per second", points, [
        { key: "bytesUpPerSecond", label: "up", class: "up" },
        { key: "bytesDownPerSecond", label: "down", class: "down" },
      ], (v) => `${bytes(Math.round(v))}/s`),
      chart("chart-connects", "Connects per second", points, [
        { key: "connectsPerSecond", label: "connects", class: "up" },
      ], (v) => `${v.toFixed(2)}/s`),
    ];
  });
  await live(view, refusals, async () => {
    const stats = await api("GET", "stats");
    const total = stats.refusals.reduce((sum, r) => sum + r.count, 0) || 1;
    const rows = stats.refusals.map((r) => el("tr", { "data-refusal": `${r.status}-${r.action}` },
      el("td", { text: r.reason }), el("td", { text: r.status }), el("td", { text: r.action }),
      el("td", { text: r.count }), el("td", {}, el("meter", { min: 0, max: total, value: r.count }))));
    const limits = stats.limitRefusals.map((r) => el("tr", {},
      el("td", { text: r.limit }), el("td", { text: r.count })));
    const sources = stats.topRefusedSources.map((r) => el("tr", { "data-source": r.address },
      el("td", { text: r.address }), el("td", { text: r.error ? `${r.count} (±${r.error})` : r.count })));
    return [
      table(["Reason", "Status", "Action", "Count", ""], rows, "No refusals yet"),
      el("h2", { text: "Top refused sources" }),
      table(["Source address", "Refusals (404s aside)"], sources, "No source refused yet"),
      el("h2", { text: "Refusals by limit" }),
      table(["Limit (docs/security.md)", "Count"], limits, "No limit reached yet"),
    ];
  });
}

// down: enabled, no listener anywhere; degraded: listeners at their cap (maxListeners),
// so the next listener (an agent's restart or scale-out) is refused; else healthy.
function hcStatus(hc) {
  if (hc.status === "disabled") return "disabled";
  if (hc.listenerCount === 0) return "down";
  return hc.listenerCount >= hc.maxListeners ? "degraded" : "healthy";
}

async function hybridConnections(main, view) {
  main.append(el("h1", { text: "Hybrid connections" }));
  if (isOperator()) {
    const name = el("input", { id: "hc-name", placeholder: "new hybrid connection name", required: true });
    const error = el("span", { class: "error" });
    main.append(el("form", {
      class: "inline",
      onsubmit: (event) => {
        event.preventDefault();
        api("PUT", "hybridconnections/" + hcPath(name.value.trim()), {})
          .then(() => { location.hash = "#/hc/" + enc(name.value.trim()); })
          .catch(errorLine(error));
      },
    }, name, el("button", { type: "submit", class: "primary", text: "Create" }), error));
  }
  const list = el("div", { id: "hc-list" });
  main.append(list);
  await live(view, list, async () => {
    const [hcs, streams] = await Promise.all([api("GET", "hybridconnections?top=1000"), api("GET", "streams")]);
    const open = {};
    for (const s of streams.value) open[s.hybridConnection.toLowerCase()] = (open[s.hybridConnection.toLowerCase()] || 0) + 1;
    const rows = hcs.value.map((hc) => {
      const status = hcStatus(hc);
      return el("tr", { "data-hc": hc.name },
        el("td", {}, el("a", { href: "#/hc/" + enc(hc.name), text: hc.name })),
        el("td", { class: `status-${status}`, text: status }),
        el("td", { class: "listeners", text: `${hc.listenerCount} / ${hc.maxListeners}` }),
        el("td", { class: "streams", text: open[hc.name.toLowerCase()] || 0 }),
        el("td", { text: hc.http === true ? "HTTP" : hc.http === false ? "WebSocket" : "both" }));
    });
    return table(["Name", "Status", "Listeners", "Live streams", "Mode"], rows, "No hybrid connections");
  });
}

function keyCells(rule) {
  return el("div", { class: "keys" },
    el("span", {}, "primary ", el("code", { class: "primary-key volatile", text: rule.primaryKey })),
    el("span", {}, "secondary ", el("code", { class: "secondary-key volatile", text: rule.secondaryKey || "" })));
}

async function hybridConnection(main, view, name) {
  const path = "hybridconnections/" + hcPath(name);
  main.append(el("h1", { text: name }), el("p", {},
    el("a", { id: "hc-inspector", href: "#/inspector/" + enc(name), text: "Inspect its HTTP requests" }),
    " (the HTTP inspector: this node's recent HTTP-mode requests; replay them)"));
  const summary = el("div", { class: "cards", id: "hc-cards" });
  const listeners = el("div", { id: "listeners" });
  const rules = el("div", { id: "rules" });
  const message = el("p", { class: "error", role: "alert" });
  main.append(summary, el("h2", { text: "Listeners (this node)" }), listeners, el("h2", { text: "Rules" }), message);

  async function drawRules() {
    const list = await api("GET", path + "/rules");
    const rows = list.value.map((rule) => {
      const keys = el("td", { class: "key-cell" });
      const actions = el("td", {});
      if (isOperator()) { // viewers are shown no key (the relay blanks them anyway)
        actions.append(
          el("button", { type: "button", text: "Show keys", onclick: () => api("GET", `${path}/rules/${enc(rule.name)}`).then((r) => keys.replaceChildren(keyCells(r))).catch(errorLine(message)) }),
          " ",
          el("button", { type: "button", text: "Regenerate primary", onclick: () => api("POST", `${path}/rules/${enc(rule.name)}/regenerate`, { keyType: "primary" }).then((r) => keys.replaceChildren(keyCells(r))).catch(errorLine(message)) }),
          " ",
          el("button", { type: "button", class: "danger", text: "Delete", onclick: () => api("DELETE", `${path}/rules/${enc(rule.name)}`).then(() => drawRules()).catch(errorLine(message)) }));
      }
      return el("tr", { "data-rule": rule.name }, el("td", { text: rule.name }), el("td", { text: rule.rights.join(", ") }), keys, actions);
    });
    rules.replaceChildren(table(["Name", "Rights", "Keys", ""], rows, "No rules of its own: namespace rules apply"));
  }

  if (isOperator()) {
    const ruleName = el("input", { id: "rule-name", placeholder: "rule name", required: true });
    const rights = ["Listen", "Send", "Manage"].map((right) =>
      el("label", {}, el("input", { type: "checkbox", value: right, checked: right !== "Manage", "data-right": right }), ` ${right}`));
    const created = el("div", { id: "rule-created" });
    main.append(rules, el("form", {
      class: "inline",
      onsubmit: (event) => {
        event.preventDefault();
        const chosen = rights.map((l) => l.firstChild).filter((box) => box.checked).map((box) => box.value);
        api("PUT", `${path}/rules/${enc(ruleName.value.trim())}`, { rights: chosen })
          .then((rule) => { created.replaceChildren(el("p", { text: `Created ${rule.name}:` }), keyCells(rule)); return drawRules(); })
          .catch(errorLine(message));
      },
    }, ruleName, rights, el("button", { type: "submit", class: "primary", text: "Create rule" })), created);
  } else {
    main.append(rules);
  }

  await live(view, summary, async () => {
    const [hc, counters] = await Promise.all([api("GET", path), api("GET", path + "/metrics")]);
    const status = hcStatus(hc);
    const toggle = isOperator()
      ? el("button", { type: "button", id: "hc-toggle", text: hc.status === "disabled" ? "Enable" : "Disable", onclick: () => api("PATCH", path, { status: hc.status === "disabled" ? "enabled" : "disabled" }).catch(errorLine(message)) })
      : null;
    return [
      card("status", "Status", status, null),
      card("ActiveListeners", "ActiveListeners", `${hc.listenerCount} / ${hc.maxListeners}`, "all nodes, against the cap"),
      card("ActiveConnections", "ActiveConnections", counters.ActiveConnections, "this node"),
      // Azure Monitor's names (GET .../metrics), so Azure operators recognise them.
      ...["ListenerConnections-Success", "ListenerConnections-ClientError", "ListenerConnections-ServerError",
        "SenderConnections-Success", "SenderConnections-ClientError", "SenderConnections-ServerError",
      ].map((name) => card(name, name, counters[name], "this node")),
      card("BytesTransferred", "BytesTransferred", bytes(counters.BytesTransferred), "finished streams"),
      el("div", { class: "card" }, el("span", { class: "label", text: hc.configOwned ? "Owned by the config file" : "Created by the API" }), el("span", { class: "sub" }, toggle)),
    ];
  });
  await live(view, listeners, async () => {
    const list = await api("GET", "listeners?hybridConnection=" + enc(name));
    const rtt = (ms) => (ms === null ? "no pong yet" : `${ms.toFixed(1)} ms`);
    const rows = list.value.map((l) => el("tr", { "data-listener": l.id },
      el("td", {}, el("code", { text: l.id })), el("td", { class: "agent", text: l.agentId ?? "" }),
      el("td", { class: "node volatile", text: l.node }), el("td", { class: "volatile", text: l.remoteAddress }),
      el("td", { class: "volatile", text: `${age(l.connectedAt)} ago`, title: l.connectedAt }),
      el("td", { class: "rtt volatile", text: rtt(l.lastPingRoundTripMs) }), el("td", { class: "streams", text: l.activeStreams })));
    return table(["Id", "Agent", "Node", "Remote address", "Connected", "Last ping round trip", "Active streams"], rows, "No listener connected");
  });
  await drawRules().catch(errorLine(message));
}

async function streams(main, view) {
  main.append(el("h1", { text: "Live streams" }));
  const message = el("p", { class: "error", role: "alert" });
  const list = el("div", { id: "stream-list" });
  main.append(message, list);
  const draw = async () => {
    const open = await api("GET", "streams");
    const rows = open.value.map((s) => el("tr", { "data-stream": s.id },
      el("td", {}, el("a", { href: "#/hc/" + enc(s.hybridConnection), text: s.hybridConnection })),
      el("td", { class: "volatile", text: s.senderAddress }), el("td", {}, el("code", { text: s.listenerId })),
      el("td", { class: "up", text: bytes(s.bytesSenderToListener) }), el("td", { class: "down", text: bytes(s.bytesListenerToSender) }),
      el("td", { class: "volatile", text: age(s.startedAt), title: s.startedAt }),
      el("td", {}, isOperator() ? el("button", {
        type: "button", class: "danger", text: "Close",
        onclick: () => api("DELETE", `streams/${enc(s.id)}?reason=${enc("closed from the dashboard")}`).then(draw).catch(errorLine(message)),
      }) : null)));
    list.replaceChildren(table(["Hybrid connection", "Sender", "Listener", "Up", "Down", "Age", ""], rows, "No live stream"));
  };
  view.every(REFRESH_MS, () => draw().catch(() => {}));
  await draw();
}

// Every opType the relay publishes (relay/mgmt/events.py; a unit test keeps this in step).
// EventSource has no wildcard: a named event is heard only by a listener for its name.
const OP_TYPES = [
  "createDeviceIdentity", "updateDeviceIdentity", "disableDeviceIdentity", "enableDeviceIdentity",
  "regenerateDeviceKeys", "deleteDeviceIdentity",
  "createHybridConnection", "updateHybridConnection", "disableHybridConnection",
  "enableHybridConnection", "deleteHybridConnection",
  "createAuthorizationRule", "updateAuthorizationRule", "regenerateAuthorizationRuleKey",
  "deleteAuthorizationRule",
  "createCertificate", "updateCertificate", "generateCertificateVerificationCode",
  "verifyCertificate", "deleteCertificate",
  "listenerOnline", "listenerOffline", "startJob", "completeJob", "failJob",
];
const MAX_EVENTS = 200;

async function events(main, view) {
  main.append(el("h1", { text: "Events" }),
    el("p", { class: "note", text: "Lifecycle events of the last 15 minutes, then live (newest first)." }));
  const filter = el("input", { id: "event-filter", type: "search", placeholder: "filter: opType or name" });
  // What kind of thing changed, from the op type's name (createDeviceIdentity: a device).
  const kinds = [["", "All kinds"], ["Listener", "Listeners"], ["DeviceIdentity", "Devices"],
    ["HybridConnection", "Hybrid connections"], ["AuthorizationRule", "Rules"], ["Certificate", "Certificates"], ["Job", "Jobs"]];
  const kind = el("select", { id: "event-kind", "aria-label": "kind of event" },
    kinds.map(([value, label]) => el("option", { value, text: label })));
  const status = el("p", { class: "note", id: "event-status", text: "connecting" });
  const list = el("div", { id: "event-list" });
  main.append(el("form", { class: "inline", onsubmit: (e) => e.preventDefault() }, kind, filter), status, list);
  const seen = [];
  const draw = () => {
    const needle = filter.value.trim().toLowerCase();
    const rows = seen.filter((e) => (!needle || e.text.includes(needle)) && (!kind.value || e.op.toLowerCase().includes(kind.value.toLowerCase()))).map((e) => el("tr", { "data-event": e.op },
      el("td", { class: "volatile", text: e.time }), el("td", { text: e.op }), el("td", { text: e.entity }),
      el("td", { text: e.detail })));
    list.replaceChildren(table(["When", "Event", "Entity", "Detail"], rows, "No events yet"));
  };
  filter.addEventListener("input", draw);
  kind.addEventListener("change", draw);
  const since = new Date(Date.now() - 15 * 60 * 1000).toISOString();
  const source = new EventSource("api/events?since=" + enc(since));
  view.onStop(() => source.close());
  const heard = (message) => {
    const event = JSON.parse(message.data);
    const p = event.properties || {};
    // A listener event names its hybrid connection in hubName (and its device in deviceId).
    const hc = p.hybridConnection || (p.listenerId ? p.hubName : "");
    const entity = hc || p.deviceId || p.ruleName || p.certificateName || p.jobId || "";
    const detail = p.listenerId ? `listener ${p.listenerId}` : "";
    seen.unshift({ op: p.opType, time: p.operationTimestamp, entity, detail,
      text: `${p.opType} ${entity} ${detail}`.toLowerCase() });
    seen.splice(MAX_EVENTS);
    draw();
  };
  for (const op of OP_TYPES) source.addEventListener(op, heard);
  source.addEventListener("open", () => { status.textContent = "live"; });
  source.addEventListener("error", () => { status.textContent = source.readyState === EventSource.CLOSED ? "ended: reload to reconnect" : "reconnecting"; });
  draw();
}

export { events, hybridConnection, hybridConnections, overview, streams };
