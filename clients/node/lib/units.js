"use strict";
// Durations as governor.units.parse_duration reads them ("30s", "2m", "250ms", or a number of
// seconds), with its messages. Python's regex is over str, so its \d is any Unicode decimal digit
// (float() reads them too) and its \s is str.isspace(): the same sets here.

const { repr, str } = require("./python");

const UNITS = { ms: 0.001, s: 1.0, m: 60.0, h: 3600.0, d: 86400.0 };
const SPACE = "[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const NUMBER_UNIT = new RegExp(`^${SPACE}*(\\p{Nd}+(?:\\.\\p{Nd}+)?)${SPACE}*([a-zA-Z]*)${SPACE}*$`, "u");
const DIGIT = /^\p{Nd}$/u;

/** A decimal digit's value: Unicode encodes each script's digits 0-9 as one run of code points. */
function digitValue(ch) {
  const cp = ch.codePointAt(0);
  let start = cp;
  while (DIGIT.test(String.fromCodePoint(start - 1))) start -= 1;
  return (cp - start) % 10;
}

function asciiDigits(text) {
  return Array.from(text, (ch) => (ch === "." ? "." : String(digitValue(ch)))).join("");
}

/** Seconds from "30s"/"10m"/"250ms"; a bare number means seconds. Throws parse_duration's message. */
function parseDuration(value) {
  if (typeof value === "boolean") throw new Error(`expected a duration such as 30s, got ${repr(value)}`);
  if (typeof value === "number" && value >= 0 && Number.isFinite(value)) return value;
  if (typeof value === "bigint" && value >= 0n) return Number(value);
  const m = NUMBER_UNIT.exec(str(value));
  const unit = m ? m[2].toLowerCase() : null;
  if (!m || (unit && !Object.prototype.hasOwnProperty.call(UNITS, unit))) {
    throw new Error(`expected a duration such as 30s (units ms/s/m/h/d), got ${repr(value)}`);
  }
  const seconds = Number(asciiDigits(m[1])) * (unit ? UNITS[unit] : 1.0);
  if (!Number.isFinite(seconds)) throw new Error(`expected a finite duration, got ${repr(value)}`);
  return seconds;
}

module.exports = { parseDuration };
