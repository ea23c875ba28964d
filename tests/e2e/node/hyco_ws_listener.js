'use strict';
// hyco-ws@1.0.5 listener (RelayedServer) driven by JSON parameters.
//
//   node hyco_ws_listener.js '{"uri":"ws://127.0.0.1:8080/$hc/echo?sb-hc-action=listen","keyName":"k","key":"s"}'
//
// Parameters (one JSON object, or "@file.json"):
//   uri               listen URI, hand-built ws(s)://host:port/$hc/<path>?sb-hc-action=listen (required)
//   keyName, key      SAS rule; the token is WebSocket.createRelayToken(uri, keyName, key[, expirationSeconds])
//   token             optional: a literal token string used instead (null = send no token)
//   expirationSeconds optional token lifetime (hyco default 3600)
//   mode              "echo" (default, the only mode): echo each message, text stays text, binary stays binary
//   protocol          optional: answer every accept with this sub-protocol via handleProtocols instead of
//                     hyco-ws's default (first offered one). Leave unset to test the default.
//
// Events (one JSON object per stdout line):
//   {"event":"listening"}                                   control channel open (again after each reconnect)
//   {"event":"control-close","code":N,"reason":"..."}       control channel closed (hyco-ws reconnects at once)
//   {"event":"accept","address":...,"id":...,"connectHeaders":{...}}   accept message as received
//   {"event":"connection","protocol":P|null,"url":address}  rendezvous socket open; P = negotiated sub-protocol
//   {"event":"message","type":"text"|"binary","length":N}   message (N bytes) received on a rendezvous socket,
//                                                           echoed back
//   {"event":"connection-close","code":N,"reason":"..."}    rendezvous socket closed
//   {"event":"connection-error","message":"..."}            rendezvous dial/socket failed (not fatal)
//   {"event":"error","message":"...","status":N?}           control-channel error -> exit 1 (hyco-ws would
//                                                           otherwise reconnect twice per failure: a storm)
// SIGTERM/SIGINT: wss.close(), exit 0.

const common = require('./lib/common');

common.installCrashHandlers();
const params = common.readParams();
const WebSocket = require('hyco-ws');

const uri = common.requireString(params, 'uri');
const mode = params.mode === undefined ? 'echo' : params.mode;
if (mode !== 'echo') common.usage('unsupported mode: ' + JSON.stringify(mode));
const token = common.tokenFactory(params, WebSocket.createRelayToken, uri);

const options = { server: uri, token: () => token() || '' };
if (typeof params.protocol === 'string') {
  options.handleProtocols = (offered, cb) => cb(true, params.protocol);
}

function onConnection(ws) {
  // hyco-ws emits 'connection' before the rendezvous socket is open; report once the handshake is done.
  ws.on('open', () => {
    common.emit('connection', { protocol: ws.protocol || null, url: ws.url });
  });
  ws.on('message', (data, flags) => {
    const binary = !!(flags && flags.binary);
    common.emit('message', { type: binary ? 'binary' : 'text', length: Buffer.byteLength(data) });
    ws.send(data, { binary }, (err) => {
      if (err) common.emit('connection-error', { message: 'echo send failed: ' + common.errorMessage(err) });
    });
  });
  ws.on('close', (code, reason) => {
    common.emit('connection-close', { code: code === undefined ? null : code, reason: reason ? String(reason) : '' });
  });
  ws.on('error', (err) => {
    common.emit('connection-error', { message: common.errorMessage(err) });
  });
}

// Connects in the constructor; anything it throws is reported by the crash handler (exit 1).
const wss = WebSocket.createRelayedServer(options, onConnection);

wss.on('listening', () => {
  const channel = wss.controlChannel;
  channel.on('close', (code, reason) => {
    if (!wss.closeRequested) {
      common.emit('control-close', { code: code === undefined ? null : code, reason: reason ? String(reason) : '' });
    }
  });
  // Observe control messages without disturbing hyco-ws (it parses them in channel.onmessage).
  channel.on('message', (data) => {
    try {
      const msg = JSON.parse(data);
      if (msg && msg.accept) {
        common.emit('accept', {
          address: msg.accept.address,
          id: msg.accept.id,
          connectHeaders: msg.accept.connectHeaders,
        });
      }
    } catch (_) {
      // hyco-ws itself will throw on this frame; the crash handler reports it.
    }
  });
  common.emit('listening');
});

wss.on('error', (err) => common.fail(1, err));

common.onTerminate((done) => {
  wss.once('close', done);
  wss.close(() => {});
  // close() on a control channel that is still connecting emits no 'close'; the grace timer covers it.
}, 2000);
