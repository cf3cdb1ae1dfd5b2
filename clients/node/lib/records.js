"use strict";
// What Redis holds, read as untrusted (any client can write it), as governor/protocol/records.py
// and governor/untrusted.py read it: a job's record as users see it, a partition count.

const { isDict, str, repr } = require("./python");
const { ValidationError, MAX_PARTITIONS } = require("./prepare");

function finite(key, value) {
  if (typeof value === "number" && !Number.isFinite(value)) throw new Error("a number is out of range");
  return value;
}

/** JSON.parse that refuses numbers out of a double's range, naming what and why. */
function loads(raw, what) {
  if (typeof raw !== "string") throw new TypeError(`${what} is not text`);
  try {
    return JSON.parse(raw, finite);
  } catch (err) {
    if (err instanceof RangeError) throw new Error(`${what} is nested too deeply`);
    throw new Error(`${what} is not JSON (${err.message})`);
  }
}

const TIME_FIELDS = ["enqueued_at", "started_at", "finished_at", "due_at"];
const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

/** A job's record as a user reads it (records.py _record): times in seconds, the result and
 *  arguments decoded; one that does not decode is shown as such (a worker dead-letters it). */
function record(queue, jobId, meta, payload) {
  let rec;
  try {
    rec = loads(meta, "the job's record");
    if (!isDict(rec)) throw new Error("the job's record is not a JSON object");
  } catch (err) {
    rec = { id: jobId, queue, state: "unknown", malformed: err.message };
  }
  if (!has(rec, "id")) rec.id = jobId;
  if (has(rec, "result_json")) {
    const raw = rec.result_json;
    delete rec.result_json;
    try {
      rec.result = loads(raw, "the result");
    } catch (err) {
      rec.result_error = err.message;
    }
  }
  for (const name of TIME_FIELDS) {
    if (typeof rec[name] !== "number" || !has(rec, name)) delete rec[name];
    else rec[name] = rec[name] / 1000.0;
  }
  if (!Array.isArray(rec.errors)) rec.errors = [];
  rec.errors = rec.errors.map((e) => (isDict(e) ? e : { error: str(e) }));
  let body = {};
  try {
    body = payload ? loads(payload, "the payload") : {};
  } catch (err) {
    body = {};
  }
  rec.args = isDict(body) ? (has(body, "args") ? body.args : []) : [];
  rec.kwargs = isDict(body) ? (has(body, "kwargs") ? body.kwargs : {}) : {};
  return rec;
}

/** A partition-count key's value, checked: anything but 1-1024 is refused, never looped over. */
function partitionCount(queue, raw) {
  const text = String(raw);
  if (!(/^[0-9]{1,5}$/.test(text) && Number(text) >= 1 && Number(text) <= MAX_PARTITIONS)) {
    const shown = text.slice(0, 20).replace(/[^\x00-\x7f]/g, "\ufffd");
    throw new ValidationError(`queue ${repr(queue)}: its partition count in Redis is ${repr(shown)}` +
      `${text.length > 20 ? "..." : ""}, not from 1 to ${MAX_PARTITIONS}; not read`);
  }
  return Number(text);
}

module.exports = { loads, record, partitionCount };
