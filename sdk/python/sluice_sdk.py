"""The Sluice plugin SDK for Python (componentize-py).

A plugin is a class with a name, a version, the event types it subscribes to, the tables it
writes, and a `handle(event, out)` method that emits rows for one event or raises `Permanent`
/ `Transient`. `export(plugin)` turns it into the `Handler` class componentize-py exports.

The SDK does what the Rust SDK does, in the same encoding (see `wit/sluice.wit`):
- rows are packed into one buffer per batch: u32 event index, u16 table index, u16 value
  count, then one tagged value per column;
- an event that raises loses the rows it emitted before it raised; its batch-mates go on;
- an exception that is not a `Failure` fails its event permanently with the exception's type
  and message (a bug in the handler is not fixed by retrying), instead of failing the batch;
- timestamps are parsed by the same RFC 3339 rules as the Rust SDK's, so the same payload
  gives the same row in either language.

Everything except `export`, `config` and `log` is plain Python: unit tests import the plugin
module and call `handle` without building a component.
"""

import json as _json
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

    __slots__ = ("days",)

    def __init__(self, days):
        self.days = int(days)

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

    __slots__ = ("seconds",)

    def __init__(self, seconds):
        self.seconds = int(seconds)

    @staticmethod
    def from_millis(ms):
        return DateTime(ms // 1000)

    @staticmethod
    def parse(text):
        """Parses RFC 3339 (`2024-06-01T12:30:00.123Z`, `...+03:00`; no offset means UTC)."""
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
        return Date(self.seconds // 86_400)

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


def parse_timestamp_ns(text):
    """Nanoseconds since the epoch of an RFC 3339 timestamp (up to nine fractional digits
    kept); `Permanent` if it is not one. The same rules as `parse_timestamp_ms`."""

    def bad():
        return Permanent(f"invalid timestamp `{text}`: expected RFC 3339 like 2024-06-01T12:30:00Z")

    if not isinstance(text, str):
        raise bad()
    b = text

    def num(start, length):
        s = b[start : start + length]
        if len(s) != length or not all("0" <= c <= "9" for c in s):
            raise bad()
        return int(s)

    if len(b) < 10 or b[4] != "-" or b[7] != "-":
        raise bad()
    y, mo, d = num(0, 4), num(5, 2), num(8, 2)
    if not 1 <= mo <= 12 or not 1 <= d <= 31:
        raise bad()
    ns = _days_from_civil(y, mo, d) * 86_400_000_000_000
    if len(b) == 10:
        return ns
    if b[10] not in "Tt " or len(b) < 19 or b[13] != ":" or b[16] != ":":
        raise bad()
    h, mi, s = num(11, 2), num(14, 2), num(17, 2)
    if h > 23 or mi > 59 or s > 60:
        raise bad()
    ns += (h * 3600 + mi * 60 + s) * 1_000_000_000
    i = 19
    if i < len(b) and b[i] == ".":
        i += 1
        start = i
        while i < len(b) and "0" <= b[i] <= "9":
            i += 1
        if i == start:
            raise bad()
        ns += int((b[start:i] + "00000000")[:9])
    rest = b[i:]
    if rest == "" or rest in ("Z", "z"):
        return ns
    if len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
        off = (num(i + 1, 2) * 60 + num(i + 4, 2)) * 60_000_000_000
        return ns - off if rest[0] == "+" else ns + off
    raise bad()


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


class Event:
    """One event, as the host passes it (the WIT `event` record)."""

    __slots__ = ("id", "event_type", "timestamp_ms", "payload", "source", "tenant", "attempt")

    def __init__(self, id, event_type, payload, timestamp_ms=0, source=None, tenant=None, attempt=1):
        self.id = id
        self.event_type = event_type
        self.timestamp_ms = timestamp_ms
        self.payload = payload if isinstance(payload, str) else _json.dumps(payload)
        self.source = source
        self.tenant = tenant
        self.attempt = attempt

    def json(self, fields=None):
        """The payload as a dict; `Permanent` naming the problem if it is not one.

        `fields` maps required field names to their Python type (`str`, `float` — which also
        takes integers —, `int`, `bool`, `dict`, `list`); a missing field or a wrong type fails
        the event with the same words the Rust SDK uses: "missing field `promoCodeId`".
        """
        prefix = f"invalid {self.event_type} payload: "
        try:
            value = _json.loads(self.payload, parse_float=_finite_float, parse_constant=_no_constant)
        except _json.JSONDecodeError as e:
            raise Permanent(prefix + f"payload is not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
        except ValueError as e:
            raise Permanent(prefix + str(e)) from None
        if not isinstance(value, dict):
            raise Permanent(prefix + f"payload must be a JSON object, got {_json_kind(value)}")
        for name, ty in (fields or {}).items():
            if name not in value:
                raise Permanent(prefix + f"missing field `{name}`")
            v = value[name]
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) if ty is float else (
                isinstance(v, int) and not isinstance(v, bool) if ty is int else isinstance(v, ty))
            if not ok:
                raise Permanent(prefix + f"invalid type: {_json_kind(v)}, expected {_JSON_TYPES.get(ty, ty.__name__)} "
                                         f"for field `{name}`")
        return value


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
    elif isinstance(value, (Date, DateTime, Timestamp, _date)):
        base = _inner(ty)
        precision = _datetime64_precision(ty)
        if precision is not None:
            _write_value(buf, Timestamp.of(value).ticks(precision), ty)
        elif base in ("Date", "Date32"):
            _write_value(buf, value.days if isinstance(value, Date) else Timestamp.of(value).date().days, ty)
        elif isinstance(value, Date) or (isinstance(value, _date) and not isinstance(value, _datetime)):
            _write_value(buf, Date.of(value).days * 86_400, ty)  # its midnight, UTC
        else:
            _write_value(buf, Timestamp.of(value).seconds, ty)
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


class Output:
    """Collects the rows of a batch in the packed encoding of the WIT contract."""

    def __init__(self, tables):
        self._tables = {t.name: (i, t) for i, t in enumerate(tables)}
        self.buffer = bytearray()
        self.event = 0

    def row(self, table, values):
        """Emits one row of `table` (a `Table` or its name) for the current event.

        `values` maps every column name to its value: None, bool, int, float, str, bytes,
        `Date`/`DateTime`/`datetime.date`/`datetime.datetime`, or a list for `Array` columns.
        """
        name = table.name if isinstance(table, Table) else table
        if name not in self._tables:
            raise Permanent(f"plugin bug: table `{name}` is not declared in the manifest")
        index, t = self._tables[name]
        missing = [c for c in t.names if c not in values]
        extra = [c for c in values if c not in t.names]
        if missing or extra:
            raise Permanent(f"plugin bug: row for `{name}`: missing columns {missing}, unknown columns {extra}")
        self.buffer += _struct.pack("<IHH", self.event, index, len(t.names))
        for column, ty in t.columns:
            _write_value(self.buffer, values[column], ty)


# ----- the plugin -----------------------------------------------------------------------------


class Plugin:
    """Subclass it: set `name`, `version`, `subscriptions`, `tables` and define `handle`."""

    name = ""
    version = "0.1.0"
    subscriptions = []
    tables = []

    def handle(self, event, out):
        raise NotImplementedError

    def run(self, events):
        """Handles a batch as the host would: returns (packed rows, [(index, Failure)])."""
        out = Output(self.tables)
        failures = []
        for i, event in enumerate(events):
            out.event = i
            start = len(out.buffer)
            try:
                self.handle(event, out)
            except Failure as f:
                del out.buffer[start:]
                failures.append((i, f))
            except Exception as e:  # a bug: fail this event, not the batch
                del out.buffer[start:]
                failures.append((i, Permanent(f"{type(e).__name__}: {e}")))
        return bytes(out.buffer), failures


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

        def handle_batch(self, events):
            from wit_world.imports import types

            batch = [
                Event(e.id, e.event_type, e.payload, e.timestamp_ms, e.source, e.tenant, e.attempt) for e in events
            ]
            rows, failures = plugin.run(batch)
            return types.BatchOutput(
                rows=rows,
                failures=[
                    types.EventFailure(
                        i, types.FailureKind.PERMANENT if f.permanent else types.FailureKind.TRANSIENT, f.message
                    )
                    for i, f in failures
                ],
            )

    return Handler
