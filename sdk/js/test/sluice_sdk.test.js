// Unit tests of the JavaScript SDK under plain Node: `node --test sdk/js/test/`.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Day, Event, Instant, Output, Permanent, Table, Timestamp, Transient, parseTimestampMs, parseTimestampNs, runBatch, runJson } from '../sluice_sdk.js';

test('timestamps parse as the Rust SDK parses them', () => {
  assert.equal(parseTimestampMs('1970-01-01T00:00:00Z'), 0);
  assert.equal(parseTimestampMs('2024-06-01T12:30:00.123Z'), 1717245000123);
  assert.equal(parseTimestampMs('2024-06-01T15:30:00+03:00'), 1717245000000);
  assert.equal(parseTimestampMs('2024-06-01'), 1717200000000);
  assert.equal(parseTimestampMs('2024-06-01T12:30:00.5'), 1717245000500);
  assert.equal(parseTimestampMs('1969-12-31T23:59:59.999Z'), -1);
  for (const bad of ['yesterday', '2024-13-01T00:00:00Z', '2024-06-01T12:30', '2024-06-01T12:30:00+0300', '2024-06-01T12:30:00.Z']) {
    assert.throws(() => parseTimestampMs(bad), Permanent, bad);
  }
  assert.equal(Instant.parse('1969-12-31T23:59:59.999Z').seconds, -1);
  assert.equal(Instant.parse('2024-06-01T12:30:00Z').date().days, 19875);
});

test('a row is packed byte for byte as the WIT describes', () => {
  const t = new Table('t', [['d', 'Date'], ['at', 'DateTime'], ['n', 'UInt8'], ['f', 'Float64'], ['s', 'Nullable(String)'], ['a', 'Array(Int32)']]);
  const out = new Output([t]);
  out.event = 3;
  out.row(t, { d: new Day(2), at: new Instant(7), n: 5, f: 1, s: null, a: [1, -1] });
  const bytes = Buffer.from(out.packed([])).toString('hex');
  const i64 = (n) => Buffer.from(new BigInt64Array([BigInt(n)]).buffer).toString('hex');
  const expected = '03000000' + '0000' + '0600' +
    '02' + i64(2) + '02' + i64(7) + '02' + i64(5) +
    '04' + Buffer.from(new Float64Array([1]).buffer).toString('hex') +
    '00' + '07' + '02000000' + '02' + i64(1) + '02' + i64(-1);
  assert.equal(bytes, expected);
});

test('a failing event loses its rows; a bug fails its event, not the batch', () => {
  const t = new Table('t', [['k', 'UInt32']]);
  const plugin = {
    tables: [t],
    handle(event, out) {
      const { k, then } = event.json({ k: 'integer' });
      out.row(t, { k });
      if (then === 'permanent') throw new Permanent('bad event');
      if (then === 'transient') throw new Transient('try later');
      if (then === 'bug') null.x;
    },
  };
  const events = [{ k: 1 }, { k: 2, then: 'permanent' }, { k: 3, then: 'transient' }, { k: 4, then: 'bug' }, { k: 'x' }, { k: 5 }]
    .map((payload, i) => new Event({ id: `e${i}`, eventType: 'x', payload }));
  const { rows, failures } = runBatch(plugin, events);
  assert.equal(rows.length, 2 * (8 + 9));
  assert.deepEqual(failures.map(([i, f]) => [i, f.permanent]), [[1, true], [2, false], [3, true], [4, true]]);
  assert.match(failures[2][1].message, /^TypeError: /);
  assert.equal(failures[3][1].message, 'invalid x payload: invalid type: string "x", expected an integer for field `k`');
});

test('payloads that are not JSON objects, or hold non-finite numbers, fail permanently', () => {
  const e = (payload) => new Event({ id: 'e', eventType: 'T', payload });
  assert.throws(() => e('{"a": ').json(), /invalid T payload: /);
  assert.throws(() => e('[1]').json(), /payload must be a JSON object, got an array/);
  assert.throws(() => e('{"a": 1,}').json(), /payload is not valid JSON \(line 1, column \d+\)/);
  assert.throws(() => e('{"a": 1e400}').json(), /number out of range/);
  assert.throws(() => e('{"b": 1}').json({ a: 'string' }), /missing field `a`/);
});

test('nanoseconds and the types of current releases', () => {
  assert.equal(parseTimestampNs('2024-06-01T12:30:00.123456789Z'), 1717245000123456789n);
  const t = Timestamp.parse('1969-12-31T23:59:59.5Z');
  assert.equal(t.seconds, -1);
  assert.equal(t.ticks(1), -5n);
  const ts = new Table('t', [['t3', "Nullable(DateTime64(3, 'UTC'))"], ['dt', 'DateTime'], ['m', 'Map(String, DateTime64(1))'],
    ['tu', 'Tuple(a UInt8, b DateTime64(6))'], ['big', 'Int256'], ['js', 'JSON'], ['d32', 'Date32']]);
  const out = new Output([ts]);
  const at = Timestamp.parse('2024-06-01T12:30:00.123456Z');
  out.row(ts, { t3: new Date(1717245000123), dt: at, m: { k: new Instant(10) }, tu: [7, at], big: -(2n ** 200n), js: { a: [1] }, d32: new Day(-25567) });
  const hex = Buffer.from(out.packed([])).toString('hex');
  const i64 = (n) => '02' + Buffer.from(new BigInt64Array([BigInt(n)]).buffer).toString('hex');
  const str = (s) => '05' + Buffer.from(new Uint32Array([Buffer.byteLength(s)]).buffer).toString('hex') + Buffer.from(s).toString('hex');
  const arr = (n) => '07' + Buffer.from(new Uint32Array([n]).buffer).toString('hex');
  const expected = '00000000' + '0000' + '0700' + i64(1717245000123) + i64(1717245000) +
    arr(1) + arr(2) + str('k') + i64(100) + arr(2) + i64(7) + i64(1717245000123456n) +
    str((-(2n ** 200n)).toString()) + str('{"a":[1]}') + i64(-25567);
  assert.equal(hex, expected);
});

test('handle-json: rows come back as JSON, timestamps as they came; what JSON cannot carry goes packed', () => {
  const t = new Table('t', [['k', 'UInt64'], ['d', 'Date'], ['at', 'DateTime'], ['f', 'Float64']]);
  const plugin = {
    tables: [t],
    handle(event, out) {
      const p = event.json({ k: 'number', at: 'string' });
      const at = Instant.parse(p.at);
      out.row(t, { k: p.k, d: at.date(), at, f: p.f ?? 0.5 });
    },
  };
  const run = (...payloads) => runJson(plugin, JSON.stringify(payloads.map((p) => (typeof p === 'string' ? null : p))),
    JSON.stringify(payloads.map((p, i) => [`e${i}`, 'x', 5, 1, null, null, ...(typeof p === 'string' ? [p] : [])])));
  const r = run({ k: 1, at: '2024-06-01T10:30:00+03:00' }, '{"k": ', { k: 3, at: 'yesterday' }, { k: 4, at: '2024-02-30' });
  assert.deepEqual(JSON.parse(Buffer.from(r.rowsJson).toString()), [[0, 0, [1, '2024-06-01T10:30:00+03:00', '2024-06-01T10:30:00+03:00', 0.5]],
    [3, 0, [4, 19783, 1709251200, 0.5]]]);
  assert.equal(r.rows.length, 0);
  assert.deepEqual(r.failures.map(([i, f]) => [i, f.permanent]), [[1, true], [2, true]]);
  assert.match(r.failures[0][1].message, /payload is not valid JSON/);
  assert.match(r.failures[1][1].message, /invalid timestamp `yesterday`/);
  // -0 would come back as 0 in JSON: that batch goes packed, -0 kept.
  const z = runJson(plugin, '[{"k": 1, "at": "2024-06-01", "f": -0.0}]', '[["e0", "x", 5, 1, null, null]]');
  assert.equal(z.rowsJson.length, 0);
  assert.equal(Buffer.from(z.rows).toString('hex').slice(-18), '04' + '0000000000000080');
});
