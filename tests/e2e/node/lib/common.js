'use strict';
// Shared helpers for the hyco-* driver scripts (no dependencies beyond Node core).
//
// Protocol with the Python side (tests/harness/node.py):
//   * parameters: one JSON object in process.argv[2]; "@/path/to/file.json" reads it from a file instead
//     (a single argv string is limited to 128 KiB on Linux);
//   * output: exactly one JSON object per line on stdout, always with an "event" key;
//   * failures: an {"event":"error","message":...} line and a non-zero exit code.

const crypto = require('node:crypto');
const fs = require('node:fs');

let exiting = false;

// Once exit() has begun nothing more is printed: the line that caused the exit stays the last one.
function emit(event, fields) {
  if (exiting) return;
  const obj = Object.assign({ event }, fields || {});
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// A bad parameter: thrown, so the script stops right there; reported as an error event with exit code 64.
class UsageError extends Error {}

function usage(message) {
  throw new UsageError(message);
}

function errorMessage(err) {
  if (err === null || err === undefined) return String(err);
  if (typeof err === 'string') return err;
  if (err instanceof Error) return err.message || String(err);
  if (typeof err === 'object' && err.message !== undefined) return String(err.message);
  try {
    return JSON.stringify(err);
  } catch (_) {
    return String(err);
  }
}

// Parses "unexpected server response (NNN)" (ws@1) / "Unexpected server response: NNN" (ws@6).
function statusFromMessage(message) {
  const m = /unexpected server response[^0-9]*(\d{3})/i.exec(message);
  return m ? Number(m[1]) : undefined;
}

// process.exit() drops whatever stdout still holds when stdout is a pipe (seen: a 300 kB line cut at
// 64 KiB), so exit only once everything written so far is flushed; a timer bounds a stuck reader.
function exit(code) {
  if (exiting) return;
  exiting = true;
  process.exitCode = code;
  setTimeout(() => process.exit(code), 5000).unref();
  process.stdout.write('', () => process.exit(code));
}

function fail(code, err, extra) {
  const message = errorMessage(err);
  const fields = Object.assign({ message }, extra || {});
  const status = statusFromMessage(message);
  if (status !== undefined && fields.status === undefined) fields.status = status;
  if (err instanceof Error && err.stack && fields.stack === undefined) fields.stack = err.stack;
  emit('error', fields);
  exit(code);
}

function readParams() {
  const raw = process.argv[2];
  if (raw === undefined) usage('usage: node ' + process.argv[1] + " '<json params>' | @params.json");
  let params;
  try {
    params = JSON.parse(raw.startsWith('@') ? fs.readFileSync(raw.slice(1), 'utf8') : raw);
  } catch (e) {
    usage('bad parameters: ' + errorMessage(e));
  }
  if (params === null || typeof params !== 'object' || Array.isArray(params)) {
    usage('bad parameters: not a JSON object');
  }
  return params;
}

function requireString(params, name) {
  if (typeof params[name] !== 'string' || params[name] === '') {
    usage('parameter "' + name + '" must be a non-empty string');
  }
  return params[name];
}

// Token selection shared by all scripts:
//   "token" present (string)  -> used verbatim (e.g. a deliberately bad token);
//   "token": null             -> no token at all;
//   otherwise                 -> createRelayToken(uri, keyName, key, expirationSeconds) (the hyco way).
function tokenFactory(params, createRelayToken, uri) {
  if (Object.prototype.hasOwnProperty.call(params, 'token')) {
    const t = params.token;
    if (t !== null && typeof t !== 'string') usage('parameter "token" must be a string or null');
    return () => t;
  }
  const keyName = requireString(params, 'keyName');
  const key = requireString(params, 'key');
  const secs = params.expirationSeconds;
  return () => createRelayToken(uri, keyName, key, secs);
}

// Deterministic test payload: byte i is (i % 251). 251 is prime, so misordered 16 KiB chunks are detectable.
function patternBytes(n, offset) {
  const base = offset || 0;
  const buf = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) buf[i] = (base + i) % 251;
  return buf;
}

// Deterministic text payload (ASCII letters/digits, same period as patternBytes).
const TEXT_ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
function patternText(n) {
  let s = '';
  for (let i = 0; i < n; i++) s += TEXT_ALPHABET[(i % 251) % TEXT_ALPHABET.length];
  return s;
}

function sha256Hex(data) {
  return crypto.createHash('sha256').update(data).digest('hex');
}

// Exit quietly on SIGTERM/SIGINT after running `shutdown(done)` (bounded by graceMs).
function onTerminate(shutdown, graceMs) {
  const handler = (signal) => {
    emit('terminating', { signal });
    const timer = setTimeout(() => exit(0), graceMs || 2000);
    timer.unref();
    try {
      shutdown(() => exit(0));
    } catch (e) {
      emit('error', { message: 'shutdown failed: ' + errorMessage(e) });
      exit(0);
    }
  };
  process.once('SIGTERM', handler);
  process.once('SIGINT', handler);
}

// Anything the hyco libraries throw from socket callbacks (e.g. JSON.parse of a non-JSON control frame, hyco-https's
// "Extensions is not defined" on an accept message) ends up here: report it as an error event and exit 1.
// A UsageError thrown while the script sets up lands here too (exit 64); anything else exits `code`.
function installCrashHandlers(code) {
  const exitCode = code === undefined ? 1 : code;
  process.on('uncaughtException', (err) => {
    if (err instanceof UsageError) fail(64, err.message);
    else fail(exitCode, err, { uncaught: true });
  });
  process.on('unhandledRejection', (err) => fail(exitCode, err, { uncaught: true }));
  // The reader went away (EPIPE): nobody can see further events.
  process.stdout.on('error', () => process.exit(process.exitCode || 1));
}

module.exports = {
  emit,
  errorMessage,
  exit,
  fail,
  installCrashHandlers,
  onTerminate,
  patternBytes,
  patternText,
  readParams,
  requireString,
  sha256Hex,
  statusFromMessage,
  tokenFactory,
  usage,
  UsageError,
};
