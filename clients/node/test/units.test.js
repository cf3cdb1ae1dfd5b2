"use strict";
// The pieces that make this client speak as the Python Client does, each compared with Python
// itself (test/oracle.py): repr() in messages, json.dumps() of payloads, parse_duration(), and
// the partition of an ordering key. No Redis needed.

const test = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("crypto");
const { oracle } = require("./harness");
const { repr, dumps, JSONError } = require("../lib/python");
const { parseDuration } = require("../lib/units");
const { partitionOf } = require("..");

function randomDoubles(n) {
  const out = [];
  const view = new DataView(new ArrayBuffer(8));
  while (out.length < n) {
    crypto.randomFillSync(new Uint8Array(view.buffer));
    const x = view.getFloat64(0);
    if (Number.isFinite(x)) out.push(x);
  }
  for (let k = -12; k <= 22; k++) out.push(Math.random() * 10 ** k, 10 ** k, 1.5 * 10 ** k, -(2.5 * 10 ** k));
  return out;
}

const STRINGS = [
  "", "a", "it's", 'say "hi"', `both ' and "`, "back\\slash", "tab\tnew\nline\rret", "\x00\x1f\x7f\x80\x9f\xa0\xad",
  "é", "naïve café", "\u200b\u2028\u2029\u3000", "\ud800", "\udfff", "x\ud83dy", "\u{1F600}", "\u{E0001}",
  "\u{10FFFF}", "\u0378", "日本語", "\uFEFF", "\u061C", "mixed 'q' \"q\" \\ \u{1F680}",
];
const NUMBERS = [0, -0, 1, -1, 42, 1e15, 1e16, 1e20, 1e21, 1e22, 2 ** 53, 2 ** 53 + 2, 0.1, 0.5, 1.5, 1e-4, 1e-5,
  123.456, 5e-324, 1.7976931348623157e308, -1.5e-7, 100.0, 3.0e10];

test("repr() of every kind of value is Python's", () => {
  const values = [null, true, false, ...STRINGS, ...NUMBERS, ...randomDoubles(300), NaN, Infinity, -Infinity,
    [], [1, "a", null, [true, 2.5]], {}, { a: 1, "b'": ["x", { c: null }] }, { "": 0.25, 10: "ten", 2: "two" }];
  const answers = oracle(values.map((value) => ({ op: "repr", value })));
  values.forEach((value, i) => assert.equal(repr(value), answers[i].ok, `repr of ${String(value)}`));
});

test("json.dumps() of payloads is Python's, to the byte", () => {
  const values = [...STRINGS, ...NUMBERS, ...randomDoubles(300), null, true, false, [],
    { args: ["ada@example.com", 1, 2.5, null], kwargs: { subject: "hi", nested: { list: [[]], s: "\u{1F600}é" } } },
    NaN, [1, Infinity], { x: -Infinity }];
  const answers = oracle(values.map((value) => ({ op: "dumps", value })));
  values.forEach((value, i) => {
    if (answers[i].error) {
      assert.throws(() => dumps(value), (err) => err instanceof JSONError && err.message === answers[i].error);
    } else {
      assert.equal(dumps(value), answers[i].ok, `dumps of ${String(value)}`);
    }
  });
});

test("values Python's json refuses are refused as json refuses them", () => {
  const cycle = [];
  cycle.push(cycle);
  assert.throws(() => dumps({ a: cycle }), { message: "Circular reference detected" });
  assert.throws(() => dumps([new Map()]), { message: "Object of type Map is not JSON serializable" });
  assert.throws(() => dumps([() => 1]), { message: "Object of type function is not JSON serializable" });
  const shared = { x: 1 }; // (the same object twice is no cycle)
  assert.equal(dumps([shared, shared]), '[{"x":1},{"x":1}]');
  assert.equal(dumps({ when: new Date(0), gone: undefined }), '{"when":"1970-01-01T00:00:00.000Z"}');
  assert.equal(dumps([undefined, 10n ** 30n]), "[null,1000000000000000000000000000000]");
});

test("durations read as parse_duration reads them, with its messages", () => {
  const values = ["30s", "2m", "250ms", "1.5h", "1d", "0", "0.001", " 10 s ", "10S", "1H", "5x", "ms", "", " ",
    "1.", ".5", "1e3", "-1", "+1", "1 2", "٣s", "３ d", "\u00a01m\u3000", "\ufeff1s", "\x1c1s\x1f", "\x851s",
    "9".repeat(400), `${"9".repeat(400)}ms`, "1_000", 0, 5, 2.5, -1, 1e308, true, false, NaN, Infinity, [1], { s: 1 }];
  const answers = oracle(values.map((value) => ({ op: "duration", value })));
  values.forEach((value, i) => {
    const expected = answers[i];
    if (expected.error) assert.throws(() => parseDuration(value), { message: expected.error }, `duration ${repr(value)}`);
    else assert.equal(parseDuration(value), expected.ok, `duration ${repr(value)}`);
  });
});

test("an ordering key's partition is governor's (CRC-32 of its UTF-8 bytes)", () => {
  const keys = ["a", "user-42", "order:1", "~", "!".repeat(200)];
  for (let i = 0; i < 500; i++) {
    const n = 1 + crypto.randomInt(200);
    keys.push(Array.from({ length: n }, () => String.fromCharCode(0x21 + crypto.randomInt(94))).join(""));
  }
  const counts = [1, 2, 3, 4, 7, 16, 1000, 1024];
  const answers = oracle(counts.map((n) => ({ op: "partition", keys, n })));
  counts.forEach((n, i) => assert.deepEqual(keys.map((k) => partitionOf(k, n)), answers[i].ok, `${n} partitions`));
});
