"use strict";
// Invalid input, rule by rule: this client throws the Python Client's message (asked of the
// Python Client itself, test/oracle.py, so the two cannot drift) and writes nothing the Python
// Client would not (for a rule broken by the job itself: nothing at all). And a valid job is
// written as the Python Client writes it, to the byte. Against a real redis-server, with the
// function library loaded as a master loads it.

const { describe, before, after, test } = require("node:test");
const assert = require("node:assert/strict");
const { RedisServer, oracle, outcome, uid } = require("./harness");
const { Client, ValidationError } = require("..");
const { prepare } = require("../lib/prepare");

describe("validation, against a redis-server with governor's library", () => {
  let redis;
  const run = uid(6);

  before(async () => {
    redis = await new RedisServer().start();
    oracle([{ op: "client" }], { url: redis.url, loadLibrary: true });
  });

  after(async () => {
    if (redis) await redis.stop();
  });

  const H = "nodetasks:echo";
  const long = (n) => "x".repeat(n);

  // [what, queue, jobs, {options, setup}]: setup is {queue: partition count as Redis holds it}
  const CASES = [
    // the queue's name
    ["empty queue name", "", [{ handler: H }]],
    ["a partition's name", "a:b", [{ handler: H }]],
    ["a long queue name", long(65), [{ handler: H }]],
    ["a queue name not a string", 5, [{ handler: H }]],
    ["no queue name", null, [{ handler: H }]],
    ["a non-ASCII queue name", "é", [{ handler: H }]],
    // fields
    ["unknown fields", "q", [{ handler: H, foo: 1, bar: 2, Zed: 3 }]],
    // handler
    ["no handler", "q", [{}]],
    ["a handler not a string", "q", [{ handler: 5 }]],
    ["a handler without a colon", "q", [{ handler: "nocolon" }]],
    ["an empty handler", "q", [{ handler: "" }]],
    ["a handler in a list", "q", [{ handler: [H] }]],
    // args and kwargs
    ["args a string", "q", [{ handler: H, args: "abc" }]],
    ["args an object", "q", [{ handler: H, args: { a: 1 } }]],
    ["args a number", "q", [{ handler: H, args: 5 }]],
    ["kwargs a list", "q", [{ handler: H, kwargs: [1] }]],
    ["kwargs a string", "q", [{ handler: H, kwargs: "x" }]],
    ["kwargs true", "q", [{ handler: H, kwargs: true }]],
    // priority
    ...[-1, 101, 1.5, "5", true, false, NaN, Infinity, 1e21, [1], { p: 1 }, 1e-7].map((p) => [`priority ${String(p)}`, "q", [{ handler: H, priority: p }]]),
    // max_retries
    ...[-1, 1000001, 2.5, "3", true, false, NaN].map((m) => [`maxRetries ${String(m)}`, "q", [{ handler: H, maxRetries: m }]]),
    // delay
    ...[-1, "5x", "3651d", 3650 * 86400 + 1, true, "1e3", NaN, Infinity, -Infinity, [1], "-5s", "", {}, long(400).replace(/x/g, "9")]
      .map((d) => [`delay ${String(d).slice(0, 20)}`, "q", [{ handler: H, delay: d }]]),
    // timeout
    ...[0, "0s", "0.5ms", "366d", -1, "abc", false, 0.0009, "1 week"].map((t) => [`timeout ${String(t)}`, "q", [{ handler: H, timeout: t }]]),
    // job id, unique, key
    ...["has space", long(201), 5, "é", "tab\t", true, [1], "\x7f"].map((j) => [`jobId ${String(j).slice(0, 20)}`, "q", [{ handler: H, jobId: j }]]),
    ...["", "a b", 5, long(201), false, 0].map((u) => [`unique ${String(u).slice(0, 20)}`, "q", [{ handler: H, unique: u }]]),
    ...["", "a b", 5, long(201), false, "ключ"].map((k) => [`key ${String(k).slice(0, 20)}`, "q", [{ handler: H, key: k }]]),
    // the payload
    ["a NaN argument", "q", [{ handler: H, kwargs: { x: NaN } }]],
    ["an infinite argument", "q", [{ handler: H, args: [1, [Infinity]] }]],
    ["a payload over the limit", "q", [{ handler: H, args: [long(100)] }], { maxPayload: 64 }],
    ["a payload of non-ASCII over the limit", "q", [{ handler: H, args: ["é".repeat(20)] }], { maxPayload: 64 }],
    // which job of many (the first names none)
    ["the second job bad", "q", [{ handler: H }, { handler: H, priority: 101 }]],
    ["the third job bad", "q", [{ handler: H }, { handler: H }, { handler: "x" }, { handler: H, priority: -1 }]],
    ["the first job bad of two", "q", [{ handler: H, delay: "soon" }, { handler: H }]],
    // partitions: as Redis holds them, and as the client was told
    ["a key on a queue that is not partitioned", "plain", [{ handler: H, key: "k" }]],
    ["a job without a key among keyed ones", "parted", [{ handler: H, key: "k" }, { handler: H }], { setup: { parted: "4" } }],
    ["a job without a key on a partitioned queue", "parted", [{ handler: H }], { setup: { parted: "4" } }],
    ["jobs without keys on a partitioned queue", "parted", [{ handler: H }, { handler: H }], { setup: { parted: "4" } }],
    ["a partition count that is no number", "parted", [{ handler: H, key: "k" }], { setup: { parted: "abc" } }],
    ["a partition count of 0", "parted", [{ handler: H, key: "k" }], { setup: { parted: "0" } }],
    ["a partition count of 1025", "parted", [{ handler: H, key: "k" }], { setup: { parted: "1025" } }],
    ["a long partition count", "parted", [{ handler: H, key: "k" }], { setup: { parted: long(30) } }],
    ["told another partition count", "parted", [{ handler: H, key: "k" }], { setup: { parted: "4" }, partitions: { parted: 8 } }],
  ];

  async function keysOf(prefix) {
    return (await redis.keysOf(prefix)).map((k) => k.replace(prefix, "P"));
  }

  test("bad input throws the Python Client's message and writes nothing", async () => {
    const prepared = [];
    for (const [i, [what, queue, jobs, opts = {}]] of CASES.entries()) {
      const js = `j${run}c${i}`;
      const py = `p${run}c${i}`;
      for (const [q, count] of Object.entries(opts.setup || {})) {
        for (const prefix of [js, py]) await redis.admin.sendCommand(["SET", `{${prefix}:${q}}:partitions`, count]);
      }
      const options = {};
      if (opts.maxPayload !== undefined) options.maxPayload = opts.maxPayload;
      if (opts.partitions !== undefined) options.partitions = opts.partitions;
      prepared.push({ what, queue, jobs, js, py, options, setupKeys: await keysOf(js) });
    }
    const answers = oracle(prepared.map((c) => ({
      op: "enqueueMany", queue: c.queue, jobs: c.jobs, prefix: c.py, ...c.options })), { url: redis.url });
    for (const [i, c] of prepared.entries()) {
      const expected = answers[i];
      assert.ok(expected.error, `${c.what}: Python refuses it (${JSON.stringify(expected)})`);
      const client = Client.fromUrl(redis.url, { prefix: c.js, ...c.options });
      const got = await outcome(() => client.enqueueMany(c.queue, c.jobs));
      await client.close();
      if (process.env.SHOW_MESSAGES) console.log(`${c.what}: ${expected.error}`);
      const message = expected.error.replaceAll(c.py, c.js); // (a key named in it is under its own prefix)
      assert.equal(got.error, message, c.what);
      assert.ok(got.err instanceof Error, c.what);
      const written = await keysOf(c.js);
      const pythonWrote = await keysOf(c.py);
      assert.deepEqual(written.filter((k) => !pythonWrote.includes(k)), [], `${c.what}: nothing Python would not write`);
      if (!c.what.includes("partition")) assert.deepEqual(written, c.setupKeys, `${c.what}: nothing written`);
      // enqueue() of one job: enqueue_many's message for it, as Python's enqueue() gives it
      if (c.jobs.length === 1 && c.jobs[0].handler !== undefined && typeof c.queue === "string") {
        const { handler, ...options } = c.jobs[0];
        const single = Client.fromUrl(redis.url, { prefix: c.js, ...c.options });
        const one = await outcome(() => single.enqueue(c.queue, handler, options));
        await single.close();
        assert.equal(one.error, message, `${c.what} (enqueue)`);
        assert.deepEqual(await keysOf(c.js), written, `${c.what} (enqueue): nothing written`);
      }
    }
  });

  test("a bad partition count given to the client is refused as Python refuses it", async () => {
    const told = [{ q: 0 }, { q: 1025 }, { q: 1.5 }, { q: "4" }, { q: true }, { q: null }, { "a:b": 4 }, { "": 1 }];
    const answers = oracle(told.map((partitions) => ({ op: "client", partitions })), { url: redis.url });
    told.forEach((partitions, i) => {
      assert.ok(answers[i].error, JSON.stringify(partitions));
      assert.throws(() => Client.fromUrl(redis.url, { partitions }), { message: answers[i].error });
    });
  });

  test("what only JS can pass is refused, naming it, and writes nothing", async () => {
    const prefix = `j${run}js`;
    const client = Client.fromUrl(redis.url, { prefix });
    const cycle = { a: 1 };
    cycle.self = cycle;
    const refused = [
      [() => client.enqueue("q", H, 5), "enqueue's options must be an object, got 5"],
      [() => client.enqueue("q", H, { handler: H }), "enqueue takes the handler as its second argument, not among its options"],
      [() => client.enqueueMany("q", 5), "jobs must be a list of jobs, got 5"],
      [() => client.enqueueMany("q", "abc"), "jobs must be a list of jobs, got 'abc'"],
      [() => client.enqueueMany("q", [{ handler: H }, null]), /^job 1: a job is an object of handler, .*got None$/],
      // Python's spellings are not the Node client's: unknown here
      [() => client.enqueue("q", H, { max_retries: 1, job_id: "x" }), "unknown job field(s): job_id, max_retries"],
      [() => client.enqueue("q", H, { kwargs: { self: cycle } }), "job arguments must be JSON-serialisable: Circular reference detected"],
      [() => client.enqueue("q", H, { args: [new Set([1])] }), "job arguments must be JSON-serialisable: Object of type Set is not JSON serializable"],
      [() => client.enqueue("q", H, { args: [Symbol("s")] }), "job arguments must be JSON-serialisable: Object of type symbol is not JSON serializable"],
    ];
    for (const [fn, message] of refused) {
      await assert.rejects(fn, (err) => err instanceof ValidationError && (message instanceof RegExp
        ? message.test(err.message) : err.message === message) || assert.fail(`${err.message} is not ${message}`));
    }
    assert.deepEqual(await client.enqueueMany("q", []), []);
    await client.close();
    assert.deepEqual(await redis.keysOf(prefix), []);
  });

  test("a valid job's payload and record are the bytes the Python Client writes", () => {
    const jobs = [
      { handler: H },
      { handler: H, args: ["ada@example.com", 1, 2.5, null, true, [1, { a: "é" }]], kwargs: { subject: "hi \u{1F600}", n: 1e-7 } },
      { handler: "m.x:f", priority: 0, delay: "1.5s", timeout: "2m", maxRetries: 0, unique: "u", key: "k" },
      { handler: H, priority: 100, delay: 2.5, timeout: 0.001, maxRetries: 1000000 },
      { handler: H, priority: null, delay: null, timeout: null, maxRetries: null, unique: null, key: null },
      { handler: H, delay: "3650d", timeout: "365d", args: 0, kwargs: {} },
      { handler: H, delay: 0.0004, timeout: 1, args: [], kwargs: { "": { "\x00": "\x7f\u2028" } } },
      { handler: "é:ü", args: ["\ud800"], unique: "!~", key: long(200) },
    ].map((job, i) => ({ jobId: `id-${i}`, ...job }));
    const answers = oracle(jobs.map((job) => ({ op: "prepare", queue: "q.-_1", job })));
    jobs.forEach((job, i) => assert.deepEqual(prepare("q.-_1", job, 1024 * 1024), answers[i].ok, JSON.stringify(job)));
    const generated = prepare("q", { handler: H }, 1024);
    assert.match(generated.id, /^[0-9a-f]{32}$/);
    assert.equal(generated.meta, `{"id":"${generated.id}","queue":"q","handler":"${H}","priority":50}`);
  });
});
