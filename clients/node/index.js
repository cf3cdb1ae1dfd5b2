"use strict";
// governor-client: enqueue governor jobs from Node (the producer side of governor's wire API).
//   const { Client } = require("governor-client");
//   const c = Client.fromUrl("redis://127.0.0.1:6379/0", { prefix: "governor" });
const { Client, NotReplicated, GovernorUnavailable, PROTOCOL, LIBRARY } = require("./lib/client");
const { ValidationError } = require("./lib/prepare");
const { partitionOf } = require("./lib/keys");
const { parseDuration } = require("./lib/units");

module.exports = {
  Client, ValidationError, NotReplicated, GovernorUnavailable, partitionOf, parseDuration, PROTOCOL, LIBRARY,
};
