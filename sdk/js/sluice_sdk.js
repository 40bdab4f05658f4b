// The Sluice plugin SDK for JavaScript (componentize-js).
//
// A plugin is an object with a name, a version, the event types it subscribes to, the tables
// it writes, and a `handle(event, out)` method that emits rows for one event or throws
// `Permanent` / `Transient`. `exportPlugin(plugin, host)` turns it into the `handler` object
// the component exports.
//
// The SDK builds against `sluice:plugin@0.2.0` (`wit/0.2.0/sluice.wit`): the host hands it a
// batch as one JSON text, parsed by one `JSON.parse` (native code inside the engine, with the
// payloads already in it), and it returns the batch's rows as one `JSON.stringify` text, which
// the host checks and converts per column in Rust: per event, interpreted JavaScript runs only
// the handler and a few lines around it (docs/performance.md has the figures). A batch whose
// rows JSON cannot carry exactly (NaN, -0, bigint, Uint8Array, Map...) is sent in the packed
// encoding of the contract instead: u32 event index, u16 table index, u16 value count, then one
// tagged value per column.
//
// As the Rust SDK does:
// - an event that throws loses the rows it emitted before it threw; its batch-mates go on;
// - an exception that is not a `Failure` fails its event permanently with its name and
//   message (a bug in the handler is not fixed by retrying), instead of failing the batch;
// - timestamps are parsed by the same RFC 3339 rules as the Rust SDK's, so the same payload
//   gives the same row in either language.
//
// This module imports nothing: unit tests run it under Node (`node --test`) without building a
// component. Only the entry module imports the host interface and passes it to `exportPlugin`.

// ----- failures --------------------------------------------------------------------------------

/** An event the plugin could not handle. Throw `Permanent` or `Transient`. */
export class Failure extends Error {
  constructor(message, permanent = true) {
    super(message);
    this.name = permanent ? 'Permanent' : 'Transient';
    this.permanent = permanent;
  }
}

/** The event itself is bad: the host dead-letters it at once. */
export class Permanent extends Failure {
  constructor(message) {
    super(message, true);
  }
}

/** Something outside the event failed: the host retries it with backoff. */
export class Transient extends Failure {
  constructor(message) {
    super(message, false);
  }
}

// ----- dates and times -------------------------------------------------------------------------

// The subset of the forms `parseTimestampNs` accepts that the host reads into exactly the same
// instant (every day of every month exists, offsets within a day, at most nine fractional
// digits): `Instant.parse` hands these over as text.
const HOST_READS =
  /^[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?$/;

/** A ClickHouse `Date`: days since 1970-01-01. */
export class Day {
  constructor(days, text = undefined) {
    this._days = text === undefined ? Math.trunc(days) : undefined;
    this._text = text;
  }
  get days() {
    if (this._days === undefined) this._days = Number(floorDiv(parseTimestampNs(this._text), 86400000000000n));
    return this._days;
  }
}

/** A ClickHouse `DateTime`: whole seconds since the epoch, UTC. */
export class Instant {
  constructor(seconds, text = undefined) {
    this._seconds = text === undefined ? Math.trunc(seconds) : undefined;
    this._text = text;
  }
  get seconds() {
    if (this._seconds === undefined) this._seconds = Math.floor(parseTimestampMs(this._text) / 1000);
    return this._seconds;
  }
  static fromMillis(ms) {
    return new Instant(Math.floor(ms / 1000));
  }
  /**
   * Parses RFC 3339 (`2024-06-01T12:30:00.123Z`, `...+03:00`; no offset means UTC); throws
   * `Permanent` if it is not one. A timestamp of the common forms is checked here and handed to
   * the host as the text it is, which reads it into the same number (in Rust, where it is
   * cheaper); the number is worked out here only when the handler asks for it (`seconds`).
   */
  static parse(text) {
    if (typeof text === 'string' && HOST_READS.test(text)) return new Instant(0, text);
    return Instant.fromMillis(parseTimestampMs(text));
  }
  /** The UTC calendar date of this instant. */
  date() {
    if (this._seconds === undefined) return new Day(0, this._text);
    return new Day(Math.floor(this._seconds / 86400));
  }
}

/**
 * A point in time with nanosecond precision: nanoseconds since the epoch (a `bigint`), UTC.
 * Fills a `DateTime64(p)` column of any precision (and a `DateTime` one with its seconds).
 */
export class Timestamp {
  constructor(nanos) {
    this.nanos = BigInt(nanos);
  }
  /** Parses RFC 3339 keeping up to nine fractional digits; no offset means UTC. */
  static parse(text) {
    return new Timestamp(parseTimestampNs(text));
  }
  static fromMillis(ms) {
    return new Timestamp(BigInt(Math.trunc(ms)) * 1000000n);
  }
  /** From a `Timestamp`, an `Instant`, a `Day` or a JavaScript `Date`. */
  static of(v) {
    if (v instanceof Timestamp) return v;
    if (v instanceof Instant) return new Timestamp(BigInt(v.seconds) * 1000000000n);
    if (v instanceof Day) return new Timestamp(BigInt(v.days) * 86400000000000n);
    if (v instanceof Date) return Timestamp.fromMillis(v.getTime());
    throw new TypeError(`not a timestamp: ${v}`);
  }
  /** Ticks of 10^-precision seconds (a `DateTime64(precision)`), toward the past. */
  ticks(precision) {
    const unit = 10n ** BigInt(9 - Math.min(precision, 9));
    const q = this.nanos / unit;
    return this.nanos < 0n && q * unit !== this.nanos ? q - 1n : q;
  }
  get seconds() {
    return Number(this.ticks(0));
  }
  date() {
    return new Day(Math.floor(this.seconds / 86400));
  }
}

function daysFromCivil(y, m, d) {
  // Howard Hinnant's algorithm, as in the Rust SDK.
  y = m <= 2 ? y - 1 : y;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const mp = (m + 9) % 12;
  const doy = Math.floor((153 * mp + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

/**
 * Milliseconds since the epoch of an RFC 3339 timestamp; throws `Permanent` if it is not one.
 * Accepts exactly what the Rust SDK accepts: `YYYY-MM-DD`, then optionally `T`/`t`/space,
 * `hh:mm:ss`, a fraction (milliseconds kept), and `Z` or `±hh:mm` (none means UTC).
 */
export function parseTimestampMs(text) {
  return Number(floorDiv(parseTimestampNs(text), 1000000n));
}

function floorDiv(a, b) {
  const q = a / b;
  return a < 0n && q * b !== a ? q - 1n : q;
}

/** Nanoseconds (a `bigint`) since the epoch of an RFC 3339 timestamp, up to nine fractional
 * digits kept; the same rules as `parseTimestampMs`. */
export function parseTimestampNs(text) {
  const bad = () => new Permanent(`invalid timestamp \`${text}\`: expected RFC 3339 like 2024-06-01T12:30:00Z`);
  if (typeof text !== 'string') throw bad();
  const b = text;
  const num = (start, len) => {
    const s = b.slice(start, start + len);
    if (s.length !== len || !/^[0-9]+$/.test(s)) throw bad();
    return Number(s);
  };
  if (b.length < 10 || b[4] !== '-' || b[7] !== '-') throw bad();
  const y = num(0, 4), mo = num(5, 2), d = num(8, 2);
  if (mo < 1 || mo > 12 || d < 1 || d > 31) throw bad();
  let ns = BigInt(daysFromCivil(y, mo, d)) * 86400000000000n;
  if (b.length === 10) return ns;
  if (!'Tt '.includes(b[10]) || b.length < 19 || b[13] !== ':' || b[16] !== ':') throw bad();
  const h = num(11, 2), mi = num(14, 2), s = num(17, 2);
  if (h > 23 || mi > 59 || s > 60) throw bad();
  ns += BigInt(h * 3600 + mi * 60 + s) * 1000000000n;
  let i = 19;
  if (b[i] === '.') {
    i += 1;
    const start = i;
    while (i < b.length && b[i] >= '0' && b[i] <= '9') i += 1;
    if (i === start) throw bad();
    ns += BigInt((b.slice(start, i) + '00000000').slice(0, 9));
  }
  const rest = b.slice(i);
  if (rest === '' || rest === 'Z' || rest === 'z') return ns;
  if (rest.length === 6 && (rest[0] === '+' || rest[0] === '-') && rest[3] === ':') {
    const off = BigInt(num(i + 1, 2) * 60 + num(i + 4, 2)) * 60000000000n;
    return rest[0] === '+' ? ns - off : ns + off;
  }
  throw bad();
}

// ----- events ----------------------------------------------------------------------------------

const KINDS = { string: 'a string', number: 'a number', integer: 'an integer', boolean: 'a boolean', object: 'an object', array: 'an array' };

/**
 * "payload is not valid JSON (line 1, column 9): …" from JSON.parse's error, whichever engine
 * threw it: V8 says "… in JSON at position 8", SpiderMonkey (the components' engine) "… at line
 * 1 column 9 of the JSON data".
 */
function syntaxError(text, e) {
  const msg = e.message.replace(/^JSON\.parse: /, '');
  const lc = /at line (\d+) column (\d+)/.exec(msg);
  const pos = /position (\d+)/.exec(msg);
  let where = '';
  if (lc) {
    where = ` (line ${lc[1]}, column ${lc[2]})`;
  } else if (pos) {
    const before = text.slice(0, Number(pos[1]));
    where = ` (line ${before.split('\n').length}, column ${Number(pos[1]) - before.lastIndexOf('\n')})`;
  }
  const what = msg.replace(/ (in JSON )?at (line \d+ column \d+ of the JSON data|position \d+).*$/, '');
  return `payload is not valid JSON${where}: ${what}`;
}

function jsonKind(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `string ${JSON.stringify(v)}`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} \`${v}\``;
}

function hasKind(v, kind) {
  switch (kind) {
    case 'integer': return Number.isInteger(v);
    case 'array': return Array.isArray(v);
    case 'object': return v !== null && typeof v === 'object' && !Array.isArray(v);
    default: return typeof v === kind;
  }
}

/** `fields` as two arrays, names and kinds, worked out once per fields object (indexed loops
 * cost the engine's interpreter far less than iterating pairs). */
const SPECS = new WeakMap();
function spec(fields) {
  let s = SPECS.get(fields);
  if (s === undefined) SPECS.set(fields, (s = [Object.keys(fields), Object.values(fields)]));
  return s;
}

/** The fields of a batch's events other than their payloads, parsed on first use: a handler
 * that reads only payloads never pays for them. */
class Fields {
  constructor(text, rows = null) {
    this.text = text;
    this.rows = rows;
  }
  of(i) {
    if (this.rows === null) this.rows = JSON.parse(this.text);
    return this.rows[i];
  }
}

/**
 * One event, as the host passes it (the fields of the WIT `event` record), kept as the host
 * sent it: the payload's value, and the batch's other fields, `[id, event type, timestamp ms,
 * attempt, source, tenant]` (plus the payload's text when the host could not parse it), read
 * when the handler asks for one of them.
 */
export class Event {
  constructor({ id, eventType, payload, timestampMs = 0n, source, tenant, attempt = 1 }) {
    const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
    this.p = null;
    this.batch = new Fields(null, [[id, eventType, timestampMs, attempt, source ?? null, tenant ?? null, text]]);
    this.i = 0;
  }

  static fromHost(p, batch, i) {
    const e = Object.create(Event.prototype);
    e.p = p;
    e.batch = batch;
    e.i = i;
    return e;
  }

  get id() { return this.batch.of(this.i)[0]; }
  get eventType() { return this.batch.of(this.i)[1]; }
  /** Event time, ms since the epoch (a bigint). */
  get timestampMs() { return BigInt(this.batch.of(this.i)[2]); }
  get attempt() { return this.batch.of(this.i)[3]; }
  get source() { return this.batch.of(this.i)[4] ?? undefined; }
  get tenant() { return this.batch.of(this.i)[5] ?? undefined; }
  /** The payload's JSON text (re-written from the parsed value when the host parsed it). */
  get payload() {
    if (this.p === null) {
      const f = this.batch.of(this.i);
      if (f.length > 6) return f[6];
    }
    return JSON.stringify(this.p);
  }

  /**
   * The payload as an object; throws `Permanent` naming the problem if it is not one.
   * `fields` maps required field names to their kind (`string`, `number`, `integer`,
   * `boolean`, `object`, `array`); a missing field or a wrong kind fails the event with the
   * same words the Rust SDK uses: "missing field `promoCodeId`".
   */
  json(fields = undefined) {
    let value = this.p;
    if (value === null) {
      const f = this.batch.of(this.i);
      if (f.length > 6) value = this.parse(f[6]);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new Permanent(`invalid ${this.eventType} payload: payload must be a JSON object, got ${jsonKind(value)}`);
    }
    if (fields !== undefined) {
      const [names, kinds] = spec(fields);
      for (let i = 0; i < names.length; i++) {
        if (typeof value[names[i]] !== kinds[i]) this.check(value, names[i], kinds[i]);
      }
    }
    return value;
  }

  /** The host could not parse the payload (or this Event was made by hand): JSON.parse judges,
   * with JSON's rules (no infinities), and its words name the problem. */
  parse(text) {
    const prefix = `invalid ${this.eventType} payload: `;
    try {
      // JSON has no infinities: `1e400` is out of range (as serde_json says), not Infinity.
      return JSON.parse(text, (key, v) => {
        if (typeof v === 'number' && !Number.isFinite(v)) throw new Error(`number out of range in \`${key}\``);
        return v;
      });
    } catch (e) {
      if (e instanceof SyntaxError) throw new Permanent(prefix + syntaxError(text, e));
      throw new Permanent(prefix + e.message);
    }
  }

  check(value, name, kind) {
    const prefix = `invalid ${this.eventType} payload: `;
    if (!(name in value)) throw new Permanent(prefix + `missing field \`${name}\``);
    if (!hasKind(value[name], kind)) {
      throw new Permanent(prefix + `invalid type: ${jsonKind(value[name])}, expected ${KINDS[kind] ?? kind} for field \`${name}\``);
    }
  }
}

// ----- tables and rows -------------------------------------------------------------------------

/**
 * A table the plugin writes. `columns` is a list of `[name, ClickHouse type]` pairs; `engine`
 * is `'MergeTree'`, `'AggregatingMergeTree'`, `['ReplacingMergeTree', versionColumn?]` or
 * `['SummingMergeTree', [columns]]`.
 */
export class Table {
  constructor(name, columns, { engine = 'MergeTree', partitionBy, orderBy = [], settings = [], comments = {} } = {}) {
    this.name = name;
    this.columns = columns;
    this.engine = engine;
    this.partitionBy = partitionBy;
    this.orderBy = orderBy;
    this.settings = settings;
    this.comments = comments;
  }
}

const TAG = { null: 0, bool: 1, int: 2, uint: 3, float: 4, string: 5, bytes: 6, array: 7 };
const I64_MIN = -(2n ** 63n), I64_MAX = 2n ** 63n - 1n, U64_MAX = 2n ** 64n - 1n;
const utf8 = new TextEncoder();

function inner(ty) {
  // `Nullable(T)` and `LowCardinality(T)` encode as `T`.
  ty = (ty || '').trim();
  for (const w of ['Nullable(', 'LowCardinality(']) {
    if (ty.startsWith(w) && ty.endsWith(')')) return inner(ty.slice(w.length, -1));
  }
  return ty;
}

/** The argument types of `name(a, b, ...)` (top-level commas, quoted Enum names skipped), a
 * tuple element's name dropped (`a UInt8` -> `UInt8`); [] if `ty` is not that type. */
function typeArgs(ty, name) {
  ty = inner(ty);
  if (!ty.startsWith(name + '(') || !ty.endsWith(')')) return [];
  const body = ty.slice(name.length + 1, -1);
  const out = [];
  let depth = 0, start = 0, quoted = false, escaped = false;
  for (let i = 0; i < body.length; i++) {
    const c = body[i];
    if (escaped) escaped = false;
    else if (c === '\\' && quoted) escaped = true;
    else if (c === "'") quoted = !quoted;
    else if (c === '(' && !quoted) depth++;
    else if (c === ')' && !quoted) depth--;
    else if (c === ',' && !quoted && depth === 0) { out.push(body.slice(start, i).trim()); start = i + 1; }
  }
  out.push(body.slice(start).trim());
  return out.map((a) => {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)$/.exec(a);
    return m ? m[2] : a;
  });
}

function datetime64Precision(ty) {
  const m = /^DateTime64\(\s*(\d+)/.exec(inner(ty));
  return m ? Math.min(Number(m[1]), 9) : null;
}

/** A growable little-endian byte buffer. */
class Writer {
  constructor() {
    this.bytes = new Uint8Array(4096);
    this.view = new DataView(this.bytes.buffer);
    this.len = 0;
  }
  reserve(n) {
    if (this.len + n <= this.bytes.length) return;
    const bigger = new Uint8Array(Math.max(this.bytes.length * 2, this.len + n));
    bigger.set(this.bytes.subarray(0, this.len));
    this.bytes = bigger;
    this.view = new DataView(bigger.buffer);
  }
  u8(v) { this.reserve(1); this.bytes[this.len++] = v; }
  u16(v) { this.reserve(2); this.view.setUint16(this.len, v, true); this.len += 2; }
  u32(v) { this.reserve(4); this.view.setUint32(this.len, v, true); this.len += 4; }
  i64(v) { this.reserve(8); this.view.setBigInt64(this.len, v, true); this.len += 8; }
  u64(v) { this.reserve(8); this.view.setBigUint64(this.len, v, true); this.len += 8; }
  f64(v) { this.reserve(8); this.view.setFloat64(this.len, v, true); this.len += 8; }
  raw(b) { this.reserve(b.length); this.bytes.set(b, this.len); this.len += b.length; }
  finish() { return this.bytes.slice(0, this.len); }
}

function writeValue(w, v, ty) {
  const base = inner(ty);
  if (v === null || v === undefined) {
    w.u8(TAG.null);
  } else if (typeof v === 'boolean') {
    w.u8(TAG.bool); w.u8(v ? 1 : 0);
  } else if (typeof v === 'bigint') {
    if (v >= I64_MIN && v <= I64_MAX) { w.u8(TAG.int); w.i64(v); }
    else if (v >= 0n && v <= U64_MAX) { w.u8(TAG.uint); w.u64(v); }
    // Wider integers travel as decimal text (Int128/256, UInt128/256, Decimal).
    else writeValue(w, v.toString(), ty);
  } else if (typeof v === 'number') {
    // JavaScript has one number type: integral numbers go to integer columns as integers,
    // everything else (and every number for Float and Decimal columns) as a float.
    if (Number.isSafeInteger(v) && !/^(Float|Decimal)/.test(base)) { w.u8(TAG.int); w.i64(BigInt(v)); }
    else { w.u8(TAG.float); w.f64(v); }
  } else if (typeof v === 'string') {
    const b = utf8.encode(v);
    w.u8(TAG.string); w.u32(b.length); w.raw(b);
  } else if (v instanceof Uint8Array) {
    w.u8(TAG.bytes); w.u32(v.length); w.raw(v);
  } else if (isTemporal(v)) {
    writeValue(w, temporalNumber(v, ty), ty);
  } else if (v instanceof Map || (typeof v === 'object' && !Array.isArray(v) && base.startsWith('Map('))) {
    // A Map(K, V) column takes [key, value] pairs.
    const [kt, vt] = typeArgs(ty, 'Map');
    const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
    w.u8(TAG.array); w.u32(entries.length);
    for (const [k, x] of entries) {
      w.u8(TAG.array); w.u32(2);
      writeValue(w, k, kt);
      writeValue(w, x, vt);
    }
  } else if (typeof v === 'object' && !Array.isArray(v) && base === 'JSON') {
    writeValue(w, JSON.stringify(v), ty);
  } else if (Array.isArray(v)) {
    const tupleTypes = typeArgs(ty, 'Tuple');
    const element = typeArgs(ty, 'Array')[0] || '';
    w.u8(TAG.array); w.u32(v.length);
    v.forEach((x, i) => writeValue(w, x, tupleTypes.length ? tupleTypes[i] || '' : element));
  } else {
    throw new Permanent(`cannot write a ${typeof v} value`);
  }
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const isTemporal = (v) => v instanceof Day || v instanceof Instant || v instanceof Timestamp || v instanceof Date;

/** A date or time as the number a column of type `ty` counts. */
function temporalNumber(v, ty) {
  const t = Timestamp.of(v);
  const precision = datetime64Precision(ty);
  const base = inner(ty);
  if (precision !== null) return t.ticks(precision);
  if (base === 'Date' || base === 'Date32') return v instanceof Day ? v.days : t.date().days;
  return t.seconds;
}

/**
 * For a column whose values need the column's type to travel as JSON, the function that
 * converts them (other values pass); null for the rest. Date and time columns take the SDK's
 * date and time values as numbers, or as the text they were parsed from; a JSON column takes
 * an object as its text.
 */
function converter(ty) {
  const base = inner(ty);
  const precision = datetime64Precision(ty);
  if (base === 'JSON') return (v) => (v !== null && typeof v === 'object' ? JSON.stringify(v) : v);
  if (base === 'Date' || base === 'Date32') {
    return (v) => (v instanceof Day ? (v._days === undefined ? v._text : v._days) : isTemporal(v) ? temporalNumber(v, ty) : v);
  }
  // Not to a column with a time zone: it would read a text without an offset in its zone.
  if (base === 'DateTime') {
    return (v) => (v instanceof Instant ? (v._seconds === undefined ? v._text : v._seconds) : isTemporal(v) ? temporalNumber(v, ty) : v);
  }
  if (precision !== null || base.startsWith('DateTime(')) {
    // Ticks are a bigint: a number when it is exact, else the bigint sends the batch packed.
    return (v) => {
      if (!isTemporal(v)) return v;
      const n = temporalNumber(v, ty);
      return typeof n === 'bigint' && n >= -MAX_SAFE && n <= MAX_SAFE ? Number(n) : n;
    };
  }
  return null;
}

/** Whether values of a column travel as JSON: not when a date or time or a Map is nested in it
 * (their encoding needs the element's type). */
function jsonReady(ty) {
  const base = inner(ty);
  if (!/^(Array|Tuple|Map|Nested)\(/.test(base)) return true;
  if (base.startsWith('Map(')) {
    const [k, v] = typeArgs(base, 'Map');
    return inner(k) === 'String' && !/Date|Map\(/.test(v);
  }
  return !/Date|Map\(/.test(base);
}

/** True for a value JSON would not carry exactly: NaN, infinities, -0, and objects other than
 * plain ones and arrays (Map, Uint8Array, class instances). */
function notJson(v) {
  if (typeof v === 'number') return v - v !== 0 || (v === 0 && 1 / v < 0);
  if (typeof v === 'object' && v !== null) return !Array.isArray(v) && Object.getPrototypeOf(v) !== Object.prototype;
  return typeof v === 'bigint' || typeof v === 'undefined';
}

/** What `Output` knows of a table: its index, column names and types, and the converters. */
function tableEntry(t, i) {
  const names = t.columns.map(([c]) => c);
  const types = t.columns.map(([, ty]) => ty);
  return { index: i, table: t, names, types, convert: types.map(converter), jsonReady: types.every(jsonReady) };
}

/**
 * Collects the rows of a batch, `[event index, table index, [values]]`, sent as JSON or, when
 * JSON cannot carry them exactly, in the packed encoding of the WIT contract.
 */
export class Output {
  constructor(tables) {
    this.tables = new Map(tables.map((t, i) => [t.name, tableEntry(t, i)]));
    this.entries = [...this.tables.values()];
    this.rows = [];
    this.event = 0;
    this.packedOnly = !this.entries.every((e) => e.jsonReady);
  }

  /**
   * Emits one row of `table` (a `Table` or its name) for the current event. `values` maps
   * every column name to its value: null, boolean, number, bigint, string, Uint8Array,
   * `Day`/`Instant`/`Date`, or an array for `Array` columns. A time column also takes the
   * RFC 3339 text as it came: the host reads it.
   */
  row(table, values) {
    const name = typeof table === 'string' ? table : table.name;
    const entry = this.tables.get(name);
    if (!entry) throw new Permanent(`plugin bug: table \`${name}\` is not declared in the manifest`);
    const names = entry.names, convert = entry.convert, n = names.length;
    const row = [];
    let missing = false;
    // One loop, no calls for the common values: the engine interprets every step.
    for (let i = 0; i < n; i++) {
      let v = values[names[i]];
      const c = convert[i];
      if (c !== null) {
        if (v !== undefined) v = c(v);
        else missing = true;
      } else if (typeof v === 'string') {
        // as it is
      } else if (typeof v === 'number') {
        if (v - v !== 0 || (v === 0 && 1 / v < 0)) this.packedOnly = true;
      } else if (v === undefined) {
        missing = true;
      } else if (notJson(v)) {
        this.packedOnly = true;
      }
      row.push(v);
    }
    if (missing || Object.keys(values).length !== n) {
      const miss = names.filter((c) => values[c] === undefined);
      const extra = Object.keys(values).filter((c) => !names.includes(c));
      if (miss.length || extra.length) {
        throw new Permanent(`plugin bug: row for \`${name}\`: missing columns [${miss}], unknown columns [${extra}]`);
      }
    }
    this.rows.push([this.event, entry.index, row]);
  }

  /** The rows as `rows-json` (JSON text in UTF-8), or null if JSON cannot carry them exactly.
   * Bytes, not a string: the engine copies a Uint8Array out in one go, while returning a long
   * string cost it more than everything else in the batch (measured: ~20 µs per event). */
  json() {
    if (this.packedOnly) return null;
    try {
      return utf8.encode(JSON.stringify(this.rows));
    } catch {
      return null; // a bigint nested in an array
    }
  }

  /** The rows in the packed encoding; an event whose values cannot be written fails (pushed to
   * `failures` as [index, Failure]) and loses its rows. */
  packed(failures) {
    const w = new Writer();
    const rows = this.rows;
    let i = 0;
    while (i < rows.length) {
      const event = rows[i][0];
      const start = w.len;
      try {
        for (; i < rows.length && rows[i][0] === event; i++) {
          const [, index, row] = rows[i];
          const types = this.entries[index].types;
          w.u32(event);
          w.u16(index);
          w.u16(row.length);
          row.forEach((v, k) => writeValue(w, v, types[k]));
        }
      } catch (e) {
        w.len = start;
        failures.push([event, e instanceof Failure ? e : new Permanent(`${e?.name ?? 'Error'}: ${e?.message ?? e}`)]);
        while (i < rows.length && rows[i][0] === event) i++;
      }
    }
    return w.finish();
  }
}

function handleAll(plugin, events) {
  const out = new Output(plugin.tables);
  const rows = out.rows;
  const failures = [];
  for (let i = 0; i < events.length; i++) {
    out.event = i;
    const start = rows.length;
    try {
      plugin.handle(events[i], out);
    } catch (e) {
      rows.length = start; // drop the rows this event emitted before it failed
      failures.push([i, e instanceof Failure ? e : new Permanent(`${e?.name ?? 'Error'}: ${e?.message ?? e}`)]);
    }
  }
  return { out, failures };
}

/**
 * Handles a batch as the host would: returns `{rows, failures}` with the packed rows and
 * `[index, Failure]` pairs. Used by unit tests.
 */
export function runBatch(plugin, events) {
  const { out, failures } = handleAll(plugin, events);
  const rows = out.packed(failures);
  return { rows, failures: failures.sort((a, b) => a[0] - b[0]) };
}

/**
 * Handles a batch given as `handle-json` takes it (`wit/0.2.0/sluice.wit`): returns
 * `{rowsJson, rows, failures}`, the rows in one of the two forms.
 */
export function runJson(plugin, payloads, fields) {
  const batch = new Fields(fields);
  const events = JSON.parse(payloads).map((p, i) => Event.fromHost(p, batch, i));
  const { out, failures } = handleAll(plugin, events);
  const rowsJson = out.json();
  if (rowsJson !== null) return { rowsJson, rows: new Uint8Array(0), failures };
  return { rowsJson: new Uint8Array(0), rows: out.packed(failures), failures };
}

function engine(e) {
  const [kind, arg] = Array.isArray(e) ? e : [e, undefined];
  switch (kind) {
    case 'MergeTree': return { tag: 'merge-tree' };
    case 'AggregatingMergeTree': return { tag: 'aggregating-merge-tree' };
    case 'ReplacingMergeTree': return { tag: 'replacing-merge-tree', val: arg };
    case 'SummingMergeTree': return { tag: 'summing-merge-tree', val: arg ?? [] };
    default: throw new Error(`unknown engine ${kind}`);
  }
}

/**
 * The `handler` export for `plugin`. In the entry module:
 * ```js
 * import * as host from 'sluice:plugin/host@0.2.0';
 * export const handler = exportPlugin(myPlugin, host);
 * ```
 * `host` gives `plugin.config(key)` (the `[settings]` of the sidecar file) and
 * `plugin.log(level, message, fields)`.
 */
export function exportPlugin(plugin, host) {
  plugin.config = (key) => host.configGet(key);
  plugin.log = (level, message, fields = {}) => host.log(level, message, Object.entries(fields).map(([k, v]) => [k, String(v)]));
  return {
    describe() {
      return {
        name: plugin.name,
        version: plugin.version,
        subscriptions: plugin.subscriptions,
        tables: plugin.tables.map((t) => ({
          name: t.name,
          columns: t.columns.map(([name, ty]) => ({ name, ty, comment: t.comments[name] })),
          engine: engine(t.engine),
          partitionBy: t.partitionBy,
          orderBy: t.orderBy,
          settings: t.settings,
        })),
        extensions: [],
      };
    },
    handleJson(payloads, events) {
      const { rowsJson, rows, failures } = runJson(plugin, payloads, events);
      return {
        rows,
        rowsJson,
        failures: failures.map(([event, f]) => ({ event, kind: f.permanent ? 'permanent' : 'transient', message: f.message })),
      };
    },
  };
}
