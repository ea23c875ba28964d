// The HTTP inspector page (#/inspector/<hybrid connection>): recent HTTP-mode requests of a
// hybrid connection, their (redacted) headers and capped bodies, replay and edit-and-replay
// (operators only: the relay refuses a viewer's write anyway), and "copy as curl".
// Everything goes through /$mgmt/v1/hybridconnections/{name}/inspector (mgmt/inspector.py).
import { api, el, enc, errorLine, hcPath, isOperator, live, state, table } from "./lib.js";

const REDACTED = "[redacted]";

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleTimeString();
}

function ms(seconds) {
  return seconds < 1 ? `${(seconds * 1000).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
}

function statusClass(status) {
  if (status === null) return "status-degraded";
  return status < 400 ? "status-healthy" : status < 500 ? "status-degraded" : "status-down";
}

function headerTable(id, pairs) {
  const rows = pairs.map(([name, value]) => el("tr", {},
    el("td", { text: name }), el("td", {}, el("code", { class: value === REDACTED ? "redacted" : null, text: value }))));
  return el("div", { id }, table(["Header", "Value"], rows, "No headers"));
}

function bodyBlock(id, body) {
  const size = body.size === null ? "size unknown (streamed)" : `${body.size} bytes`;
  const kept = body.complete ? "" : `, first ${body.captured} kept`;
  const text = body.text ?? `(binary, base64) ${body.base64}`;
  return el("div", { id },
    el("p", { class: "note", text: `${size}${kept}` }),
    body.captured ? el("pre", { class: "body", text }) : null);
}

// A POSIX shell word: single quotes, each ' written as '\''.
const quote = (text) => `'${String(text).replaceAll("'", "'\\''")}'`;

// The relay's public URL, from the session: the dashboard has an origin of its own
// (dashboard_listen), which is not where senders send.
function relayRoot() {
  return (state.session?.relayUrl || "").replace(/\/$/, "");
}

function withoutToken(target) {
  const [path, query] = target.split(/\?(.*)/s, 2);
  if (query === undefined) return target;
  const kept = query.split("&").filter((part) => part.split("=")[0].toLowerCase() !== "sb-hc-token");
  return kept.length ? `${path}?${kept.join("&")}` : path;
}

// A method as typed when it is a plain word; quoted otherwise (HTTP allows ` | & ' in one).
const methodWord = (method) => (/^[A-Za-z0-9_-]+$/.test(method) ? method : quote(method));

// "Copy as curl": the recorded request to the relay's public URL. Redacted headers are left
// out and the sender's token becomes $SAS_TOKEN, which the operator fills in. Everything
// else was chosen by whoever sent the request, and the operator runs this: every word is
// quoted, --globoff keeps curl from expanding [1-3] or {a,b} in the target into more
// requests, and --data-raw sends a body that starts with "@" as it is, where
// --data-binary would upload the operator's file of that name to the listener.
function curlCommand(record) {
  const parts = ["curl", "-X", methodWord(record.method), quote(relayRoot() + withoutToken(record.target)), "--globoff"];
  parts.push("-H", `"ServiceBusAuthorization: $SAS_TOKEN"`);
  for (const [name, value] of record.requestHeaders) {
    const lower = name.toLowerCase();
    if (value.includes(REDACTED) || ["host", "content-length", "connection", "transfer-encoding"].includes(lower)) continue;
    parts.push("-H", quote(`${name}: ${value}`));
  }
  const body = record.requestBody;
  if (body.captured || body.size) {
    if (body.complete && body.text !== null) parts.push("--data-raw", quote(body.text));
    else parts.push("--data-binary", "@request-body.bin", "# the body was not kept whole: supply it");
  }
  return parts.join(" ");
}

function headersText(pairs) {
  return pairs.filter(([, value]) => !value.includes(REDACTED)).map(([name, value]) => `${name}: ${value}`).join("\n");
}

function parseHeaders(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
    const colon = line.indexOf(":");
    if (colon < 1) throw new Error(`not a header line: ${line}`);
    return [line.slice(0, colon).trim(), line.slice(colon + 1).trim()];
  });
}

async function inspector(main, view, name) {
  main.append(el("h1", { text: "HTTP inspector" }));
  const hcs = await api("GET", "hybridconnections?top=1000");
  const picker = el("select", { id: "inspector-hc", onchange: () => { location.hash = "#/inspector/" + enc(picker.value); } },
    el("option", { value: "", text: "choose a hybrid connection" }),
    hcs.value.map((hc) => el("option", { value: hc.name, text: hc.name, selected: hc.name === name })));
  main.append(el("form", { class: "inline" }, el("label", {}, "Hybrid connection ", picker)));
  if (!name) {
    main.append(el("p", { class: "note", text: "Off by default for every hybrid connection: turn it on for one to record its HTTP-mode requests (this node only; secrets are redacted)." }));
    return;
  }
  const base = "hybridconnections/" + hcPath(name) + "/inspector";
  const message = el("p", { class: "error", role: "alert", id: "inspector-message" });
  const settings = el("div", { class: "cards", id: "inspector-settings" });
  const list = el("div", { id: "inspector-list" });
  const detail = el("section", { id: "inspector-detail" });
  main.append(settings, message, el("h2", { text: "Recent requests (newest first)" }), list, detail);
  let selected = null;

  async function show(id) {
    selected = id;
    const record = await api("GET", `${base}/requests/${enc(id)}`);
    const result = el("p", { id: "replay-result", class: "note" });
    const curl = el("pre", { id: "curl", class: "body", hidden: true });
    const actions = el("div", { class: "inline actions" });
    actions.append(el("button", { type: "button", id: "copy-curl", text: "Copy as curl", onclick: async () => {
      curl.textContent = curlCommand(record);
      curl.hidden = false;
      try { await navigator.clipboard.writeText(curl.textContent); result.textContent = "Copied."; }
      catch { result.textContent = "Select the command below to copy it."; }
    } }));
    const editor = el("form", { id: "replay-editor", class: "editor", hidden: true });
    if (isOperator()) {
      actions.append(" ",
        el("button", { type: "button", id: "replay", class: "primary", text: "Replay", onclick: () => replay({}) }), " ",
        el("button", { type: "button", id: "edit-replay", text: "Edit and replay", onclick: () => { editor.hidden = !editor.hidden; } }));
      const method = el("input", { id: "edit-method", value: record.method, size: 8 });
      const target = el("input", { id: "edit-target", value: withoutToken(record.target), size: 60 });
      const headers = el("textarea", { id: "edit-headers", rows: 5 });
      headers.value = headersText(record.requestHeaders);
      const body = el("textarea", { id: "edit-body", rows: 5 });
      body.value = record.requestBody.text ?? "";
      editor.append(
        el("label", {}, "Method ", method), el("label", {}, "Target ", target),
        el("label", {}, "Headers (one per line; redacted ones are not sent, your login authorizes the replay)", headers),
        el("label", {}, "Body", body),
        el("button", { type: "submit", class: "primary", id: "send-edited", text: "Send" }));
      editor.addEventListener("submit", (event) => {
        event.preventDefault();
        try {
          replay({ method: method.value.trim(), target: target.value.trim(), headers: parseHeaders(headers.value), body: body.value });
        } catch (error) { result.textContent = error.message; }
      });
    }

    async function replay(edits) {
      result.textContent = "Replaying…";
      try {
        const answer = await api("POST", `${base}/requests/${enc(record.id)}/replay`, edits);
        result.textContent = `Replayed: ${answer.status}`;
        if (answer.replay) await show(answer.replay.id); // the replay's own record
        await drawList();
        document.getElementById("replay-result").textContent = `Replayed: ${answer.status}`;
      } catch (error) { result.textContent = error.message; }
    }

    detail.replaceChildren(
      el("h2", {}, `${record.method} `, el("code", { text: record.target })),
      el("p", { id: "record-summary" },
        el("span", { class: statusClass(record.status), text: record.status ?? "no answer" }),
        " · received ", el("span", { class: "volatile", text: when(record.receivedAt) }),
        " · ", el("span", { class: "volatile", text: ms(record.duration) }),
        record.replayOf ? el("span", {}, " · replay of ", el("code", { class: "volatile", text: record.replayOf })) : "",
        record.error ? el("span", { class: "error", text: ` · ${record.error}` }) : ""),
      actions, result, curl, editor,
      el("h2", { text: "Request headers" }), headerTable("request-headers", record.requestHeaders),
      el("h2", { text: "Request body" }), bodyBlock("request-body", record.requestBody),
      el("h2", { text: "Response headers" }), headerTable("response-headers", record.responseHeaders),
      el("h2", { text: "Response body" }), bodyBlock("response-body", record.responseBody));
  }

  async function drawList() {
    const records = await api("GET", `${base}/requests`);
    const rows = records.value.map((r) => el("tr", { "data-record": r.id, class: r.id === selected ? "selected" : null },
      el("td", { class: "volatile", text: when(r.receivedAt) }),
      el("td", { text: r.method }),
      el("td", {}, el("a", { href: "#", text: r.target, onclick: (event) => { event.preventDefault(); show(r.id).catch(errorLine(message)); } })),
      el("td", { class: `status ${statusClass(r.status)}`, text: r.status ?? "-" }),
      el("td", { class: "volatile", text: ms(r.duration) }),
      el("td", { class: "replay-of", text: r.replayOf ? "replay" : "" })));
    list.replaceChildren(table(["Received", "Method", "Target", "Status", "Duration", ""], rows, "Nothing recorded yet"));
  }

  await live(view, settings, async () => {
    const doc = await api("GET", base);
    const toggle = isOperator()
      ? el("button", { type: "button", id: "inspector-toggle", class: doc.enabled ? "danger" : "primary", text: doc.enabled ? "Turn off" : "Turn on",
        onclick: () => api("PUT", base, { enabled: !doc.enabled }).then(drawList).catch(errorLine(message)) })
      : null;
    return [
      el("div", { class: "card", "data-stat": "recording" },
        el("span", { class: "n", id: "inspector-state", text: doc.enabled ? "on" : "off" }),
        el("span", { class: "label", text: "Recording (this node)" }), el("span", { class: "sub" }, toggle)),
      el("div", { class: "card" }, el("span", { class: "n", id: "inspector-kept", text: `${doc.recorded} / ${doc.capacity}` }), el("span", { class: "label", text: "Requests kept" })),
      el("div", { class: "card" }, el("span", { class: "n", text: `${doc.bodyLimit} B` }), el("span", { class: "label", text: "Kept of each body" })),
    ];
  });
  await drawList();
  view.every(2000, () => drawList().catch(errorLine(message)));
}

export { curlCommand, inspector };
