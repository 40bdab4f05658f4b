//! Every supported ClickHouse type written through a plugin and read back exactly with
//! clickhouse-client, on 18.16 and 26.9; the types only current releases have refused by name
//! on 18.16; enums and decimals as plugins nobody here wrote declare them.
//!
//! All use the test-only `echo` plugin (plugins/testing/echo).

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use sluice_tests::echo::{CONFIG, manifest, publish, start_host};
use sluice_tests::{
    ClickHouse, Host, Redis, Release, config_file, dead_letters, install_plugin, on_every_release, sluice, test_plugin,
    wait_until,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// What `hex(reinterpretAsString(x))` shows of a float's little-endian bytes.
fn float_hex(le: &[u8]) -> String {
    let end = le.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    hex(&le[..end])
}

/// The columns of the round-trip table: every type the host supports.
const ALL_TYPES: &[(&str, &str)] = &[
    ("k", "UInt32"),
    ("u8", "UInt8"),
    ("u16", "UInt16"),
    ("u32", "UInt32"),
    ("u64", "UInt64"),
    ("i8", "Int8"),
    ("i16", "Int16"),
    ("i32", "Int32"),
    ("i64", "Int64"),
    ("f32", "Float32"),
    ("f64", "Float64"),
    ("s", "String"),
    ("fs", "FixedString(4)"),
    ("d", "Date"),
    ("dt", "DateTime"),
    ("uid", "UUID"),
    ("d9", "Decimal(9, 2)"),
    ("d18", "Decimal(18, 4)"),
    ("d38", "Decimal(38, 10)"),
    ("e8", "Enum8('a' = -128, 'b' = 0, 'c' = 127)"),
    ("e16", "Enum16('x' = -32768, 'y' = 32767)"),
    ("ns", "Nullable(String)"),
    ("ni", "Nullable(Int64)"),
    ("arr", "Array(String)"),
    ("an", "Array(Nullable(UInt8))"),
    ("aa", "Array(Array(Int32))"),
    ("lc", "LowCardinality(String)"),
    ("lcn", "LowCardinality(Nullable(String))"),
    ("flag", "UInt8"),
];

/// What the read-back query selects, by name, for messages.
const SELECTED: &[&str] = &[
    "k",
    "u8",
    "u16",
    "u32",
    "u64",
    "i8",
    "i16",
    "i32",
    "i64",
    "f32",
    "f64",
    "s",
    "fs",
    "d",
    "dt",
    "uid",
    "d9",
    "d18",
    "d38",
    "e8",
    "e16",
    "ns",
    "ni",
    "arr",
    "an",
    "aa",
    "lc",
    "lcn",
    "isNull(lcn)",
    "flag",
];

fn every_type_round_trips_exactly(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    let tables = json!([{"name": "all_types", "columns": ALL_TYPES, "order_by": ["k"]}]);
    install_plugin(dir.path(), &test_plugin("echo"), "types", &[("manifest", &manifest("types", "1", tables))])?;
    let config = config_file(dir.path(), CONFIG)?;

    let unicode = "Grüße, 世界 🚀 tab\there \\ 'q' \"dq\"\nnext line";
    // Three rows: minimums and empties; maximums and unicode; ordinary values given in the
    // other accepted forms (days and seconds as integers, decimals from numbers, enums by value).
    let rows = [
        json!([1, 0, 0, 0, 0, -128, -32768, -2147483648i64, i64::MIN, {"float": "-inf"}, {"float": "nan"}, "", "",
               "1970-01-01", 0, "00000000-0000-0000-0000-000000000000", "-9999999.99", "-99999999999999.9999",
               "-9999999999999999999999999999.9999999999", "a", "x", null, null, [], [], [], "", null, false]),
        json!([
            2,
            255,
            65535,
            4294967295u64,
            u64::MAX,
            127,
            32767,
            2147483647,
            i64::MAX,
            f32::MAX as f64,
            f64::MAX,
            unicode,
            "ab",
            "2149-06-06",
            4294967295u64,
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "9999999.99",
            "99999999999999.9999",
            "9999999999999999999999999999.9999999999",
            "c",
            "y",
            "",
            -1,
            ["", "ü", "a'b"],
            [null, 0, 255],
            [[1], [], [-2147483648i64, 2147483647]],
            "Москва",
            "",
            true
        ]),
        json!([
            3,
            7,
            300,
            70000,
            1,
            -1,
            -300,
            -70000,
            -1,
            0.1,
            -0.0,
            "plain",
            "abcd",
            19875,
            "2024-06-01T12:34:56+02:00",
            "6f1c2d3e-4b5a-4c6d-8e9f-0a1b2c3d4e5f",
            12,
            0.1,
            "0.0000000001",
            0,
            "y",
            "x",
            0,
            ["one"],
            [1],
            [[0]],
            "x",
            "y",
            1
        ]),
    ];
    let payloads: Vec<Value> = rows.iter().map(|r| json!({"rows": [{"table": "all_types", "values": r}]})).collect();
    let mut conn = redis.conn()?;
    publish(&mut conn, "types.event", &payloads)?;
    let _host = start_host(&redis, &ch, dir.path(), &config)?;
    wait_until("3 rows in all_types", Duration::from_secs(60), || ch.rows("all_types") == 3)?;

    // Read back with clickhouse-client: strings and floats as the hex of their bytes, so that
    // the comparison is byte for byte (reinterpretAsString drops trailing zero bytes).
    let got = ch.client(
        "SELECT k, u8, u16, u32, u64, i8, i16, i32, i64, hex(reinterpretAsString(f32)), hex(reinterpretAsString(f64)), \
         hex(s), hex(fs), toUInt16(d), toUnixTimestamp(dt), uid, d9, d18, d38, e8, e16, hex(ns), ni, \
         arrayMap(x -> hex(x), arr), an, aa, hex(toString(lc)), hex(assumeNotNull(lcn)), isNull(lcn), flag \
         FROM analytics.all_types ORDER BY k FORMAT TabSeparated",
    )?;
    let expected = [
        [
            "1".to_string(),
            "0".into(),
            "0".into(),
            "0".into(),
            "0".into(),
            "-128".into(),
            "-32768".into(),
            "-2147483648".into(),
            i64::MIN.to_string(),
            float_hex(&f32::NEG_INFINITY.to_le_bytes()),
            float_hex(&f64::NAN.to_le_bytes()),
            "".into(),
            "00000000".into(),
            "0".into(), // 18.16 shows day 0 as 0000-00-00: compare day numbers
            "0".into(),
            "00000000-0000-0000-0000-000000000000".into(),
            "-9999999.99".into(),
            "-99999999999999.9999".into(),
            "-9999999999999999999999999999.9999999999".into(),
            "a".into(),
            "x".into(),
            "\\N".into(),
            "\\N".into(),
            "[]".into(),
            "[]".into(),
            "[]".into(),
            "".into(),
            "".into(),
            "1".into(),
            "0".into(),
        ],
        [
            "2".to_string(),
            "255".into(),
            "65535".into(),
            "4294967295".into(),
            u64::MAX.to_string(),
            "127".into(),
            "32767".into(),
            "2147483647".into(),
            i64::MAX.to_string(),
            float_hex(&f32::MAX.to_le_bytes()),
            float_hex(&f64::MAX.to_le_bytes()),
            hex(unicode.as_bytes()),
            "61620000".into(),
            "65535".into(),
            "4294967295".into(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff".into(),
            "9999999.99".into(),
            "99999999999999.9999".into(),
            "9999999999999999999999999999.9999999999".into(),
            "c".into(),
            "y".into(),
            "".into(),
            "-1".into(),
            format!("['','{}','{}']", hex("ü".as_bytes()), hex(b"a'b")),
            "[NULL,0,255]".into(),
            "[[1],[],[-2147483648,2147483647]]".into(),
            hex("Москва".as_bytes()),
            "".into(),
            "0".into(),
            "1".into(),
        ],
        [
            "3".to_string(),
            "7".into(),
            "300".into(),
            "70000".into(),
            "1".into(),
            "-1".into(),
            "-300".into(),
            "-70000".into(),
            "-1".into(),
            float_hex(&0.1f32.to_le_bytes()),
            float_hex(&(-0.0f64).to_le_bytes()),
            hex(b"plain"),
            hex(b"abcd"),
            "19875".into(),
            "1717238096".into(),
            "6f1c2d3e-4b5a-4c6d-8e9f-0a1b2c3d4e5f".into(),
            "12.00".into(),
            "0.1000".into(),
            "0.0000000001".into(),
            "b".into(),
            "y".into(),
            hex(b"x"),
            "0".into(),
            format!("['{}']", hex(b"one")),
            "[1]".into(),
            "[[0]]".into(),
            hex(b"x"),
            hex(b"y"),
            "0".into(),
            "1".into(),
        ],
    ];
    let got_rows: Vec<Vec<&str>> = got.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(got_rows.len(), 3, "{got}");
    for (row, (g, e)) in got_rows.iter().zip(&expected).enumerate() {
        for (i, (gv, ev)) in g.iter().zip(e.iter()).enumerate() {
            assert_eq!(gv, ev, "row {}, column {}", row + 1, SELECTED[i]);
        }
        assert_eq!(g.len(), e.len(), "row {}: {g:?}", row + 1);
    }
    // Only the three rows arrived and nothing was dead-lettered.
    assert!(dead_letters(&mut conn).is_empty(), "{:?}", dead_letters(&mut conn));
    Ok(())
}

on_every_release!(every_type_round_trips_exactly);

on_every_release!(current_types_round_trip_exactly_and_a_server_without_them_refuses_them_by_name);

/// The types current releases add, in one table; 18.16 has none of those marked `new`.
const CURRENT_TYPES: &[(&str, &str)] = &[
    ("k", "UInt32"),
    ("dt64", "DateTime64(3)"),
    ("dt64tz", "DateTime64(6, 'Asia/Tokyo')"),
    ("dttz", "DateTime('Europe/Moscow')"),
    ("d32", "Date32"),
    ("b", "Bool"),
    ("i128", "Int128"),
    ("i256", "Int256"),
    ("u128", "UInt128"),
    ("u256", "UInt256"),
    ("ip4", "IPv4"),
    ("ip6", "IPv6"),
    ("m", "Map(String, UInt64)"),
    ("mn", "Map(LowCardinality(String), Array(Nullable(Int32)))"),
    ("tup", "Tuple(UInt8, String)"),
    ("ntup", "Tuple(a Int32, b Nullable(String))"),
    ("an", "Array(Nullable(Int64))"),
    ("lcu", "LowCardinality(UInt32)"),
    ("lcd", "LowCardinality(Date)"),
    ("lcn", "LowCardinality(Nullable(Int64))"),
    ("js", "JSON"),
];

/// Every type of [`CURRENT_TYPES`] written through a plugin and read back exactly on 26.9, in
/// each accepted form (text, ticks, numbers, pairs, elements); on 18.16 the same plugin is
/// refused at load, naming each type the server lacks and its version, while the host runs on.
fn current_types_round_trip_exactly_and_a_server_without_them_refuses_them_by_name(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    let tables = json!([{"name": "current_types", "columns": CURRENT_TYPES, "order_by": ["k"]}]);
    install_plugin(dir.path(), &test_plugin("echo"), "types", &[("manifest", &manifest("types", "1", tables))])?;
    std::fs::copy(sluice_tests::plugins_dir().join("order-analytics.wasm"), dir.path().join("order-analytics.wasm"))?;
    let config = config_file(dir.path(), CONFIG)?;
    let host = start_host(&redis, &ch, dir.path(), &config)?;
    if release == Release::V18 {
        let (_, body) = host.admin("GET", "/api/plugins", &[])?;
        let plugins: Value = serde_json::from_str(&body)?;
        let types = plugins.as_array().unwrap().iter().find(|p| p["file"].as_str().unwrap().ends_with("types.wasm"));
        let error = types.and_then(|p| p["error"].as_str()).unwrap_or_default().to_string();
        for lacking in [
            "column `dt64` DateTime64(3): ClickHouse 18.16.1 has no DateTime64",
            "column `d32` Date32: ClickHouse 18.16.1 has no Date32",
            "column `b` Bool: ClickHouse 18.16.1 has no Bool",
            "column `i256` Int256: ClickHouse 18.16.1 has no Int256",
            "column `ip6` IPv6: ClickHouse 18.16.1 has no IPv6",
            "column `mn` Map(LowCardinality(String), Array(Nullable(Int32))): ClickHouse 18.16.1 has no Map",
            "column `js` JSON: ClickHouse 18.16.1 has no JSON",
        ] {
            assert!(error.contains(lacking), "`{lacking}` missing from the refusal: {error}");
        }
        // Types 18.16 has are not blamed; the other plugin runs.
        for fine in ["column `dttz`", "column `tup`", "column `lcu`", "column `an`"] {
            assert!(!error.contains(fine), "{fine} blamed: {error}");
        }
        assert!(body.contains("\"name\":\"order-analytics\"") && body.contains("\"status\":\"running\""), "{body}");
        assert_eq!(ch.number("EXISTS TABLE analytics.current_types"), 0, "nothing created");
        return Ok(());
    }
    let tokyo_max = "2299-12-31 23:59:59.999999";
    let rows = [
        json!([
            1,
            "1900-01-01 00:00:00.000",
            "1900-01-02 00:00:00.000000",
            "1970-01-01 03:00:00",
            "1900-01-01",
            false,
            i128::MIN.to_string(),
            "-57896044618658097711785492504343953926634992332820282019728792003956564819968",
            0,
            "0",
            "0.0.0.0",
            "::",
            [],
            [],
            [0, ""],
            [-2147483648i64, null],
            [],
            0,
            "1970-01-01",
            null,
            "{}"
        ]),
        json!([
            2,
            "2299-12-31 23:59:59.999",
            tokyo_max,
            "2100-01-01 03:00:00",
            "2299-12-31",
            true,
            i128::MAX.to_string(),
            "57896044618658097711785492504343953926634992332820282019728792003956564819967",
            u128::MAX.to_string(),
            "115792089237316195423570985008687907853269984665640564039457584007913129639935",
            "255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            [["a", 1], ["ключ", u64::MAX]],
            [["x", [1, null, -3]], ["", []]],
            [255, "Grüße\t'q'"],
            [2147483647, "s"],
            [null, i64::MAX],
            4294967295u64,
            "2149-06-06",
            i64::MAX,
            r#"{"a": {"b": "deep"}, "s": "x"}"#
        ]),
        // The other forms: ticks and seconds as numbers, an RFC 3339 time with its offset, days
        // as a number, 0/1 for a Bool, small integers as numbers, an IPv4 address as a number and
        // IPv4-mapped into IPv6.
        json!([
            3,
            1717236000123i64,
            "2024-06-01T10:00:00.5+00:00",
            1717236000,
            -1,
            1,
            -5,
            7,
            42,
            "1",
            16909060,
            "1.2.3.4",
            [["k", 0]],
            [],
            [1, "a"],
            [0, ""],
            [1],
            7,
            19875,
            -1,
            r#"{"n": 1.5}"#
        ]),
    ];
    let payloads: Vec<Value> =
        rows.iter().map(|r| json!({"rows": [{"table": "current_types", "values": r}]})).collect();
    let mut conn = redis.conn()?;
    publish(&mut conn, "types.event", &payloads)?;
    wait_until("3 rows in current_types", Duration::from_secs(60), || ch.rows("current_types") == 3)
        .map_err(|e| e.context(host.log_text()))?;
    let got = ch.query(
        "SELECT k, toString(dt64), toString(dt64tz), toString(dttz), toString(d32), b, toString(i128), toString(i256), \
         toString(u128), toString(u256), toString(ip4), toString(ip6), toString(m), toString(mn), toString(tup), \
         toString(ntup), toString(an), lcu, toString(lcd), lcn, toString(js) \
         FROM analytics.current_types ORDER BY k FORMAT TabSeparatedRaw",
    )?;
    let expected = [
        vec![
            "1",
            "1900-01-01 00:00:00.000",
            "1900-01-02 00:00:00.000000",
            "1970-01-01 03:00:00",
            "1900-01-01",
            "false",
            "-170141183460469231731687303715884105728",
            "-57896044618658097711785492504343953926634992332820282019728792003956564819968",
            "0",
            "0",
            "0.0.0.0",
            "::",
            "{}",
            "{}",
            "(0,'')",
            "(-2147483648,NULL)",
            "[]",
            "0",
            "1970-01-01",
            "\\N",
            "{}",
        ],
        vec![
            "2",
            "2299-12-31 23:59:59.999",
            tokyo_max,
            "2100-01-01 03:00:00",
            "2299-12-31",
            "true",
            "170141183460469231731687303715884105727",
            "57896044618658097711785492504343953926634992332820282019728792003956564819967",
            "340282366920938463463374607431768211455",
            "115792089237316195423570985008687907853269984665640564039457584007913129639935",
            "255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "{'a':1,'ключ':18446744073709551615}",
            "{'x':[1,NULL,-3],'':[]}",
            "(255,'Grüße\\t\\'q\\'')",
            "(2147483647,'s')",
            "[NULL,9223372036854775807]",
            "4294967295",
            "2149-06-06",
            "9223372036854775807",
            r#"{"a":{"b":"deep"},"s":"x"}"#,
        ],
        vec![
            "3",
            "2024-06-01 10:00:00.123",
            "2024-06-01 19:00:00.500000",
            "2024-06-01 13:00:00",
            "1969-12-31",
            "true",
            "-5",
            "7",
            "42",
            "1",
            "1.2.3.4",
            "::ffff:1.2.3.4",
            "{'k':0}",
            "{}",
            "(1,'a')",
            "(0,'')",
            "[1]",
            "7",
            "2024-06-01",
            "-1",
            r#"{"n":1.5}"#,
        ],
    ];
    let got_rows: Vec<Vec<&str>> = got.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(got_rows.len(), 3, "{got}");
    for (row, (g, e)) in got_rows.iter().zip(&expected).enumerate() {
        for (i, (gv, ev)) in g.iter().zip(e.iter()).enumerate() {
            assert_eq!(gv, ev, "row {}, column {}", row + 1, CURRENT_TYPES[i].0);
        }
        assert_eq!(g.len(), e.len(), "row {}: {g:?}", row + 1);
    }
    assert!(dead_letters(&mut conn).is_empty(), "{:?}", dead_letters(&mut conn));
    // The same declaration is up to date on the next start (types compare as the server
    // spells them).
    drop(host);
    let host = start_host(&redis, &ch, dir.path(), &config)?;
    assert!(!host.log_text().contains("refused"), "{}", host.log_text());
    Ok(())
}

/// Enums as plugins nobody here wrote declare them — items out of value order, an item
/// appended in the middle of the values, names holding a tab, a newline, a backslash and a
/// quote (written literally or escaped) — are created, extended once, and then accepted on
/// every restart; `plugin inspect` compares in the database of SLUICE_CLICKHOUSE_DATABASE.
/// Decimals: an integer with too many digits is refused for that reason, and a float is stored
/// as the decimal nearest its binary value.
fn enums_in_any_order_with_escapes_stay_accepted_and_decimals_say_why(release: Release) -> Result<()> {
    let redis = Redis::start()?;
    let ch = ClickHouse::start(release)?;
    let dir = tempfile::tempdir()?;
    let columns = |ap: &str| {
        json!([
            ["k", "UInt32"],
            ["st", "Enum8('pending' = 0, 'failed' = -1, 'done' = 2)"],
            ["ap", ap],
            ["esc", "Enum8('tab\\there' = 1, 'new\\nline' = 2, 'back\\\\slash' = 3, 'quo\\'te' = 4, 'lit\ttab' = 5)"],
            ["d38", "Decimal(38, 0)"],
            ["d18", "Decimal(18, 4)"]
        ])
    };
    let v1 = manifest(
        "enums",
        "1",
        json!([{"name": "enums", "columns": columns("Enum8('a' = 1, 'c' = 3)"), "order_by": ["k"]}]),
    );
    let v2 = manifest(
        "enums",
        "2",
        json!([{"name": "enums", "columns": columns("Enum8('a' = 1, 'c' = 3, 'b' = 2)"), "order_by": ["k"]}]),
    );
    install_plugin(dir.path(), &test_plugin("echo"), "enums", &[("manifest", &v1)])?;
    let config = config_file(dir.path(), CONFIG)?;
    let env = [("SLUICE_CONFIG", config.display().to_string()), ("SLUICE_CLICKHOUSE_DATABASE", "enumdb".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = || -> Result<Host> {
        let h = Host::start(&redis, &ch, dir.path(), &env)?;
        h.wait_running(Duration::from_secs(60))?;
        Ok(h)
    };
    let row =
        |k: u32, st: &str, ap: &str, esc: &str| json!({"rows": [{"table": "enums", "values": [k, st, ap, esc, 0, 0]}]});
    let mut conn = redis.conn()?;
    publish(&mut conn, "enums.event", &[row(1, "failed", "a", "tab\there"), row(2, "done", "c", "new\nline")])?;
    let mut host = start()?;
    wait_until("2 rows", Duration::from_secs(60), || ch.number("SELECT count() FROM enumdb.enums") == 2)
        .map_err(|e| e.context(host.log_text()))?;
    host.stop();
    // v2 appends 'b' = 2 between the others' values: one ALTER, then nothing on later starts.
    install_plugin(dir.path(), &test_plugin("echo"), "enums", &[("manifest", &v2)])?;
    let mut host = start()?;
    assert!(
        host.log_text().contains("column `ap` extended to Enum8('a' = 1, 'b' = 2, 'c' = 3)"),
        "{}",
        host.log_text()
    );
    host.stop();
    let host = start()?;
    let log = host.log_text();
    assert!(!log.contains("refused") && !log.contains("extended"), "{log}");
    publish(
        &mut conn,
        "enums.event",
        &[
            row(3, "pending", "b", "back\\slash"),
            row(4, "done", "a", "quo'te"),
            row(5, "done", "a", "lit\ttab"),
            json!({"rows": [{"table": "enums", "values": [6, "done", "a", "quo'te", "9".repeat(39), 0]}]}),
            json!({"rows": [{"table": "enums", "values": [7, "done", "a", "quo'te", "9".repeat(38), 99999999999999.99]}]}),
        ],
    )?;
    wait_until("6 rows and a dead letter", Duration::from_secs(60), || {
        ch.number("SELECT count() FROM enumdb.enums") == 6 && dead_letters(&mut conn).len() == 1
    })
    .map_err(|e| e.context(host.log_text()))?;
    assert_eq!(
        // Decimals compared as numbers: 18.16 prints a Decimal128 of 38 digits wrongly.
        ch.query(&format!(
            "SELECT k, st, ap, hex(toString(esc)), d38 = toDecimal128('{}', 0), d18 = toDecimal64('99999999999999.9844', 4) \
             FROM enumdb.enums ORDER BY k",
            "9".repeat(38)
        ))?,
        [
            format!("1\tfailed\ta\t{}\t0\t0", hex(b"tab\there")),
            format!("2\tdone\tc\t{}\t0\t0", hex(b"new\nline")),
            format!("3\tpending\tb\t{}\t0\t0", hex(b"back\\slash")),
            format!("4\tdone\ta\t{}\t0\t0", hex(b"quo'te")),
            format!("5\tdone\ta\t{}\t0\t0", hex(b"lit\ttab")),
            // The float nearest 99999999999999.99 is 99999999999999.984375.
            format!("7\tdone\ta\t{}\t1\t1", hex(b"quo'te")),
        ]
        .join("\n")
    );
    let dead = dead_letters(&mut conn);
    assert!(
        dead[0]["error"].contains(&format!("string \"{}\"", "9".repeat(39)))
            && dead[0]["error"].contains("has more than 38 digits for Decimal(38, 0)"),
        "{dead:?}"
    );
    // inspect compares with the host's database, read from the same variable.
    let inspect = sluice(
        &["plugin", "inspect", &dir.path().join("enums.wasm").display().to_string(), "--clickhouse-url", &ch.url()],
        &[("SLUICE_CLICKHOUSE_DATABASE", "enumdb")],
    )?;
    let inspected: Value = serde_json::from_str(&inspect)?;
    assert_eq!(inspected["tables"][0]["live"]["status"], "up to date", "{inspect}");
    Ok(())
}

on_every_release!(enums_in_any_order_with_escapes_stay_accepted_and_decimals_say_why);
