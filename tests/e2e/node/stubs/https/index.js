'use strict';
// Stub for the placeholder dependency 'https' of hyco-ws/hyco-https: re-export the core module.
module.exports = require('node:https');
