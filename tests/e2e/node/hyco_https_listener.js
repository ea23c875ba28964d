'use strict';
// hyco-https@1.4.5 listener (HTTP mode) serving a small test app, driven by JSON parameters.
//
//   node hyco_https_listener.js '{"uri":"ws://127.0.0.1:8080/$hc/app?sb-hc-action=listen","keyName":"k","key":"s"}'
//
// Parameters (one JSON object, or "@file.json"):
//   uri               listen URI, hand-built ws(s)://host:port/$hc/<path>?sb-hc-action=listen (required)
//   keyName, key      SAS rule; the token is https.createRelayToken(uri, keyName, key[, expirationSeconds])
//   token             optional: a literal token string used instead (null = send no token)
//   expirationSeconds optional token lifetime
//   exitOnError       default true: exit 1 on the first control-channel error. false: only report it and let
//                     hyco-https reconnect (its delays are 0,1,2,5,10,30 s; "listening" is printed again).
//
// The app (the request path is matched after the entity path, so /<entity>/status/404 and /status/404 both work):
//   .../status/NNN    answers status NNN (body "status NNN", none for 1xx/204/304/HEAD)
//   .../big/N         answers N bytes, byte i = i % 251, written with several res.write() of 16 KiB;
//                     header x-body-sha256 = sha256 of the whole body
//   .../slow/MS       answers after MS ms with the GET echo document
//   POST|PUT|PATCH    echoes the request body; x-body-sha256 / x-body-length describe the received body,
//                     content-type is copied from the request
//   anything else     JSON {method, url, headers, bodyLength}
//
// Events:
//   {"event":"listening"}                          control channel open (again after each reconnect)
//   {"event":"control-close","code":N,"reason":..} control channel closed by the peer
//   {"event":"request","method":..,"url":..,"headers":{..},"bodyLength":N}   each request, once its body is read
//   {"event":"error","message":..,"status":N?}     control-channel error (exit 1 unless exitOnError is false);
//                                                  crashes inside hyco-https (e.g. on an "accept") also land here
// SIGTERM/SIGINT: server.close(), exit 0.

const common = require('./lib/common');

common.installCrashHandlers();
const params = common.readParams();
const https = require('hyco-https');

const uri = common.requireString(params, 'uri');
const exitOnError = params.exitOnError === undefined ? true : !!params.exitOnError;
const token = common.tokenFactory(params, https.createRelayToken, uri);

const CHUNK = 16 * 1024;

function sendJson(res, status, obj) {
  const body = Buffer.from(JSON.stringify(obj));
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(body);
}

function handle(req, res, body) {
  const url = req.url || '/';
  const path = url.split('?')[0];
  const noBody = req.method === 'HEAD';
  let m;

  if ((m = /\/status\/(\d{3})$/.exec(path))) {
    const status = Number(m[1]);
    res.writeHead(status, { 'content-type': 'text/plain' });
    // end(chunk) would force "body": true even for 204/304 in hyco-https, so only pass a chunk when allowed.
    if (noBody || status < 200 || status === 204 || status === 304) res.end();
    else res.end('status ' + status);
    return;
  }

  if ((m = /\/big\/(\d+)$/.exec(path))) {
    const n = Number(m[1]);
    const data = common.patternBytes(n);
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'x-body-sha256': common.sha256Hex(data),
      'x-body-length': String(n),
    });
    if (noBody) {
      res.end();
      return;
    }
    for (let off = 0; off < n; off += CHUNK) res.write(data.subarray(off, Math.min(off + CHUNK, n)));
    res.end();
    return;
  }

  if ((m = /\/slow\/(\d+)$/.exec(path))) {
    const ms = Number(m[1]);
    setTimeout(() => {
      sendJson(res, 200, { method: req.method, url, headers: req.headers, bodyLength: body.length, sleptMs: ms });
    }, ms);
    return;
  }

  if (req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH') {
    const headers = {
      'content-type': req.headers['content-type'] || 'application/octet-stream',
      'x-body-sha256': common.sha256Hex(body),
      'x-body-length': String(body.length),
    };
    res.writeHead(200, headers);
    if (body.length) res.end(body);
    else res.end();
    return;
  }

  if (noBody) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end();
    return;
  }
  sendJson(res, 200, { method: req.method, url, headers: req.headers, bodyLength: body.length });
}

function onRequest(req, res) {
  const chunks = [];
  req.on('data', (c) => chunks.push(typeof c === 'string' ? Buffer.from(c) : c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    common.emit('request', { method: req.method, url: req.url, headers: req.headers, bodyLength: body.length });
    try {
      handle(req, res, body);
    } catch (e) {
      common.emit('error', { message: 'handler failed: ' + common.errorMessage(e), fatal: false });
      try {
        sendJson(res, 500, { error: common.errorMessage(e) });
      } catch (_) {
        // response already started; nothing more to do
      }
    }
  });
}

const server = https.createRelayedServer({ server: uri, token: () => token() || '' }, onRequest);

server.on('listening', () => {
  const channel = server.controlChannel;
  channel.on('close', (code, reason) => {
    if (!server.closeRequested) {
      common.emit('control-close', { code: code === undefined ? null : code, reason: reason ? String(reason) : '' });
    }
  });
  common.emit('listening');
});

server.on('error', (err) => {
  if (exitOnError) common.fail(1, err);
  else {
    const message = common.errorMessage(err);
    common.emit('error', { message, status: common.statusFromMessage(message), fatal: false });
  }
});

common.onTerminate((done) => {
  server.once('close', done);
  server.close(() => {});
}, 2000);

server.listen();
