"""The Sluice plugin SDK for Python (componentize-py).

A plugin is a class with a name, a version, the event types it subscribes to, the tables it
writes, and a `handle(event, out)` method that emits rows for one event or raises `Permanent`
/ `Transient`. `export(plugin)` turns it into the `Handler` class componentize-py exports.

The SDK builds against `sluice:plugin@0.2.0` (`wit/0.2.0/sluice.wit`): the host hands it a
batch as one JSON text, parsed by one `json.loads` (native code inside the interpreter, with the
payloads already in it), and it returns the batch's rows as one `json.dumps` text, which the host
checks and converts per column in Rust. Per event, interpreted Python runs only the handler and
a few lines around it (docs/performance.md has the figures). A batch whose rows JSON cannot
carry exactly (NaN, integers beyond 64 bits, bytes, IP addresses...) is sent in the packed
encoding of the contract instead: u32 event index, u16 table index, u16 value count, then one
tagged value per column.

As the Rust SDK does:
- an event that raises loses the rows it emitted before it raised; its batch-mates go on;
- an exception that is not a `Failure` fails its event permanently with the exception's type
  and message (a bug in the handler is not fixed by retrying), instead of failing the batch;
- timestamps are parsed by the same RFC 3339 rules as the Rust SDK's, so the same payload
  gives the same row in either language.

Everything except `export`, `config` and `log` is plain Python: unit tests import the plugin
module and call `handle` without building a component.
"""

import json as _json
import re as _re
import struct as _struct
import sys as _sys
from datetime import date as _date
from datetime import datetime as _datetime
from datetime import timedelta as _timedelta
from datetime import timezone as _timezone

__all__ = [
    "Date",
    "DateTime",
    "Event",
    "Failure",
    "Output",
    "Permanent",
    "Plugin",
    "Table",
    "Timestamp",
    "Transient",
    "config",
    "export",
    "log",
    "parse_timestamp_ms",
    "parse_timestamp_ns",
]

EPOCH = _datetime(1970, 1, 1, tzinfo=_timezone.utc)
_EPOCH_DATE = _date(1970, 1, 1)


# ----- failures -------------------------------------------------------------------------------


class Failure(Exception):
    """An event the plugin could not handle. Raise `Permanent` or `Transient`."""

    permanent = True

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class Permanent(Failure):
    """The event itself is bad: the host dead-letters it at once."""

    permanent = True


class Transient(Failure):
    """Something outside the event failed: the host retries it with backoff."""

    permanent = False


# ----- dates and times ------------------------------------------------------------------------


class Date:
    """A ClickHouse `Date`: days since 1970-01-01."""

    __slots__ = ("_days", "_text")

    def __init__(self, days):
        self._days = int(days)
        self._text = None

    @property
    def days(self):
        if self._days is None:
            self._days = parse_timestamp_ns(self._text) // 86_400_000_000_000
        return self._days

    @staticmethod
    def of(value):
        if isinstance(value, Date):
            return value
        if isinstance(value, _datetime):
            return DateTime.of(value).date()
        if isinstance(value, _date):
            return Date((value - _EPOCH_DATE).days)
        raise TypeError(f"not a date: {value!r}")

    def __eq__(self, other):
        return isinstance(other, Date) and other.days == self.days

    def __repr__(self):
        return f"Date({(_EPOCH_DATE + _timedelta(days=self.days)).isoformat()})"


class DateTime:
    """A ClickHouse `DateTime`: whole seconds since the epoch, UTC."""

    __slots__ = ("_seconds", "_text")

    def __init__(self, seconds):
        self._seconds = int(seconds)
        self._text = None

    @property
    def seconds(self):
        if self._seconds is None:
            self._seconds = parse_timestamp_ns(self._text) // 1_000_000_000
        return self._seconds

    @staticmethod
    def from_millis(ms):
        return DateTime(ms // 1000)

    @staticmethod
    def parse(text):
        """Parses RFC 3339 (`2024-06-01T12:30:00.123Z`, `...+03:00`; no offset means UTC);
        `Permanent` if it is not one.

        A timestamp of the common forms is checked here and handed to the host as the text it
        is, which reads it into the same number (in Rust, where it is cheaper); the number is
        worked out here only when the handler asks for it (`seconds`).
        """
        if type(text) is str and _HOST_READS.match(text) is not None:
            t = DateTime.__new__(DateTime)
            t._seconds, t._text = None, text
            return t
        return DateTime.from_millis(parse_timestamp_ms(text))

    @staticmethod
    def of(value):
        if isinstance(value, DateTime):
            return value
        if isinstance(value, _datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_timezone.utc)
            return DateTime((value - EPOCH) // _timedelta(seconds=1))
        raise TypeError(f"not a datetime: {value!r}")

    def date(self):
        """The UTC calendar date of this instant."""
        if self._seconds is None:
            d = Date.__new__(Date)
            d._days, d._text = None, self._text
            return d
        return Date(self._seconds // 86_400)

    def __eq__(self, other):
        return isinstance(other, DateTime) and other.seconds == self.seconds

    def __repr__(self):
        return f"DateTime({(EPOCH + _timedelta(seconds=self.seconds)).isoformat()})"


class Timestamp:
    """A point in time with nanosecond precision: nanoseconds since the epoch, UTC. Fills a
    `DateTime64(p)` column of any precision (and a `DateTime` one with its seconds)."""

    __slots__ = ("nanos",)

    def __init__(self, nanos):
        self.nanos = int(nanos)

    @staticmethod
    def parse(text):
        """Parses RFC 3339 keeping up to nine fractional digits; no offset means UTC."""
        return Timestamp(parse_timestamp_ns(text))

    @staticmethod
    def of(value):
        if isinstance(value, Timestamp):
            return value
        if isinstance(value, DateTime):
            return Timestamp(value.seconds * 1_000_000_000)
        if isinstance(value, _datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_timezone.utc)
            delta = value - EPOCH
            micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            return Timestamp(micros * 1_000)
        if isinstance(value, (Date, _date)):
            return Timestamp(Date.of(value).days * 86_400 * 1_000_000_000)
        raise TypeError(f"not a timestamp: {value!r}")

    def ticks(self, precision):
        """Ticks of 10^-precision seconds (a `DateTime64(precision)`), toward the past."""
        return self.nanos // 10 ** (9 - min(precision, 9))

    @property
    def seconds(self):
        return self.nanos // 1_000_000_000

    def date(self):
        return Date(self.seconds // 86_400)

    def __eq__(self, other):
        return isinstance(other, Timestamp) and other.nanos == self.nanos

    def __repr__(self):
        return f"Timestamp({self.nanos}ns)"


def _days_from_civil(y, m, d):
    # Howard Hinnant's algorithm, as in the Rust SDK.
    y = y - 1 if m <= 2 else y
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def parse_timestamp_ms(text):
    """Milliseconds since the epoch of an RFC 3339 timestamp; `Permanent` if it is not one.

    Accepts exactly what the Rust SDK accepts: `YYYY-MM-DD`, then optionally `T`/`t`/space,
    `hh:mm:ss`, a fraction (milliseconds kept), and `Z` or `±hh:mm` (none means UTC).
    """
    return parse_timestamp_ns(text) // 1_000_000


# The forms `parse_timestamp_ns` accepts; ASCII digits only, as in the Rust SDK.
_RFC3339 = _re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?\Z"
)
_ORDINAL_EPOCH = _EPOCH_DATE.toordinal()
# The subset of those forms the host reads into exactly the same instant (every day of every
# month exists, offsets within a day, at most nine fractional digits): `DateTime.parse` hands
# these over as text.
_HOST_READS = _re.compile(
    r"[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    r"(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?\Z"
)


def parse_timestamp_ns(text):
    """Nanoseconds since the epoch of an RFC 3339 timestamp (up to nine fractional digits
    kept); `Permanent` if it is not one. The same rules as `parse_timestamp_ms`."""
    m = _RFC3339.match(text) if type(text) is str else None
    if m is None:
        raise Permanent(f"invalid timestamp `{text}`: expected RFC 3339 like 2024-06-01T12:30:00Z")
    y, mo, d, h, mi, s, frac, off = m.groups()
    y, mo, d = int(y), int(mo), int(d)
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        raise Permanent(f"invalid timestamp `{text}`: expected RFC 3339 like 2024-06-01T12:30:00Z")
    try:
        days = _date(y, mo, d).toordinal() - _ORDINAL_EPOCH
    except ValueError:  # 2024-02-31 and year 0: the Rust SDK counts on past the month's end
        days = _days_from_civil(y, mo, d)
    if h is None:
        return days * 86_400_000_000_000
    h, mi, s = int(h), int(mi), int(s)
    if h > 23 or mi > 59 or s > 60:
        raise Permanent(f"invalid timestamp `{text}`: expected RFC 3339 like 2024-06-01T12:30:00Z")
    ns = (days * 86_400 + h * 3600 + mi * 60 + s) * 1_000_000_000
    if frac:
        ns += int((frac + "00000000")[:9])
    if off and off != "Z" and off != "z":
        shift = (int(off[1:3]) * 60 + int(off[4:6])) * 60_000_000_000
        ns = ns - shift if off[0] == "+" else ns + shift
    return ns


# ----- events ---------------------------------------------------------------------------------

_JSON_TYPES = {str: "a string", float: "a number", int: "an integer", bool: "a boolean",
               dict: "an object", list: "an array"}


def _json_kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{_json.dumps(value)}`"
    if isinstance(value, (int, float)):
        return f"number `{value}`"
    if isinstance(value, str):
        return f"string {_json.dumps(value, ensure_ascii=False)}"
    return "an array" if isinstance(value, list) else "an object"


def _finite_float(text):
    # JSON has no infinities: `1e400` is out of range (as serde_json says), not `inf`.
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text}")
    return value


def _no_constant(name):
    # Python's json accepts NaN and Infinity; JSON (and the Rust SDK) does not.
    raise ValueError(f"invalid JSON value `{name}`")


# `fields` types a payload's values are checked against by exact type (bool is not an int here,
# as in JSON); a fields dict with any other type is checked by isinstance.
_EXACT = frozenset((str, float, int, bool, dict, list))
_SPECS = {}


def _spec(fields):
    """`fields` as (names, the types a payload usually has), cached per dict; None if a type
    needs isinstance. A payload whose values have exactly those types passes with two calls
    into native code; any other is checked field by field (an integer in a float field is fine)."""
    cached = _SPECS.get(id(fields))
    if cached is not None and cached[0] is fields:
        return cached[1]
    spec = None
    if all(ty in _EXACT for ty in fields.values()):
        spec = (tuple(fields), tuple(fields.values()))
    if len(_SPECS) > 256:
        _SPECS.clear()
    _SPECS[id(fields)] = (fields, spec)
    return spec


class _Fields:
    """The fields of a batch's events other than their payloads, parsed on first use: a
    handler that reads only payloads never pays for them."""

    __slots__ = ("text", "rows")

    def __init__(self, text):
        self.text, self.rows = text, None

    def of(self, i):
        if self.rows is None:
            self.rows = _json.loads(self.text)
        return self.rows[i]


def _events(payloads, fields):
    new = object.__new__
    for i, p in enumerate(payloads):
        e = new(Event)
        e._p, e._batch, e._i = p, fields, i
        yield e


class Event:
    """One event, as the host passes it (the fields of the WIT `event` record).

    Kept as the host sent it: the payload's value, and the batch's other fields, `[id, event
    type, timestamp ms, attempt, source, tenant]` (plus the payload's text when the host could
    not parse it), read when the handler asks for one of them.
    """

    __slots__ = ("_p", "_batch", "_i")

    def __init__(self, id, event_type, payload, timestamp_ms=0, source=None, tenant=None, attempt=1):
        text = payload if isinstance(payload, str) else _json.dumps(payload)
        self._p, self._i = None, 0
        self._batch = _Fields(None)
        self._batch.rows = [[id, event_type, timestamp_ms, attempt, source, tenant, text]]

    def _f(self):
        return self._batch.of(self._i)

    id = property(lambda self: self._f()[0], doc="The idempotency key (the producer's `id`, or `<stream>/<entry id>`).")
    event_type = property(lambda self: self._f()[1], doc="The event type (the stream name without its prefix).")
    timestamp_ms = property(lambda self: self._f()[2], doc="Event time, ms since the epoch.")
    attempt = property(lambda self: self._f()[3], doc="1 the first time, 2 on the first retry...")
    source = property(lambda self: self._f()[4], doc="The producer's `source` field, or None.")
    tenant = property(lambda self: self._f()[5], doc="The producer's `tenant` field, or None.")

    @property
    def payload(self):
        """The payload's JSON text (re-written from the parsed value when the host parsed it)."""
        if self._p is None:
            f = self._f()
            if len(f) > 6:
                return f[6]
        return _json.dumps(self._p, ensure_ascii=False, separators=(",", ":"))

    def json(self, fields=None):
        """The payload as a dict; `Permanent` naming the problem if it is not one.

        `fields` maps required field names to their Python type (`str`, `float` — which also
        takes integers —, `int`, `bool`, `dict`, `list`); a missing field or a wrong type fails
        the event with the same words the Rust SDK uses: "missing field `promoCodeId`".
        """
        value = self._p
        if value is None:
            f = self._f()
            if len(f) > 6:
                value = self._parse(f[6])
        if type(value) is not dict:
            raise Permanent(f"invalid {self.event_type} payload: payload must be a JSON object, got {_json_kind(value)}")
        if fields:
            spec = _spec(fields)
            if spec is None or tuple(map(type, map(value.get, spec[0]))) != spec[1]:
                self._check(value, fields)
        return value

    def _parse(self, text):
        # The host could not parse it (or this Event was made by hand): Python's parser judges,
        # with JSON's rules (no NaN, no infinities), and its words name the problem.
        prefix = f"invalid {self.event_type} payload: "
        try:
            return _json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
        except _json.JSONDecodeError as e:
            raise Permanent(prefix + f"payload is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
        except ValueError as e:
            raise Permanent(prefix + str(e)) from None

    def _check(self, value, fields):
        prefix = f"invalid {self.event_type} payload: "
        for name, ty in fields.items():
            if name not in value:
                raise Permanent(prefix + f"missing field `{name}`")
            v = value[name]
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) if ty is float else (
                isinstance(v, int) and not isinstance(v, bool) if ty is int else isinstance(v, ty))
            if not ok:
                raise Permanent(prefix + f"invalid type: {_json_kind(v)}, expected {_JSON_TYPES.get(ty, ty.__name__)} "
                                         f"for field `{name}`")


# ----- tables and rows ------------------------------------------------------------------------


class Table:
    """A table the plugin writes: its name, `(column, ClickHouse type)` pairs and layout."""

    def __init__(self, name, columns, *, engine="MergeTree", partition_by=None, order_by=(), settings=(),
                 comments=None):
        self.name = name
        self.columns = list(columns)
        self.names = [c for c, _ in self.columns]
        self.types = [t for _, t in self.columns]
        # "MergeTree", "ReplacingMergeTree", ("ReplacingMergeTree", "version_col"),
        # ("SummingMergeTree", ["col", ...]) or "AggregatingMergeTree".
        self.engine = engine
        self.partition_by = partition_by
        self.order_by = list(order_by)
        self.settings = list(settings)
        self.comments = dict(comments or {})
        # What `Output.row` does per value: date and time columns turn the SDK's date and time
        # types into the numbers the column counts; everything else goes to JSON as it is.
        # (index, the class whose parsed text the column takes as it is, or None, converter)
        self._converters = [(i, _as_text(ty), c) for i, (ty, c) in enumerate(zip(self.types, map(_converter, self.types)))
                            if c is not None]
        self._json_ready = all(map(_json_ready, self.types))


_TAG_NULL, _TAG_BOOL, _TAG_INT, _TAG_UINT, _TAG_FLOAT, _TAG_STRING, _TAG_BYTES, _TAG_ARRAY = range(8)
_I64_MIN, _I64_MAX, _U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _inner(ty):
    # `Nullable(T)` and `LowCardinality(T)` encode as `T`.
    ty = ty.strip()
    for wrapper in ("Nullable(", "LowCardinality("):
        if ty.startswith(wrapper) and ty.endswith(")"):
            return _inner(ty[len(wrapper) : -1])
    return ty


def _type_args(ty, name):
    """The argument types of `name(a, b, ...)` (top-level commas, quoted Enum names skipped),
    a tuple element's name dropped (`a UInt8` -> `UInt8`); [] if `ty` is not that type."""
    ty = _inner(ty)
    if not (ty.startswith(name + "(") and ty.endswith(")")):
        return []
    inner, out, depth, start, quoted, escaped = ty[len(name) + 1 : -1], [], 0, 0, False, False
    for i, c in enumerate(inner):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == "'":
            quoted = not quoted
        elif c == "(" and not quoted:
            depth += 1
        elif c == ")" and not quoted:
            depth -= 1
        elif c == "," and not quoted and depth == 0:
            out.append(inner[start:i].strip())
            start = i + 1
    out.append(inner[start:].strip())
    named = []
    for a in out:
        head, _, rest = a.partition(" ")
        named.append(rest.strip() if rest and "(" not in head and head.replace("_", "").isalnum() else a)
    return named


def _datetime64_precision(ty):
    base = _inner(ty)
    if base.startswith("DateTime64("):
        digits = ""
        for c in base[len("DateTime64(") :].lstrip():
            if not c.isdigit():
                break
            digits += c
        return min(int(digits or 3), 9)
    return None


_TEMPORAL = (Date, DateTime, Timestamp, _date)  # datetime is a date


def _temporal_int(value, base, precision):
    """A date or time as the number a column of `base` type (DateTime64: `precision`) counts."""
    if precision is not None:
        return Timestamp.of(value).ticks(precision)
    if base in ("Date", "Date32"):
        return value.days if isinstance(value, Date) else Timestamp.of(value).date().days
    if isinstance(value, DateTime):
        return value.seconds
    if isinstance(value, Date) or (isinstance(value, _date) and not isinstance(value, _datetime)):
        return Date.of(value).days * 86_400  # its midnight, UTC
    return Timestamp.of(value).seconds


def _converter(ty):
    """For a date or time column, a function turning the SDK's date and time values into the
    column's number (other values pass); None for other columns."""
    base, precision = _inner(ty), _datetime64_precision(ty)
    if precision is None and base not in ("Date", "Date32", "DateTime") and not base.startswith("DateTime("):
        return None

    # A value parsed from text that the column takes as text never gets here (`Output.row`).
    def convert(v):
        return _temporal_int(v, base, precision) if isinstance(v, _TEMPORAL) else v

    return convert


def _as_text(ty):
    """The SDK class whose values parsed from text a column takes as that text: plain Date and
    DateTime columns (not DateTime64, which keeps fractions the SDK's DateTime drops, nor a
    DateTime with a time zone, which reads a text without an offset in its zone)."""
    base = _inner(ty)
    return Date if base in ("Date", "Date32") else DateTime if base == "DateTime" else None


def _json_ready(ty):
    """Whether values of a column travel as JSON: not when a date or time or a Map with keys
    other than strings is nested in it (their encoding needs the element's type)."""
    base = _inner(ty)
    if not base.startswith(("Array(", "Tuple(", "Map(", "Nested(")):
        return True
    if base.startswith("Map("):
        key, value = (_type_args(base, "Map") + ["", ""])[:2]
        return _inner(key) == "String" and "Date" not in value and "Map(" not in value
    return "Date" not in base and "Map(" not in base


def _write_value(buf, value, ty):
    """Appends one tagged value; `ty` (the column's ClickHouse type) decides how dates, times,
    maps, tuples and array elements are written. The host checks the value against the column."""
    if value is None:
        buf.append(_TAG_NULL)
    elif isinstance(value, bool):
        buf += bytes((_TAG_BOOL, 1 if value else 0))
    elif isinstance(value, int):
        if _I64_MIN <= value <= _I64_MAX:
            buf.append(_TAG_INT)
            buf += _struct.pack("<q", value)
        elif 0 <= value <= _U64_MAX:
            buf.append(_TAG_UINT)
            buf += _struct.pack("<Q", value)
        else:
            # Wider integers travel as decimal text (Int128/256, UInt128/256, Decimal).
            _write_value(buf, str(value), ty)
    elif isinstance(value, float):
        buf.append(_TAG_FLOAT)
        buf += _struct.pack("<d", value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        buf.append(_TAG_STRING)
        buf += _struct.pack("<I", len(data))
        buf += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        buf.append(_TAG_BYTES)
        buf += _struct.pack("<I", len(value))
        buf += value
    elif isinstance(value, _TEMPORAL):
        _write_value(buf, _temporal_int(value, _inner(ty), _datetime64_precision(ty)), ty)
    elif isinstance(value, dict):
        # A Map(K, V) column takes [key, value] pairs.
        kt, vt = (_type_args(ty, "Map") + ["", ""])[:2]
        buf.append(_TAG_ARRAY)
        buf += _struct.pack("<I", len(value))
        for k, v in value.items():
            buf.append(_TAG_ARRAY)
            buf += _struct.pack("<I", 2)
            _write_value(buf, k, kt)
            _write_value(buf, v, vt)
    elif isinstance(value, (list, tuple)):
        tuple_types = _type_args(ty, "Tuple")
        if tuple_types:
            types = tuple_types + [""] * max(0, len(value) - len(tuple_types))
        else:
            element = (_type_args(ty, "Array") + [""])[0]
            types = [element] * len(value)
        buf.append(_TAG_ARRAY)
        buf += _struct.pack("<I", len(value))
        for v, t in zip(value, types):
            _write_value(buf, v, t)
    elif type(value).__name__ in ("IPv4Address", "IPv6Address"):
        _write_value(buf, str(value), ty)
    else:
        raise Permanent(f"cannot write a {type(value).__name__} value")


# Digits as zeros: an integer beyond 64 bits is then twenty zeros in a row (or a longer text of
# digits: those batches go packed too, to be safe). Found with bytes.translate and `in`, both
# native and far faster than a regular expression over the text.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS = b"0" * 20


class Output:
    """Collects the rows of a batch: `(event index, table index, [values])`, sent as JSON or,
    when JSON cannot carry them exactly, in the packed encoding."""

    def __init__(self, tables):
        self._tables = {t.name: (i, t) for i, t in enumerate(tables)}
        self._types = [t.types for t in tables]
        self._json_ready = all(t._json_ready for t in tables)
        self.rows = []
        self.event = 0

    def row(self, table, values):
        """Emits one row of `table` (a `Table` or its name) for the current event.

        `values` maps every column name to its value: None, bool, int, float, str, bytes,
        `Date`/`DateTime`/`Timestamp`/`datetime.date`/`datetime.datetime`, or a list for `Array`
        columns. A time column also takes the RFC 3339 text as it came: the host reads it.
        """
        entry = self._tables.get(table if type(table) is str else table.name)
        if entry is None:
            raise Permanent(f"plugin bug: table `{table if type(table) is str else table.name}` is not declared in the manifest")
        index, t = entry
        try:
            row = list(map(values.__getitem__, t.names))
        except KeyError:
            row = None
        if row is None or len(values) != len(row):
            missing = [c for c in t.names if c not in values]
            extra = [c for c in values if c not in t.names]
            raise Permanent(f"plugin bug: row for `{t.name}`: missing columns {missing}, unknown columns {extra}")
        for i, cls, convert in t._converters:
            v = row[i]
            # The common case without a call: a timestamp parsed from text goes as that text.
            row[i] = v._text if type(v) is cls and v._text is not None else convert(v)
        self.rows.append((self.event, index, row))

    def json(self):
        """The rows as `rows-json` (JSON text in UTF-8), or None if JSON cannot carry them
        exactly."""
        if not self._json_ready:
            return None
        try:
            text = _json.dumps(self.rows, ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":"))
            data = text.encode("utf-8")  # a lone surrogate cannot cross into the host as a string
        except (TypeError, ValueError):  # bytes, IP addresses, NaN...
            return None
        # An integer beyond 64 bits would reach the host as a float: pack those batches.
        return None if _TWENTY_DIGITS in data.translate(_DIGITS_AS_ZEROS) else data

    def packed(self, failures):
        """The rows in the packed encoding; an event whose values cannot be written fails
        (appended to `failures` as (index, Failure)) and loses its rows."""
        buf, rows, i = bytearray(), self.rows, 0
        while i < len(rows):
            event, start = rows[i][0], len(buf)
            try:
                while i < len(rows) and rows[i][0] == event:
                    _, index, row = rows[i]
                    buf += _struct.pack("<IHH", event, index, len(row))
                    for value, ty in zip(row, self._types[index]):
                        _write_value(buf, value, ty)
                    i += 1
            except Exception as e:
                del buf[start:]
                failures.append((event, e if isinstance(e, Failure) else Permanent(f"{type(e).__name__}: {e}")))
                while i < len(rows) and rows[i][0] == event:
                    i += 1
        return bytes(buf)

    @property
    def buffer(self):
        """The rows packed (for tests of the encoding)."""
        failures = []
        buf = self.packed(failures)
        if failures:
            raise failures[0][1]
        return buf


# ----- the plugin -----------------------------------------------------------------------------


class Plugin:
    """Subclass it: set `name`, `version`, `subscriptions`, `tables` and define `handle`."""

    name = ""
    version = "0.1.0"
    subscriptions = []
    tables = []

    def handle(self, event, out):
        raise NotImplementedError

    def _handle_all(self, events):
        out = Output(self.tables)
        rows, failures, handle = out.rows, [], self.handle
        for i, event in enumerate(events):
            out.event = i
            start = len(rows)
            try:
                handle(event, out)
            except Failure as f:
                del rows[start:]
                failures.append((i, f))
            except Exception as e:  # a bug: fail this event, not the batch
                del rows[start:]
                failures.append((i, Permanent(f"{type(e).__name__}: {e}")))
        return out, failures

    def run(self, events):
        """Handles a batch as the host would: returns (packed rows, [(index, Failure)])."""
        out, failures = self._handle_all(events)
        rows = out.packed(failures)
        return rows, sorted(failures, key=lambda f: f[0])

    def run_json(self, payloads, fields):
        """Handles a batch given as `handle-json` takes it (`wit/0.2.0/sluice.wit`): returns
        (rows-json bytes or None, packed rows, [(index, Failure)])."""
        out, failures = self._handle_all(_events(_json.loads(payloads), _Fields(fields)))
        text = out.json()
        return (text, b"", failures) if text is not None else (None, out.packed(failures), failures)


# ----- host imports, usable outside a component for tests --------------------------------------

_test_config = {}


def config(key):
    """The plugin's `[settings]` value for `key` (sidecar `<stem>.toml`), or None.

    Outside a component (unit tests) it reads `sluice_sdk._test_config`.
    """
    try:
        from wit_world.imports import host
    except ImportError:
        return _test_config.get(key)
    return host.config_get(key)


def log(level, message, **fields):
    """Writes a log line attributed to the plugin; level is trace/debug/info/warn/error."""
    try:
        from wit_world.imports import host
    except ImportError:
        print(f"{level}: {message} {fields}", file=_sys.stderr)
        return
    host.log(getattr(host.Level, level.upper()), message, [(k, str(v)) for k, v in fields.items()])


def export(plugin):
    """The `Handler` class componentize-py exports for `plugin` (an instance of `Plugin`).

    In the app module: `Handler = sluice_sdk.export(MyPlugin())`.
    """

    class Handler:
        def describe(self):
            from wit_world.imports import types

            def engine(e):
                if e == "MergeTree":
                    return types.Engine_MergeTree()
                if e == "AggregatingMergeTree":
                    return types.Engine_AggregatingMergeTree()
                kind, arg = (e, None) if isinstance(e, str) else e
                if kind == "ReplacingMergeTree":
                    return types.Engine_ReplacingMergeTree(arg)
                if kind == "SummingMergeTree":
                    return types.Engine_SummingMergeTree(list(arg or []))
                raise ValueError(f"unknown engine {e!r}")

            return types.Manifest(
                name=plugin.name,
                version=plugin.version,
                subscriptions=list(plugin.subscriptions),
                tables=[
                    types.Table(
                        name=t.name,
                        columns=[types.Column(c, ty, t.comments.get(c)) for c, ty in t.columns],
                        engine=engine(t.engine),
                        partition_by=t.partition_by,
                        order_by=t.order_by,
                        settings=t.settings,
                    )
                    for t in plugin.tables
                ],
                extensions=[],
            )

        def handle_json(self, payloads, events):
            from wit_world.imports import types

            rows_json, rows, failures = plugin.run_json(payloads, events)
            return types.BatchOutput(
                rows=rows,
                rows_json=rows_json or b"",
                failures=[
                    types.EventFailure(
                        i, types.FailureKind.PERMANENT if f.permanent else types.FailureKind.TRANSIENT, f.message
                    )
                    for i, f in failures
                ],
            )

    return Handler
