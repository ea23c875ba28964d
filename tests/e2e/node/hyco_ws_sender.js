'use strict';
// hyco-ws@1.0.5 sender driven by JSON parameters: connect, send messages, collect as many echoes, close 1000.
//
//   node hyco_ws_sender.js '{"uri":"ws://127.0.0.1:8080/$hc/echo?sb-hc-action=connect","keyName":"k","key":"s",
//                            "messages":[{"type":"text","data":"hi"},{"type":"binary","data":"AAEC"}]}'
//
// Parameters (one JSON object, or "@file.json"):
//   uri               connect URI, hand-built ws(s)://host:port/$hc/<path>[/suffix]?[app&]sb-hc-action=connect
//   keyName, key      SAS rule; the token is WebSocket.createRelayToken(uri, keyName, key[, expirationSeconds])
//   token             optional: a literal token string used instead (null = send no token)
//   expirationSeconds optional token lifetime
//   protocol          optional sub-protocol (string, or array of strings = several offered)
//   headers           optional extra handshake headers {name: value}
//   useRelayedConnect default: true when neither protocol nor headers is given. true -> WebSocket.relayedConnect(
//                     uri, token, onOpen); false -> new WebSocket(uri, protocol, {headers: {ServiceBusAuthorization}})
//   messages          [{type: "text"|"binary", data: <string; base64 for binary>}]; instead of data a message may
//                     give "size": N for a generated payload (binary: byte i = i % 251; text: ASCII pattern)
//   summary           true -> echoes are reported as {type, length (bytes), sha256 (hex, of the UTF-8/raw
//                     bytes)} instead of {type, data}
//   closeCode, closeReason   close frame sent after the echoes (default 1000, "")
//   timeoutMs         overall bound (default 20000)
//
// Events:
//   {"event":"open","protocol":P|null}
//   {"event":"result","protocol":P|null,"echoes":[{"type":..,"data":..}]}       then close, exit 0
//   {"event":"closed","code":N,"reason":"..."}                                 after our close completed
//   {"event":"error","message":"...","status":N?,"statusMessage":..,"headers":..,"body":..}   exit 2
//       (non-101 answer: status/statusMessage/headers/body of the relay's response; the relay closing before all
//        echoes arrived: code/reason)
//   {"event":"error","message":"timeout ..."}                                  exit 3

const common = require('./lib/common');

common.installCrashHandlers(2);
const params = common.readParams();
const WebSocket = require('hyco-ws');

const uri = common.requireString(params, 'uri');
const timeoutMs = params.timeoutMs === undefined ? 20000 : Number(params.timeoutMs);
const protocol = params.protocol === undefined || params.protocol === null ? null : params.protocol;
const extraHeaders = params.headers || null;
const summary = !!params.summary;
const closeCode = params.closeCode === undefined ? 1000 : params.closeCode;
const closeReason = params.closeReason === undefined ? '' : String(params.closeReason);
const useRelayedConnect =
  params.useRelayedConnect === undefined ? protocol === null && extraHeaders === null : !!params.useRelayedConnect;

if (useRelayedConnect && (protocol !== null || extraHeaders !== null)) {
  common.usage('relayedConnect takes neither a protocol nor extra headers; set useRelayedConnect:false');
}
if (!Array.isArray(params.messages)) common.usage('parameter "messages" must be an array');

const outgoing = params.messages.map((m, i) => {
  if (!m || (m.type !== 'text' && m.type !== 'binary')) {
    common.usage('messages[' + i + '].type must be "text" or "binary"');
  }
  const binary = m.type === 'binary';
  if (typeof m.size === 'number') {
    return { binary, payload: binary ? common.patternBytes(m.size) : common.patternText(m.size) };
  }
  if (typeof m.data !== 'string') common.usage('messages[' + i + '] needs "data" (string) or "size"');
  return { binary, payload: binary ? Buffer.from(m.data, 'base64') : m.data };
});

const token = common.tokenFactory(params, WebSocket.createRelayToken, uri)();

const timer = setTimeout(() => {
  common.fail(3, 'timeout after ' + timeoutMs + ' ms (' + echoes.length + '/' + outgoing.length + ' echoes)');
}, timeoutMs);

const echoes = [];
let phase = 'connecting'; // connecting -> open -> closing -> done

function finish() {
  phase = 'closing';
  clearTimeout(timer); // the close handshake has its own bound below
  common.emit('result', { protocol: ws.protocol || null, echoes });
  const closeTimer = setTimeout(() => {
    common.emit('closed', { code: null, reason: 'close handshake timed out' });
    common.exit(0);
  }, 5000);
  ws.once('close', (code, reason) => {
    clearTimeout(closeTimer);
    common.emit('closed', { code: code === undefined ? null : code, reason: reason ? String(reason) : '' });
    common.exit(0);
  });
  ws.close(closeCode, closeReason);
}

function onOpen() {
  phase = 'open';
  common.emit('open', { protocol: ws.protocol || null });
  if (outgoing.length === 0) {
    finish();
    return;
  }
  for (const m of outgoing) {
    ws.send(m.payload, { binary: m.binary }, (err) => {
      if (err) common.fail(2, 'send failed: ' + common.errorMessage(err));
    });
  }
}

// Anything the constructors throw (e.g. "invalid url") is reported by the crash handler (exit 2).
let ws;
if (useRelayedConnect) {
  ws = WebSocket.relayedConnect(uri, token, onOpen);
} else {
  const headers = Object.assign({}, extraHeaders || {});
  if (token) headers.ServiceBusAuthorization = token;
  ws = new WebSocket(uri, protocol, { headers });
  ws.on('open', onOpen);
}

ws.on('message', (data, flags) => {
  const binary = !!(flags && flags.binary);
  const type = binary ? 'binary' : 'text';
  if (summary) {
    echoes.push({ type, length: Buffer.byteLength(data), sha256: common.sha256Hex(data) });
  } else {
    echoes.push({ type, data: binary ? Buffer.from(data).toString('base64') : String(data) });
  }
  if (phase === 'open' && echoes.length >= outgoing.length) finish();
});

// Non-101 answer: report what the relay said (ws@1 itself would only say "unexpected server response (NNN)").
ws.on('unexpected-response', (req, res) => {
  phase = 'done';
  const chunks = [];
  let size = 0;
  const report = () => {
    common.fail(2, 'unexpected server response (' + res.statusCode + ')', {
      status: res.statusCode,
      statusMessage: res.statusMessage,
      headers: res.headers,
      body: Buffer.concat(chunks).toString('utf8'),
    });
  };
  setTimeout(report, 1000).unref();
  res.on('data', (c) => {
    if (size < 4096) chunks.push(c);
    size += c.length;
  });
  res.on('end', report);
  res.on('error', report);
});

ws.on('error', (err) => {
  if (phase === 'done') return;
  common.fail(2, err);
});

ws.on('close', (code, reason) => {
  if (phase === 'connecting' || phase === 'open') {
    common.fail(2, 'connection closed before all echoes arrived (' + echoes.length + '/' + outgoing.length + ')', {
      code: code === undefined ? null : code,
      reason: reason ? String(reason) : '',
      echoes,
    });
  }
});
