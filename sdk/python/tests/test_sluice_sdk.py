"""Unit tests of the Python SDK under plain Python: `python3 -m unittest discover sdk/python/tests`."""

import json
import os
import struct
import sys
import unittest
from datetime import date, datetime, timezone

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sluice_sdk import (  # noqa: E402
    Date, DateTime, Event, Output, Permanent, Plugin, Table, Timestamp, Transient, parse_timestamp_ms, parse_timestamp_ns,
)


class Timestamps(unittest.TestCase):
    def test_parse_as_the_rust_sdk_parses(self):
        self.assertEqual(parse_timestamp_ms("1970-01-01T00:00:00Z"), 0)
        self.assertEqual(parse_timestamp_ms("2024-06-01T12:30:00.123Z"), 1_717_245_000_123)
        self.assertEqual(parse_timestamp_ms("2024-06-01T15:30:00+03:00"), 1_717_245_000_000)
        self.assertEqual(parse_timestamp_ms("2024-06-01"), 1_717_200_000_000)
        self.assertEqual(parse_timestamp_ms("2024-06-01T12:30:00.5"), 1_717_245_000_500)
        self.assertEqual(DateTime.parse("1969-12-31T23:59:59.999Z").seconds, -1)
        self.assertEqual(DateTime.parse("2024-06-01T12:30:00Z").date(), Date(19_875))
        for bad in ["yesterday", "2024-13-01T00:00:00Z", "2024-06-01T12:30", "2024-06-01T12:30:00+0300", "x" * 30]:
            with self.assertRaises(Permanent, msg=bad):
                parse_timestamp_ms(bad)


class CurrentTypes(unittest.TestCase):
    def test_nanoseconds_and_the_types_of_current_releases(self):
        self.assertEqual(parse_timestamp_ns("2024-06-01T12:30:00.123456789Z"), 1_717_245_000_123_456_789)
        t = Timestamp.parse("1969-12-31T23:59:59.5Z")
        self.assertEqual((t.seconds, t.ticks(1)), (-1, -5))
        ts = Table("t", [("t3", "Nullable(DateTime64(3, 'UTC'))"), ("dt", "DateTime"), ("m", "Map(String, DateTime64(1))"),
                         ("tu", "Tuple(a UInt8, b DateTime64(6))"), ("big", "Int256"), ("ip", "IPv6"), ("d32", "Date32")])
        out = Output([ts])
        at = datetime(2024, 6, 1, 12, 30, 0, 123456, tzinfo=timezone.utc)
        import ipaddress
        out.row(ts, {"t3": at, "dt": Timestamp.of(at), "m": {"k": DateTime(10)}, "tu": (7, at), "big": -(2**200),
                     "ip": ipaddress.ip_address("::1"), "d32": date(1900, 1, 1)})
        q = lambda n: b"\x02" + struct.pack("<q", n)  # noqa: E731
        s = lambda t: b"\x05" + struct.pack("<I", len(t.encode())) + t.encode()  # noqa: E731
        arr = lambda n: b"\x07" + struct.pack("<I", n)  # noqa: E731
        expected = (struct.pack("<IHH", 0, 0, 7) + q(1_717_245_000_123) + q(1_717_245_000)
                    + arr(1) + arr(2) + s("k") + q(100)
                    + arr(2) + q(7) + q(1_717_245_000_123_456)
                    + s(str(-(2**200))) + s("::1") + q(-25_567))
        self.assertEqual(bytes(out.buffer), expected)


class Rows(unittest.TestCase):
    def test_a_row_is_packed_byte_for_byte_as_the_wit_describes(self):
        t = Table("t", [("d", "Date"), ("at", "DateTime"), ("n", "UInt8"), ("f", "Float64"),
                        ("s", "Nullable(String)"), ("a", "Array(Int32)"), ("py", "Date")])
        out = Output([t])
        out.event = 3
        at = datetime(1970, 1, 1, 0, 0, 7, tzinfo=timezone.utc)
        out.row(t, {"d": Date(2), "at": at, "n": 5, "f": 1.0, "s": None, "a": [1, -1], "py": date(1970, 1, 3)})
        q = lambda n: b"\x02" + struct.pack("<q", n)  # noqa: E731
        expected = (struct.pack("<IHH", 3, 0, 7) + q(2) + q(7) + q(5) + b"\x04" + struct.pack("<d", 1.0)
                    + b"\x00" + b"\x07" + struct.pack("<I", 2) + q(1) + q(-1) + q(2))
        self.assertEqual(bytes(out.buffer), expected)

    def test_undeclared_tables_and_missing_columns_fail_the_event(self):
        out = Output([Table("t", [("a", "String")])])
        with self.assertRaisesRegex(Permanent, "not declared"):
            out.row("u", {"a": "x"})
        with self.assertRaisesRegex(Permanent, r"missing columns \['a'\], unknown columns \['b'\]"):
            out.row("t", {"b": "x"})


class Batches(unittest.TestCase):
    def test_a_failing_event_loses_its_rows_and_a_bug_fails_only_its_event(self):
        t = Table("t", [("k", "UInt32")])

        class P(Plugin):
            tables = [t]

            def handle(self, event, out):
                p = event.json({"k": int})
                out.row(t, {"k": p["k"]})
                then = p.get("then")
                if then == "permanent":
                    raise Permanent("bad event")
                if then == "transient":
                    raise Transient("try later")
                if then == "bug":
                    return {}["missing"]

        payloads = [{"k": 1}, {"k": 2, "then": "permanent"}, {"k": 3, "then": "transient"},
                    {"k": 4, "then": "bug"}, {"k": True}, {"k": 5}]
        rows, failures = P().run([Event(f"e{i}", "x", p) for i, p in enumerate(payloads)])
        self.assertEqual(len(rows), 2 * (8 + 9))
        self.assertEqual([(i, f.permanent) for i, f in failures], [(1, True), (2, False), (3, True), (4, True)])
        self.assertEqual(failures[2][1].message, "KeyError: 'missing'")
        self.assertEqual(failures[3][1].message,
                         "invalid x payload: invalid type: boolean `true`, expected an integer for field `k`")

    def test_payloads_that_are_not_json_objects_or_hold_non_finite_numbers_fail(self):
        e = lambda p: Event("e", "T", p)  # noqa: E731
        for payload, needle in [('{"a": ', "invalid T payload: "), ("[1]", "payload must be a JSON object, got an array"),
                                ('{"a": 1e400}', "number out of range"), ('{"a": NaN}', "invalid JSON value `NaN`")]:
            with self.assertRaisesRegex(Permanent, needle):
                e(payload).json()


class JsonBatches(unittest.TestCase):
    """`handle-json` (sluice:plugin@0.2.0): a batch in as one JSON text, rows out as one."""

    t = Table("t", [("k", "UInt64"), ("d", "Date"), ("at", "DateTime"), ("f", "Float64")])

    class P(Plugin):
        def handle(self, event, out):
            p = event.json({"k": int, "at": str})
            at = DateTime.parse(p["at"])
            out.row(JsonBatches.t, {"k": p["k"], "d": at.date(), "at": at, "f": p.get("f", 0.5)})

    def run_json(self, *payloads):
        plugin = self.P()
        plugin.tables = [self.t]
        fields = [[f"e{i}", "x", 5, 1, None, None] + ([p] if isinstance(p, str) else []) for i, p in enumerate(payloads)]
        values = [None if isinstance(p, str) else p for p in payloads]
        return plugin.run_json(json.dumps(values), json.dumps(fields))

    def test_rows_come_back_as_json_with_timestamps_as_they_came(self):
        rows_json, packed, failures = self.run_json(
            {"k": 1, "at": "2024-06-01T10:30:00+03:00"}, '{"k": ', {"k": 3, "at": "yesterday"}, {"k": 4, "at": "2024-02-30"})
        self.assertEqual(packed, b"")
        # A form the host reads alike goes as text; 2024-02-30 (the Rust SDK's March 1) as numbers.
        self.assertEqual(json.loads(rows_json), [[0, 0, [1, "2024-06-01T10:30:00+03:00", "2024-06-01T10:30:00+03:00", 0.5]],
                                                 [3, 0, [4, 19_783, 1_709_251_200, 0.5]]])
        self.assertEqual([(i, f.permanent) for i, f in failures], [(1, True), (2, True)])
        self.assertIn("payload is not valid JSON", failures[0][1].message)
        self.assertIn("invalid timestamp `yesterday`", failures[1][1].message)

    def test_what_json_cannot_carry_exactly_goes_packed(self):
        for payload in [{"k": 2**64, "at": "2024-06-01"}, {"k": 1, "at": "2024-06-01", "f": float("nan")}]:
            rows_json, packed, failures = self.run_json(payload)
            self.assertEqual((rows_json, failures), (None, []))
            self.assertEqual(packed[:8], struct.pack("<IHH", 0, 0, 4))
        rows_json, packed, _ = self.run_json({"k": 2**64, "at": "2024-06-01"})
        self.assertIn(str(2**64).encode(), packed)


if __name__ == "__main__":
    unittest.main()
