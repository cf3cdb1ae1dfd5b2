"use strict";
// A job checked and written as governor's Python Client does it (governor/protocol/client.py,
// Client._prepare): the same rules in the same order, the same messages, and the same bytes
// for its payload and record. Nothing here touches Redis.

const crypto = require("crypto");
const { isInt, isDict, repr, falsy, compare, dumps, jsonString, floatRepr, JSONError } = require("./python");
const { parseDuration } = require("./units");

const DEFAULT_PRIORITY = 50;
const MAX_PRIORITY = 100;
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
const MAX_DELAY = 3650 * 86400.0;
const MAX_TIMEOUT = 365 * 86400.0;
const MAX_RETRIES = 1000000;
const MAX_PARTITIONS = 1024;
const JOB_ID = /^[\x21-\x7e]{1,200}$/;
const JOB_ID_RULE = "1-200 printable ASCII characters without spaces (letters, digits, punctuation)";
const QUEUE_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const QUEUE_NAME_RULE = "queue names are 1-64 letters, digits or _.- (no ':', which would name a partition)";
// a job's fields: Python's names are max_retries and job_id; here they are spelt as JS spells them
const FIELDS = { handler: "handler", args: "args", kwargs: "kwargs", priority: "priority", delay: "delay",
  timeout: "timeout", maxRetries: "max_retries", jobId: "job_id", unique: "unique", key: "key" };

/** Invalid input: an Error whose message is the Python Client's. */
class ValidationError extends Error {
  constructor(message) {
    super(message);
    this.name = "ValidationError";
  }
}

function checkQueueName(queue) {
  if (!(typeof queue === "string" && QUEUE_NAME.test(queue))) {
    throw new ValidationError(`bad queue name ${repr(queue)}: ${QUEUE_NAME_RULE}`);
  }
}

/** Python's f"{x:g}" for the bounds below (6 significant digits, no trailing zeros). */
function g(x) {
  return String(Number(x.toPrecision(6)));
}

function seconds(value, what, low, high) {
  if (value === null || value === undefined) return null;
  let s;
  try {
    s = parseDuration(value);
  } catch (err) {
    throw new ValidationError(`${what}: ${err.message}`);
  }
  if (!(low <= s && s <= high)) {
    throw new ValidationError(`${what} must be from ${g(low)}s to ${g(high / 86400)} days, got ${repr(value)}`);
  }
  return s;
}

function get(spec, name) {
  return Object.prototype.hasOwnProperty.call(spec, name) ? spec[name] : undefined;
}

/**
 * One job, checked: {id, payload, meta, delayMs, key}, the payload and record (meta) as
 * the JSON text Python writes. Throws ValidationError with the Python Client's message.
 */
function prepare(queue, spec, maxPayload) {
  if (!isDict(spec)) {
    throw new ValidationError("a job is an object of handler, args, kwargs, priority, delay, timeout, maxRetries, " +
      `jobId, unique, key; got ${repr(spec)}`);
  }
  const unknown = Object.keys(spec).filter((k) => !Object.prototype.hasOwnProperty.call(FIELDS, k));
  if (unknown.length) throw new ValidationError(`unknown job field(s): ${unknown.sort(compare).join(", ")}`);
  const handler = get(spec, "handler");
  if (typeof handler !== "string" || !handler.includes(":")) {
    throw new ValidationError(`handler must be 'module:function', got ${repr(handler)}`);
  }
  const args = falsy(get(spec, "args")) ? [] : spec.args;
  const kwargs = falsy(get(spec, "kwargs")) ? {} : spec.kwargs;
  if (!Array.isArray(args) || !isDict(kwargs)) throw new ValidationError("args must be a list and kwargs a mapping");
  let priority = get(spec, "priority");
  if (priority === null || priority === undefined) priority = DEFAULT_PRIORITY;
  if (!isInt(priority) || !(priority >= 0 && priority <= MAX_PRIORITY)) {
    throw new ValidationError(`priority must be an integer 0-${MAX_PRIORITY} (lower runs first), ` +
      `got ${repr(priority)}`);
  }
  let maxRetries = get(spec, "maxRetries");
  if (maxRetries === undefined) maxRetries = null;
  if (maxRetries !== null && (!isInt(maxRetries) || !(maxRetries >= 0 && maxRetries <= MAX_RETRIES))) {
    throw new ValidationError(`max_retries must be an integer from 0 to ${MAX_RETRIES}, got ${repr(maxRetries)}`);
  }
  const delay = seconds(get(spec, "delay"), "delay", 0.0, MAX_DELAY) || 0.0;
  const timeout = seconds(get(spec, "timeout"), "timeout", 0.001, MAX_TIMEOUT);
  const jobId = falsy(get(spec, "jobId")) ? crypto.randomUUID().replace(/-/g, "") : spec.jobId;
  if (typeof jobId !== "string" || !JOB_ID.test(jobId)) {
    throw new ValidationError(`job_id must be ${JOB_ID_RULE}, got ${repr(jobId)}`);
  }
  let unique = get(spec, "unique");
  if (unique === undefined) unique = null;
  if (unique !== null && (typeof unique !== "string" || !JOB_ID.test(unique))) {
    throw new ValidationError(`unique must be ${JOB_ID_RULE}, got ${repr(unique)}`);
  }
  let key = get(spec, "key");
  if (key === undefined) key = null;
  if (key !== null && (typeof key !== "string" || !JOB_ID.test(key))) {
    throw new ValidationError(`key must be ${JOB_ID_RULE}, got ${repr(key)}`);
  }
  let payload;
  try {
    payload = dumps({ handler, args, kwargs });
  } catch (err) {
    if (!(err instanceof JSONError)) throw err;
    throw new ValidationError(`job arguments must be JSON-serialisable: ${err.message}`);
  }
  if (payload.length > maxPayload) {
    throw new ValidationError(`job payload is ${payload.length} bytes, over the limit of ${maxPayload}`);
  }
  // the record as Python writes it: its fields in this order, the timeout a float ("120.0")
  let meta = `{"id":${jsonString(jobId)},"queue":${jsonString(queue)},"handler":${jsonString(handler)}`;
  meta += `,"priority":${priority}`;
  if (maxRetries !== null) meta += `,"max_retries":${maxRetries}`;
  if (timeout !== null) meta += `,"timeout":${floatRepr(timeout)}`;
  if (unique !== null) meta += `,"unique":${jsonString(unique)}`;
  if (key !== null) meta += `,"key":${jsonString(key)}`;
  meta += "}";
  return { id: jobId, payload, meta, delayMs: Math.trunc(delay * 1000), key };
}

module.exports = {
  prepare, checkQueueName, ValidationError, DEFAULT_PRIORITY, MAX_PRIORITY, DEFAULT_MAX_PAYLOAD, MAX_DELAY,
  MAX_TIMEOUT, MAX_RETRIES, MAX_PARTITIONS, JOB_ID_RULE, QUEUE_NAME_RULE,
};
