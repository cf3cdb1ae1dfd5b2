"use strict";
// governor's producer Client for Node, over the `redis` npm client (v4 and later): enqueue one
// job or many, read a job's record and a queue's counts. It speaks governor's wire API, the
// Redis function library governor_v<PROTOCOL> that every governor master loads at its start
// (docs/protocol.md), with the Python Client's rules, messages and bytes
// (governor/protocol/client.py, client_base.py, keys.py, records.py).

const { isDict, repr, compare } = require("./python");
const { parseDuration } = require("./units");
const { QueueKeys, partitionOf } = require("./keys");
const { loads, record, partitionCount } = require("./records");
const {
  prepare, checkQueueName, ValidationError, DEFAULT_MAX_PAYLOAD, MAX_PARTITIONS,
} = require("./prepare");

const PROTOCOL = 1; // governor's wire protocol (governor/protocol/library.py PROTOCOL)
const LIBRARY = `governor_v${PROTOCOL}`;
const BULK_CHUNK = 1000; // jobs per function call; more go as several calls in one MULTI/EXEC
const MAX_QUEUES_READ = 1000; // registry entries one read looks at (any client can add names)
const MAX_NAME_BYTES = 256; // a longer registered name is no queue's
const MAX_REGISTRY_BYTES = 1 << 20; // a registry bigger than this (MEMORY USAGE) is not read
const STATES = ["waiting", "delayed", "active", "dead", "done"];
const STAT_FIELDS = ["queued", "enqueued", "retried", "done", "dead", "throttled", "throttled_jobs"];

const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

/** The jobs are queued on the primary, but fewer replicas than asked confirmed them in time:
 *  a failover now could lose them. ``ids``: re-sending the same jobs with these ids is safe. */
class NotReplicated extends Error {
  constructor(what, acked, wanted, timeoutMs, ids = []) {
    super(`${what}, but only ${acked} of ${wanted} replica(s) confirmed it within ${timeoutMs}ms: ` +
      "a failover now could lose it");
    this.name = "NotReplicated";
    this.acked = acked;
    this.wanted = wanted;
    this.ids = [...ids];
  }
}

/** Redis cannot run governor's functions: the library is not loaded (code GOVERNOR_NO_LIBRARY),
 *  or the server has no functions at all (Redis < 7: code GOVERNOR_NO_FUNCTIONS). */
class GovernorUnavailable extends Error {
  constructor(message, code, cause) {
    super(message);
    this.name = "GovernorUnavailable";
    this.code = code;
    this.cause = cause;
  }
}

/** Redis's error without the arguments it echoes ("..., with args beginning with: ..."). */
function said(err) {
  return String(err.message).split(", with args beginning with")[0].trim();
}

function noLibrary(cause) {
  return new GovernorUnavailable(
    `governor's function library ${LIBRARY} is not loaded on this Redis (${said(cause)}): ` +
    "a governor master loads it at its start; start one on this Redis first " +
    "(this client cannot load it: the library is built from governor's Python package; " +
    "a master in script mode, GOVERNOR_SCRIPTS=1, does not load it)",
    "GOVERNOR_NO_LIBRARY", cause);
}

function noFunctions(cause) {
  return new GovernorUnavailable(
    `this Redis has no functions (${said(cause)}): governor-client needs Redis 7 or later; ` +
    "governor's script mode (EVALSHA, for Redis < 7) serves Python producers only (governor.Client)",
    "GOVERNOR_NO_FUNCTIONS", cause);
}

/** An error Redis answered a function call with, made plain when it is about the library. */
function wireError(err) {
  const text = String((err && err.message) || err).toLowerCase();
  if (text.includes("function not found")) return noLibrary(err);
  if (text.includes("unknown command") && text.includes("fcall")) return noFunctions(err);
  return err;
}

function command(call, readOnly = false) {
  return [readOnly ? "FCALL_RO" : "FCALL", `${LIBRARY}_${call.fn}`, String(call.keys.length),
    ...call.keys, ...call.args.map(String)];
}

/** A reconnect that gives up after about 1.5 s: the pending calls fail then (instead of waiting
 *  for Redis forever), and the next call connects again. */
function reconnectStrategy(retries, cause) {
  if (retries >= 5) return cause instanceof Error ? cause : new Error("Redis is unreachable");
  return Math.min(50 * 2 ** retries, 1000);
}

/** createClient's options for a URL governor's Python Client also takes (redis://, rediss://,
 *  unix://path?db=N); the URL is never quoted in an error (it may hold a password). */
function connectOptions(url, extra = {}) {
  if (typeof url !== "string") throw new TypeError("the Redis URL must be a string");
  const scheme = url.split("://", 1)[0].toLowerCase();
  const socket = { reconnectStrategy, ...(extra.socket || {}) };
  if (scheme === "redis" || scheme === "rediss") return { ...extra, url, socket };
  if (scheme === "unix") {
    let u;
    try {
      u = new URL(url);
    } catch (err) {
      throw new TypeError("a unix:// URL names the socket: unix:///run/redis/redis.sock[?db=N]");
    }
    const db = u.searchParams.get("db");
    const out = { ...extra, socket: { ...socket, path: decodeURIComponent(u.pathname) } };
    if (db !== null) out.database = Number(db);
    if (u.username) out.username = decodeURIComponent(u.username);
    if (u.password) out.password = decodeURIComponent(u.password);
    else if (u.searchParams.get("password") !== null) out.password = u.searchParams.get("password");
    return out;
  }
  throw new TypeError(`governor-client connects to redis://, rediss:// or unix:// URLs, not ${scheme}:// ` +
    "(Sentinel and Cluster are not supported by the Node client: give it the primary's address)");
}

class Client {
  /**
   * ``redis``: a node-redis client (connected or not: the first call connects it).
   * ``options``: ``prefix`` (default "governor"), ``maxPayload`` (bytes, default 1 MiB),
   * ``wait`` ({replicas, timeout}: every enqueue waits for that many replicas, timeout in seconds
   * or a duration such as "100ms"; fewer throw NotReplicated after the jobs are queued), and
   * ``partitions`` ({queue: N}, the config's ``partitions:``: this client registers the count as a
   * master would, so keyed jobs can be queued before any master has started the queue).
   */
  constructor(redis, options = {}) {
    const { prefix = "governor", maxPayload = DEFAULT_MAX_PAYLOAD, wait = null, partitions = null } = options;
    if (typeof prefix !== "string" || !prefix) throw new TypeError(`prefix must be a string, got ${repr(prefix)}`);
    if (!Number.isSafeInteger(maxPayload) || maxPayload < 0) {
      throw new TypeError(`maxPayload must be a number of bytes, got ${repr(maxPayload)}`);
    }
    this.redis = redis;
    this.prefix = prefix;
    this.maxPayload = maxPayload;
    this.wait = { replicas: 0, timeout: 0 };
    if (wait) {
      const replicas = wait.replicas === undefined ? 1 : wait.replicas;
      if (!Number.isSafeInteger(replicas) || replicas < 0) {
        throw new TypeError(`wait.replicas must be a count of replicas, got ${repr(replicas)}`);
      }
      this.wait = { replicas, timeout: parseDuration(wait.timeout === undefined ? 0.1 : wait.timeout) };
    }
    this._owned = false; // whether close() closes the connection (fromUrl made it)
    this._connecting = null;
    this._closed = false;
    this._registered = new Set();
    this._partitions = new Map(); // queue -> its partition count (it never changes)
    this._told = new Map();
    for (const [queue, n] of Object.entries(partitions || {})) {
      checkQueueName(queue);
      if (!(Number.isInteger(n) && n >= 1 && n <= MAX_PARTITIONS)) {
        throw new ValidationError(`the partition count of queue ${repr(queue)} must be an integer from 1 to ` +
          `${MAX_PARTITIONS}, got ${repr(n)}`);
      }
      this._told.set(queue, n);
    }
  }

  /** A Client on its own connection to ``url`` (redis://[user:password@]host:port/db, rediss://,
   *  unix:///path?db=N); ``options.redis``: more of createClient's options (e.g. socket.tls). */
  static fromUrl(url, options = {}) {
    const { redis: redisOptions, ...rest } = options;
    const { createClient } = require("redis");
    const connection = createClient(connectOptions(url, redisOptions));
    const client = new Client(connection, rest);
    client._owned = true;
    connection.on("error", () => {}); // (reported by the calls that fail for it, not as an event)
    return client;
  }

  keys(queue) {
    return new QueueKeys(this.prefix, queue);
  }

  async _ready() {
    if (this._closed) throw new Error("governor-client: this Client is closed");
    if (this.redis.isOpen) return;
    if (!this._connecting) {
      this._connecting = Promise.resolve(this.redis.connect()).finally(() => { this._connecting = null; });
    }
    await this._connecting;
  }

  _send(args) {
    return this.redis.sendCommand(args.map(String));
  }

  /** Runs function calls in one round trip (``atomic``: as one MULTI/EXEC); the replies, or the
   *  first error. */
  async _run(calls, atomic = false) {
    if (atomic && calls.length > 1) {
      const multi = this.redis.multi();
      for (const c of calls) multi.addCommand(command(c));
      try {
        return await multi.exec();
      } catch (err) {
        const first = (Array.isArray(err.replies) && err.replies.find((r) => r instanceof Error)) || err;
        if (String(first.message).startsWith("EXECABORT")) await this._checkFunctions();
        throw wireError(first);
      }
    }
    const settled = await Promise.allSettled(calls.map((c) => this.redis.sendCommand(command(c))));
    const failed = settled.find((s) => s.status === "rejected");
    if (failed) throw wireError(failed.reason);
    return settled.map((s) => s.value);
  }

  /** A transaction Redis refused whole: was it for want of FCALL (Redis < 7)? */
  async _checkFunctions() {
    const info = await this._send(["COMMAND", "INFO", "FCALL"]);
    if (!Array.isArray(info) || info[0] === null || info[0] === undefined) {
      throw noFunctions(new Error("ERR unknown command 'FCALL'"));
    }
  }

  /**
   * Queues one job and returns its id; an existing ``jobId`` is not queued twice.
   * ``options``: args (a list), kwargs (an object), priority (0-100, lower runs first; default 50),
   * delay and timeout (seconds, or "30s", "2m"...), maxRetries, jobId, unique (while a job of this
   * queue holding that key is waiting, delayed or active, nothing is queued and that job's id is
   * returned), key (the ordering key of a partitioned queue: jobs with the same key run one at a
   * time, in enqueue order, fleet-wide).
   */
  async enqueue(queue, handler, options = {}) {
    if (!isDict(options)) throw new ValidationError(`enqueue's options must be an object, got ${repr(options)}`);
    if (has(options, "handler")) {
      throw new ValidationError("enqueue takes the handler as its second argument, not among its options");
    }
    return (await this.enqueueMany(queue, [{ ...options, handler }]))[0];
  }

  /**
   * Queues many jobs in one round trip, all or none (each an object with ``handler`` and the
   * options of enqueue). Returns, per job, the id of the job that holds it: its own, or, when its
   * ``unique`` key is held (by a live job, or by an earlier job of this batch), the holder's, and
   * that job is not queued. Every job is checked before anything is sent: a bad one throws an
   * Error naming it (the Python Client's message) and writes nothing. Over 1,000 jobs go as
   * several function calls in one MULTI/EXEC.
   */
  async enqueueMany(queue, jobs) {
    checkQueueName(queue);
    if (jobs === null || jobs === undefined || typeof jobs === "string"
        || typeof jobs[Symbol.iterator] !== "function") {
      throw new ValidationError(`jobs must be a list of jobs, got ${repr(jobs)}`);
    }
    const keys = this.keys(queue);
    const prepared = [];
    let i = 0;
    for (const spec of jobs) {
      try {
        prepared.push(prepare(queue, spec, this.maxPayload));
      } catch (err) {
        if (!(err instanceof ValidationError) || !i) throw err;
        throw new ValidationError(`job ${i}: ${err.message}`);
      }
      i += 1;
    }
    if (!prepared.length) return [];
    await this._ready();
    let replies;
    if (prepared.some((p) => p.key !== null)) {
      await this._registerPartitions(queue);
      replies = await this._enqueueKeyed(queue, prepared);
    } else {
      await this._register(queue);
      await this._registerPartitions(queue);
      const calls = [];
      for (let c = 0; c < prepared.length; c += BULK_CHUNK) calls.push(keys.enqueue(prepared.slice(c, c + BULK_CHUNK)));
      try {
        replies = (await this._run(calls, true)).flat();
      } catch (err) {
        if (!String(err.message).includes("the queue is partitioned")) throw err;
        throw new ValidationError(`queue ${repr(queue)} is partitioned: every job needs a key ` +
          "(enqueue(..., key=...), or --key)");
      }
    }
    // 1 created, 0 the id existed, or the id of the job that holds the unique key
    const out = prepared.map((p, j) => (typeof replies[j] === "string" ? replies[j] : p.id));
    const { replicas, timeout } = this.wait;
    if (replicas) {
      const timeoutMs = Math.max(1, Math.trunc(timeout * 1000));
      const acked = Number(await this._send(["WAIT", replicas, timeoutMs]));
      if (acked < replicas) {
        throw new NotReplicated(`${out.length} job(s) queued on the primary`, acked, replicas, timeoutMs, out);
      }
    }
    return out;
  }

  /** Each job to its key's partition, then a hint to each partition's holder. Atomic as a whole. */
  async _enqueueKeyed(queue, prepared) {
    const n = await this.partitions(queue);
    if (n === null) {
      throw new ValidationError(`queue ${repr(queue)} is not partitioned: a job's key orders it only on a ` +
        "queue with partitions: N in its config (and a master has started it)");
    }
    const groups = new Map();
    prepared.forEach((p, i) => {
      if (p.key === null) {
        throw new ValidationError(`job ${i}: queue ${repr(queue)} is partitioned: every job needs a key`);
      }
      const part = partitionOf(p.key, n);
      if (!groups.has(part)) groups.set(part, []);
      groups.get(part).push(i);
    });
    await this._register(queue);
    const keys = this.keys(queue);
    const calls = [];
    const order = [];
    for (const [part, idx] of groups) {
      for (let c = 0; c < idx.length; c += BULK_CHUNK) {
        const chunk = idx.slice(c, c + BULK_CHUNK);
        calls.push(keys.part(part).enqueue(chunk.map((i) => prepared[i])));
        order.push(chunk);
      }
    }
    // a job queued behind its key's head is no job for an idle worker: one hint per key at most
    const hint = keys.hint([...groups].map(([part, idx]) => [part, new Set(idx.map((i) => prepared[i].key)).size]));
    let results;
    if (calls.length === 1) {
      results = (await this._run([calls[0], hint])).slice(0, 1);
    } else {
      results = await this._run(calls, true);
      await this._run([hint]);
    }
    const replies = new Array(prepared.length);
    order.forEach((chunk, c) => chunk.forEach((i, j) => { replies[i] = results[c][j]; }));
    return replies;
  }

  /** The queue's partition count, as its masters registered it; null: not partitioned. */
  async partitions(queue) {
    if (this._partitions.has(queue)) return this._partitions.get(queue);
    await this._ready();
    const raw = await this._send(["GET", this.keys(queue).partitionsKey]);
    if (raw === null || raw === undefined) return null;
    const n = partitionCount(queue, raw);
    this._partitions.set(queue, n);
    return n;
  }

  /** Where the queue's jobs live: its own keys, or each of its partitions' keys. */
  async lanes(queue) {
    const n = await this.partitions(queue);
    const keys = this.keys(queue);
    return n === null ? [keys] : Array.from({ length: n }, (_, i) => keys.part(i));
  }

  /** Once per client and queue it was told the partition count of: registers it as a master
   *  would (records.py register_partitions), or refuses the count Redis holds if it differs. */
  async _registerPartitions(queue) {
    const told = this._told.get(queue);
    if (told === undefined || this._partitions.has(queue)) return;
    const home = this.keys(queue).home();
    const [, raw, paused] = await Promise.all([
      this._send(["SET", home.partitionsKey, told, "NX"]),
      this._send(["GET", home.partitionsKey]),
      this._send(["EXISTS", home.paused]),
    ]);
    const stored = partitionCount(queue, raw);
    if (Number(paused) && stored === told) {
      await Promise.all(Array.from({ length: told }, (_, i) => this._send(["SET", home.part(i).paused, "1", "NX"])));
    }
    if (stored !== told) {
      throw new ValidationError(`queue ${repr(queue)} has ${stored} partitions in Redis, but this client was told ` +
        `${told} (the config's partitions:): a key's jobs would go to another partition than its earlier ones; ` +
        `fix the config, or drain the queue and delete ${home.partitionsKey}`);
    }
    this._partitions.set(queue, stored);
  }

  /** Once per client and queue: lets job(id) and governor's status find the queue. */
  async _register(queue) {
    if (!this._registered.has(queue)) {
      await this._send(["SADD", `${this.prefix}:queues`, queue]);
      this._registered.add(queue);
    }
  }

  /** The queues clients have enqueued to under this prefix (at most 1,000 of them, read in
   *  bounded pieces: any client can add names, of any length). */
  async queues(limit = MAX_QUEUES_READ) {
    await this._ready();
    const key = `${this.prefix}:queues`;
    let size = null;
    try {
      size = await this._send(["MEMORY", "USAGE", key, "SAMPLES", "0"]);
    } catch (err) {
      size = null; // (MEMORY disabled on this server: names are filtered as read)
    }
    if (size !== null && size !== undefined && Number(size) > MAX_REGISTRY_BYTES) {
      throw new Error(`the queue registry ${key} holds ${size} bytes, more than ${MAX_REGISTRY_BYTES} ` +
        `(names longer than ${MAX_NAME_BYTES} bytes were added to it); not read: remove them (SSCAN and SREM)`);
    }
    const names = new Set();
    let seen = 0;
    let cursor = "0";
    for (;;) { // (filtered in Redis: a name of a megabyte never crosses the wire)
      const call = { fn: "registry", keys: [key], args: [cursor, Math.min(limit - seen, 500), MAX_NAME_BYTES] };
      let reply;
      try {
        reply = await this.redis.sendCommand(command(call, true));
      } catch (err) {
        throw wireError(err);
      }
      cursor = String(reply[0]);
      const n = Number(reply[1]);
      const got = reply.slice(2, 2 + limit - seen);
      got.forEach((name, i) => {
        if (i < n && typeof name === "string" && !name.includes("\ufffd")) names.add(name); // (not UTF-8: no queue's)
      });
      seen += Math.min(reply.length - 2, limit - seen);
      if (cursor === "0" || seen >= limit) break;
    }
    return [...names].sort(compare);
  }

  /** The job's record (state, attempts, errors, result, args, kwargs...), as the Python Client's
   *  job() returns it, or null if unknown or expired. ``queue``: look there only. */
  async job(jobId, queue = null) {
    await this._ready();
    const queues = queue ? [queue] : await this.queues();
    const laneLists = await Promise.all(queues.map((q) => this.lanes(q)));
    const lanes = [];
    queues.forEach((q, i) => laneLists[i].forEach((lane) => lanes.push([q, lane])));
    const id = String(jobId);
    const replies = await Promise.all(lanes.flatMap(([, lane]) => [
      this._send(["HGET", lane.meta, id]), this._send(["HGET", lane.data, id])]));
    for (let i = 0; i < lanes.length; i++) {
      const meta = replies[2 * i];
      if (meta !== null && meta !== undefined) return record(lanes[i][0], id, String(meta), replies[2 * i + 1]);
    }
    return null;
  }

  /** How many jobs are in each state (a partitioned queue's summed over its partitions; waiting
   *  includes jobs queued behind their key's head), the lifetime counters, and ``paused``. */
  async counts(queue) {
    await this._ready();
    const lanes = await this.lanes(queue);
    const replies = await Promise.all(lanes.flatMap((k) => [
      ...STATES.map((s) => this._send(["ZCARD", k[s]])),
      this._send(["HMGET", k.stats, ...STAT_FIELDS]),
      this._send(["EXISTS", k.paused]),
    ]));
    const out = Object.fromEntries(STATES.map((s) => [s, 0]));
    const stats = Object.fromEntries(STAT_FIELDS.map((f) => [f, 0]));
    let paused = false;
    lanes.forEach((_, i) => {
      const lane = replies.slice(7 * i, 7 * i + 7);
      STATES.forEach((s, j) => { out[s] += Number(lane[j]); });
      STAT_FIELDS.forEach((f, j) => {
        const v = lane[5][j];
        if (v !== null && v !== undefined) stats[f] += Math.trunc(Number(v));
      });
      paused = paused || Boolean(Number(lane[6]));
    });
    out.waiting += Math.max(stats.queued, 0);
    out.paused = paused;
    out.enqueued_total = stats.enqueued;
    out.retried_total = stats.retried;
    out.done_total = stats.done;
    out.dead_total = stats.dead;
    out.throttled_total = stats.throttled; // reserves a rate limit made wait
    out.throttled_jobs_total = stats.throttled_jobs; // jobs put back by governor.limit()
    if (lanes.length > 1) out.partitions = lanes.length;
    return out;
  }

  /** Closes the connection fromUrl opened (a client passed to the constructor is the caller's). */
  async close() {
    if (!this._owned) return;
    this._closed = true;
    if (!this.redis.isOpen) return;
    await (typeof this.redis.close === "function" ? this.redis.close() : this.redis.quit());
  }
}

module.exports = { Client, NotReplicated, GovernorUnavailable, PROTOCOL, LIBRARY, connectOptions, loads };
