"use strict";
// governor-client against a real redis-server and a real `governor run` master that runs the
// jobs (test/nodetasks.py): every option of enqueue, enqueueMany, job, counts, a partitioned
// queue run per key in order, unique, bulk enqueues, and what a Redis without governor's
// library (or without functions) answers. Records and counts are compared with the Python
// Client's (test/oracle.py).

const { describe, before, after, test } = require("node:test");
const assert = require("node:assert/strict");
const { createClient } = require("redis");
const fs = require("fs");
const path = require("path");
const { RedisServer, Master, oracle, waitFor, sleep, uid, tmpdir } = require("./harness");
const { Client, NotReplicated, GovernorUnavailable, partitionOf } = require("..");

describe("the client, against a redis-server and a governor master", () => {
  let redis;
  let master;
  let client;
  const QUEUES = { email: { concurrency: 2 }, ordered: { concurrency: 4, partitions: 4 } };

  before(async () => {
    redis = await new RedisServer().start();
    master = await new Master(redis.url, QUEUES).start();
    client = Client.fromUrl(redis.url, { prefix: master.prefix });
  });

  after(async () => {
    if (client) await client.close();
    if (master) await master.stop();
    if (redis) await redis.stop();
  });

  async function done(ids, timeoutMs = 20000) {
    return waitFor(async () => {
      const records = await Promise.all(ids.map((id) => client.job(id)));
      return records.every((r) => r && r.state === "done") && records;
    }, timeoutMs, `${ids.length} job(s) done`).catch((err) => {
      throw new Error(`${err.message}\n${master.logText().slice(-3000)}`);
    });
  }

  function runsOf(token) {
    return master.lines("runs").map((l) => JSON.parse(l)).filter((r) => r.args[0] === token);
  }

  test("enqueue with every option: the job runs once, and job() says done with its result", async () => {
    const token = `ada-${uid()}@example.com`;
    const jobId = `x1-${uid()}`;
    const id = await client.enqueue("email", "nodetasks:echo", {
      args: [token], kwargs: { subject: "hi" }, priority: 10, delay: "1s", timeout: "2m", maxRetries: 5,
      jobId, unique: `u-${uid()}`,
    });
    assert.equal(id, jobId);
    const queued = await client.job(id);
    assert.equal(queued.state, "delayed");
    assert.equal(queued.priority, 10);
    assert.equal(queued.timeout, 120);
    assert.equal(queued.max_retries, 5);
    assert.equal(queued.attempts, 0);
    assert.deepEqual([queued.args, queued.kwargs], [[token], { subject: "hi" }]);
    const [rec] = await done([id]);
    assert.equal(rec.state, "done");
    assert.equal(rec.attempts, 1);
    assert.equal(rec.queue, "email");
    assert.equal(rec.handler, "nodetasks:echo");
    assert.deepEqual(rec.result, { args: [token], kwargs: { subject: "hi" } });
    assert.deepEqual(rec.errors, []);
    assert.ok(rec.started_at - rec.enqueued_at >= 0.95, `the delay held it ${rec.started_at - rec.enqueued_at}s`);
    assert.ok(rec.finished_at >= rec.started_at);
    assert.equal(runsOf(token).length, 1);
    // the same record as the Python Client's job(), with and without the queue named
    const [python, pythonInQueue] = oracle([{ op: "job", id, prefix: master.prefix },
      { op: "job", id, queue: "email", prefix: master.prefix }], { url: redis.url });
    assert.deepEqual(rec, python.ok);
    assert.deepEqual(await client.job(id, "email"), pythonInQueue.ok);
    assert.equal(await client.job("no-such-job"), null);
    assert.equal(await client.job(id, "ordered"), null);
    // an existing id is not queued twice
    assert.equal(await client.enqueue("email", "nodetasks:echo", { args: [token], jobId }), jobId);
    await sleep(500);
    assert.equal(runsOf(token).length, 1);
    assert.equal((await client.job(id)).finished_at, rec.finished_at);
  });

  test("enqueueMany queues every job in one call, and each runs once", async () => {
    const token = `many-${uid()}`;
    const ids = await client.enqueueMany("email", Array.from({ length: 40 }, (_, i) => ({
      handler: "nodetasks:echo", args: [token, i], kwargs: { i }, priority: i % 3 })));
    assert.equal(ids.length, 40);
    assert.equal(new Set(ids).size, 40);
    ids.forEach((id) => assert.match(id, /^[0-9a-f]{32}$/));
    const records = await done(ids);
    records.forEach((r, i) => {
      assert.deepEqual(r.result, { args: [token, i], kwargs: { i } });
      assert.equal(r.priority, i % 3);
    });
    const runs = runsOf(token);
    assert.equal(runs.length, 40);
    assert.deepEqual(runs.map((r) => r.args[1]).sort((a, b) => a - b), Array.from({ length: 40 }, (_, i) => i));
  });

  test("counts are the Python Client's, waiting, delayed and done", async () => {
    const later = `later${uid(4)}`; // (no master serves it: its jobs stay where they are put)
    await client.enqueueMany(later, [1, 2, 3].map((i) => ({ handler: "nodetasks:echo", args: [i] })));
    await client.enqueueMany(later, [1, 2].map((i) => ({ handler: "nodetasks:echo", args: [i], delay: "1h" })));
    const mine = await Promise.all([later, "email", "ordered"].map((q) => client.counts(q)));
    const python = oracle([later, "email", "ordered"].map((queue) => ({ op: "counts", queue, prefix: master.prefix })),
      { url: redis.url });
    mine.forEach((c, i) => assert.deepEqual(c, python[i].ok));
    assert.equal(mine[0].waiting, 3);
    assert.equal(mine[0].delayed, 2);
    assert.equal(mine[0].enqueued_total, 5);
    assert.equal(mine[0].paused, false);
    assert.ok(mine[1].done_total >= 41);
    assert.equal(mine[2].partitions, 4);
    assert.deepEqual(await client.counts(`nothing${uid(4)}`), {
      waiting: 0, delayed: 0, active: 0, dead: 0, done: 0, paused: false, enqueued_total: 0, retried_total: 0,
      done_total: 0, dead_total: 0, throttled_total: 0, throttled_jobs_total: 0 });
  });

  test("a partitioned queue: each key's jobs go to its partition and run one at a time, in order", async () => {
    const keys = Array.from({ length: 6 }, (_, k) => `key-${uid(6)}-${k}`);
    const jobs = [];
    for (let seq = 0; seq < 8; seq++) {
      for (const key of keys) jobs.push({ handler: "nodetasks:step", args: [key, seq], key });
    }
    const ids = await client.enqueueMany("ordered", jobs.slice(0, 40));
    for (const job of jobs.slice(40)) { // (and one at a time, after them)
      const { handler, ...options } = job;
      ids.push(await client.enqueue("ordered", handler, options));
    }
    const records = await done(ids, 30000);
    const lanes = new QueueLanes(master.prefix, "ordered");
    for (const [i, job] of jobs.entries()) {
      assert.equal(records[i].key, job.key);
      const part = partitionOf(job.key, 4);
      assert.equal(await redis.admin.sendCommand(["HEXISTS", lanes.meta(part), ids[i]]), 1, `${job.key} in partition ${part}`);
    }
    const order = master.lines("order").map((l) => l.split(" "));
    for (const key of keys) {
      assert.deepEqual(order.filter(([k]) => k === key).map(([, s]) => Number(s)), [0, 1, 2, 3, 4, 5, 6, 7], key);
    }
  });

  class QueueLanes {
    constructor(prefix, queue) {
      this.prefix = prefix;
      this.queue = queue;
    }

    meta(part) {
      return `{${this.prefix}:${this.queue}:${part}}:meta`;
    }
  }

  test("unique: while a job holds its key, the same key queues nothing and answers the holder's id", async () => {
    const later = `uniq${uid(4)}`;
    const first = await client.enqueue(later, "nodetasks:echo", { unique: "rebuild" });
    assert.equal(await client.enqueue(later, "nodetasks:echo", { unique: "rebuild", args: [2] }), first);
    const [c1, c2, c3] = await client.enqueueMany(later, [
      { handler: "nodetasks:echo", unique: "other" }, { handler: "nodetasks:echo", unique: "other" },
      { handler: "nodetasks:echo", unique: "rebuild" }]);
    assert.equal(c2, c1);
    assert.equal(c3, first);
    assert.equal((await client.counts(later)).waiting, 2);
    // once its holder is done, the key is free again
    const u = `free-${uid()}`;
    const one = await client.enqueue("email", "nodetasks:echo", { unique: u, args: [u] });
    await done([one]);
    const two = await client.enqueue("email", "nodetasks:echo", { unique: u, args: [u] });
    assert.notEqual(two, one);
    await done([two]);
    assert.equal(runsOf(u).length, 2);
  });

  test("over 1,000 jobs go as several calls in one transaction, keyed or not", async () => {
    const bulk = `bulk${uid(4)}`;
    const ids = await client.enqueueMany(bulk, Array.from({ length: 2500 }, (_, i) => ({ handler: "nodetasks:echo", args: [i] })));
    assert.equal(new Set(ids).size, 2500);
    const counts = await client.counts(bulk);
    assert.equal(counts.waiting, 2500);
    assert.equal(counts.enqueued_total, 2500);
    // keyed, on a queue no master has started: the count told to the client is registered, as a master would
    const keyed = `bulkp${uid(4)}`;
    const told = Client.fromUrl(redis.url, { prefix: master.prefix, partitions: { [keyed]: 3 } });
    const jobs = Array.from({ length: 2100 }, (_, i) => ({ handler: "nodetasks:step", args: [`k${i % 50}`, i], key: `k${i % 50}` }));
    const keyedIds = await told.enqueueMany(keyed, jobs);
    assert.equal(new Set(keyedIds).size, 2100);
    assert.equal(await redis.admin.sendCommand(["GET", `{${master.prefix}:${keyed}}:partitions`]), "3");
    const perLane = [0, 0, 0];
    for (const job of jobs) perLane[partitionOf(job.key, 3)] += 1;
    for (const part of [0, 1, 2]) {
      assert.equal(await redis.admin.sendCommand(["HLEN", `{${master.prefix}:${keyed}:${part}}:meta`]), perLane[part]);
    }
    const c = await told.counts(keyed);
    assert.equal(c.waiting, 2100); // (with the jobs queued behind their key's head)
    assert.equal(c.partitions, 3);
    const [python] = oracle([{ op: "counts", queue: keyed, prefix: master.prefix }], { url: redis.url });
    assert.deepEqual(c, python.ok);
    await told.close();
  });

  test("a replica that does not confirm in time: NotReplicated, after the jobs are queued", async () => {
    const waiting = Client.fromUrl(redis.url, { prefix: master.prefix, wait: { replicas: 1, timeout: "20ms" } });
    const queue = `wait${uid(4)}`;
    const err = await waiting.enqueue(queue, "nodetasks:echo", { jobId: "w1" }).catch((e) => e);
    assert.ok(err instanceof NotReplicated, String(err));
    assert.equal(err.message, "1 job(s) queued on the primary, but only 0 of 1 replica(s) confirmed it within 20ms: a failover now could lose it");
    assert.deepEqual(err.ids, ["w1"]);
    assert.equal((await waiting.job("w1")).state, "waiting");
    await waiting.close();
  });

  test("a Redis without governor's library: an error saying a master loads it, and no job written", async () => {
    const bare = await new RedisServer().start();
    try {
      const c = Client.fromUrl(bare.url, { prefix: "bare" });
      const calls = [
        () => c.enqueue("q", "nodetasks:echo"),
        () => c.enqueueMany("q", Array.from({ length: 1500 }, () => ({ handler: "nodetasks:echo" }))),
        () => c.job("x"),
      ];
      for (const call of calls) {
        await assert.rejects(call, (err) => {
          assert.ok(err instanceof GovernorUnavailable, String(err));
          assert.equal(err.code, "GOVERNOR_NO_LIBRARY");
          assert.match(err.message, /^governor's function library governor_v1 is not loaded on this Redis \(ERR Function not found\): a governor master loads it at its start; start one on this Redis first/);
          return true;
        });
      }
      assert.deepEqual(await bare.keysOf("bare"), ["bare:queues"]); // (the queue's registration: no job)
      assert.equal((await c.counts("q")).waiting, 0);
      await c.close();
    } finally {
      await bare.stop();
    }
  });

  test("a Redis without functions (as before Redis 7): a clear error, scripts are for Python producers", async () => {
    const old = await new RedisServer("--rename-command", "FCALL", "", "--rename-command", "FCALL_RO", "").start();
    try {
      const c = Client.fromUrl(old.url, { prefix: "old" });
      const calls = [
        () => c.enqueue("q", "nodetasks:echo"),
        () => c.enqueueMany("q", Array.from({ length: 1500 }, () => ({ handler: "nodetasks:echo" }))),
        () => c.job("x"),
      ];
      for (const call of calls) {
        await assert.rejects(call, (err) => {
          assert.ok(err instanceof GovernorUnavailable, String(err));
          assert.equal(err.code, "GOVERNOR_NO_FUNCTIONS");
          assert.match(err.message, /^this Redis has no functions \(ERR unknown command 'FCALL(_RO)?'\): governor-client needs Redis 7 or later; governor's script mode \(EVALSHA, for Redis < 7\) serves Python producers only/);
          return true;
        });
      }
      await c.close();
    } finally {
      await old.stop();
    }
  });

  test("a Client over the caller's own node-redis client, which close() leaves open", async () => {
    const own = createClient({ url: redis.url });
    own.on("error", () => {});
    const c = new Client(own, { prefix: master.prefix }); // (not connected yet: the first call connects it)
    const id = await c.enqueue("email", "nodetasks:echo", { args: ["own"] });
    await done([id]);
    await c.close();
    assert.equal(await own.sendCommand(["PING"]), "PONG");
    await own.quit();
  });

  test("a unix socket URL, with its database", async () => {
    const dir = tmpdir("sock");
    const sock = path.join(dir, "redis.sock");
    const local = await new RedisServer("--unixsocket", sock, "--unixsocketperm", "700").start();
    try {
      await local.admin.sendCommand(["SELECT", "3"]);
      await local.admin.sendCommand(["ZADD", "{s:q}:waiting", "1", "a"]);
      const c = Client.fromUrl(`unix://${sock}?db=3`, { prefix: "s" });
      assert.equal((await c.counts("q")).waiting, 1);
      await c.close();
      const c0 = Client.fromUrl(`unix://${sock}`, { prefix: "s" });
      assert.equal((await c0.counts("q")).waiting, 0);
      await c0.close();
    } finally {
      await local.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("Redis down: a call fails within seconds instead of waiting, and the next one connects again", async () => {
    const gone = await new RedisServer().start();
    const c = Client.fromUrl(gone.url, { prefix: "gone" });
    assert.equal((await c.counts("q")).waiting, 0);
    await gone.stop({ keep: true });
    const started = Date.now();
    await assert.rejects(() => c.counts("q"));
    assert.ok(Date.now() - started < 10000, `failed after ${Date.now() - started}ms`);
    await gone.start(); // (on the same port)
    try {
      assert.equal((await c.counts("q")).waiting, 0);
      await c.close();
      await assert.rejects(() => c.counts("q"), { message: "governor-client: this Client is closed" });
    } finally {
      await gone.stop();
    }
    assert.throws(() => Client.fromUrl("redis+sentinel://h:26379/m"), /connects to redis:\/\/, rediss:\/\/ or unix:\/\/ URLs, not redis\+sentinel:\/\//);
  });
});
