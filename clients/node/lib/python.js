"use strict";
// How governor's Python Client sees a JS value: its repr() in error messages, str(), truthiness,
// and json.dumps(separators=(",", ":")) (ASCII only, no NaN), so that every message this client
// throws and every payload it writes is the Python Client's, to the byte.
//
// A JS value is read as JSON carries it to Python: a number is an int when it is integral and
// JSON writes it without an exponent (|n| < 1e21), else a float; null and undefined are None;
// an array is a list; a plain object is a dict (its undefined members left out, as JSON.stringify
// leaves them).

/** Whether Python would see an int: an integral number JSON writes without an exponent. */
function isInt(v) {
  return typeof v === "number" && Number.isInteger(v) && Math.abs(v) < 1e21;
}

/** An object whose prototype is Object's (or none): a Python dict. */
function isDict(v) {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** Python's repr of a float: the shortest digits that read back the same (as JS finds them),
 *  laid out as Python does (an exponent below 1e-4 and from 1e16 up, at least two digits). */
function floatRepr(x) {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const [mantissa, expText] = Math.abs(x).toExponential().split("e");
  const digits = mantissa.replace(".", "");
  const exp = Number(expText);
  const point = exp + 1; // where the decimal point falls after the first digit
  if (point > 16 || point < -3) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  if (point <= 0) return `${sign}0.${"0".repeat(-point)}${digits}`;
  if (point >= digits.length) return `${sign}${digits}${"0".repeat(point - digits.length)}.0`;
  return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
}

function numberRepr(x) {
  return isInt(x) ? String(x) : floatRepr(x); // (String(-0) is "0": JSON carries -0 as 0)
}

const NOT_PRINTABLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]$/u;

function hex(n, width) {
  return n.toString(16).padStart(width, "0");
}

/** Python's repr of a str. */
function strRepr(s) {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) { // (by code point; a lone surrogate is one)
    const cp = ch.codePointAt(0);
    if (ch === quote || ch === "\\") out += `\\${ch}`;
    else if (ch === "\t") out += "\\t";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (cp < 0x20 || cp === 0x7f) out += `\\x${hex(cp, 2)}`;
    else if (cp < 0x7f || !NOT_PRINTABLE.test(ch)) out += ch;
    else if (cp <= 0xff) out += `\\x${hex(cp, 2)}`;
    else if (cp <= 0xffff) out += `\\u${hex(cp, 4)}`;
    else out += `\\U${hex(cp, 8)}`;
  }
  return out + quote;
}

/** Python's repr of the value JSON would carry to Python. */
function repr(v) {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return numberRepr(v);
  if (typeof v === "bigint") return String(v);
  if (typeof v === "string") return strRepr(v);
  if (Array.isArray(v)) return `[${v.map(repr).join(", ")}]`;
  if (isDict(v)) {
    const items = Object.entries(v).filter(([, x]) => x !== undefined);
    return `{${items.map(([k, x]) => `${strRepr(k)}: ${repr(x)}`).join(", ")}}`;
  }
  if (typeof v === "object" && typeof v.toJSON === "function") return repr(v.toJSON());
  const name = typeof v === "object" ? (v.constructor && v.constructor.name) || "object" : typeof v;
  return `<${name} object>`;
}

/** Python's str(): a str itself, anything else its repr (true of every JSON value). */
function str(v) {
  return typeof v === "string" ? v : repr(v);
}

/** Python's truthiness (``x or default``): None, False, 0, "", [] and {} are false; NaN is true. */
function falsy(v) {
  if (v === null || v === undefined || v === false || v === 0 || v === "" || v === 0n) return true;
  if (Array.isArray(v)) return v.length === 0;
  if (isDict(v)) return Object.values(v).every((x) => x === undefined);
  return false;
}

/** Code point order (Python's str comparison), not UTF-16's. */
function compare(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

// ---- json.dumps(value, separators=(",", ":"), allow_nan=False) --------------------------------

class JSONError extends Error {}

const SHORT_ESCAPES = { '"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t" };

/** A JSON string as Python writes it (ensure_ascii): anything outside space..~ escaped,
 *  by UTF-16 unit (an astral character as its surrogate pair, lowercase hex). */
function jsonString(s) {
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const ch = s[i];
    const code = s.charCodeAt(i);
    if (SHORT_ESCAPES[ch]) out += SHORT_ESCAPES[ch];
    else if (code < 0x20 || code > 0x7e) out += `\\u${hex(code, 4)}`;
    else out += ch;
  }
  return out + '"';
}

function typeName(v) {
  if (typeof v !== "object") return typeof v;
  return (v.constructor && v.constructor.name) || "object";
}

function dumpValue(v, key, seen) {
  if (v !== null && typeof v === "object" && typeof v.toJSON === "function") v = v.toJSON(key);
  if (v instanceof Number || v instanceof String || v instanceof Boolean) v = v.valueOf();
  if (v === null || v === undefined) return "null";
  if (v === true) return "true";
  if (v === false) return "false";
  if (typeof v === "string") return jsonString(v);
  if (typeof v === "bigint") return String(v);
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new JSONError("Out of range float values are not JSON compliant");
    return numberRepr(v);
  }
  if (typeof v !== "object" || !(Array.isArray(v) || isDict(v))) {
    throw new JSONError(`Object of type ${typeName(v)} is not JSON serializable`);
  }
  if (seen.has(v)) throw new JSONError("Circular reference detected");
  seen.add(v);
  let out;
  if (Array.isArray(v)) {
    out = `[${v.map((x, i) => dumpValue(x, String(i), seen)).join(",")}]`;
  } else {
    const items = Object.entries(v).filter(([, x]) => x !== undefined);
    out = `{${items.map(([k, x]) => `${jsonString(k)}:${dumpValue(x, k, seen)}`).join(",")}}`;
  }
  seen.delete(v);
  return out;
}

/** json.dumps(v, separators=(",", ":"), allow_nan=False), as Python writes it; a value
 *  Python's json would refuse throws JSONError with json's message. */
function dumps(v) {
  try {
    return dumpValue(v, "", new Set());
  } catch (err) {
    if (err instanceof RangeError) throw new JSONError("nested too deeply");
    throw err;
  }
}

module.exports = { isInt, isDict, floatRepr, repr, str, falsy, compare, dumps, jsonString, JSONError };
