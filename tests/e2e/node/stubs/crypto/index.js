'use strict';
// Stub for the placeholder dependency 'crypto' of hyco-ws/hyco-https: re-export the core module.
module.exports = require('node:crypto');
