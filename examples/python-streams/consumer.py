"""The service Sluice replaces, in the shape of the Python Redis Streams consumers our users run
(a consumer group per service, XREADGROUP, an INSERT per batch, XACK after it): it reads
PromoCodeAppliedEvent envelopes from `events:PromoCodeAppliedEvent` in the group
`analytics-consumers` and writes the rows promo-code-analytics writes, into
analytics.promo_code_usages_analytics. docs/migrating-from-python-streams.md switches from it to
Sluice; the migration test runs it.

usage: python consumer.py --redis-url URL --clickhouse-url URL [--group analytics-consumers]
                          [--consumer NAME] [--prefix events:]
SIGTERM: finishes the batch in hand (insert, XACK) and exits 0 — nothing is left pending.
"""

import argparse
import json
import signal
import socket
import urllib.parse
import urllib.request

import redis

TABLE = "analytics.promo_code_usages_analytics"
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
  event_date Date, created_at DateTime, promo_code String, promo_code_id String, user_id String,
  order_id String, order_amount Float64, discount_amount Float64
) ENGINE = MergeTree PARTITION BY toYYYYMM(event_date) ORDER BY (event_date, promo_code)"""

stopping = False


def clickhouse(url, query, body=b""):
    req = urllib.request.Request(f"{url}/?query={urllib.parse.quote(query)}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def payload_of(fields):
    """The event in the layouts the Python services write: an envelope in `data` or `event`, or
    the payload alone in `data`."""
    raw = fields.get(b"data") or fields.get(b"event") or fields.get(b"payload")
    value = json.loads(raw)
    return value["data"] if isinstance(value, dict) and "data" in value and "type" in value else value


def row(p):
    created = p["createdAt"][:19].replace("T", " ")
    return {
        "event_date": created[:10],
        "created_at": created,
        "promo_code": p["promoCode"],
        "promo_code_id": p["promoCodeId"],
        "user_id": p["userId"],
        "order_id": p["orderId"],
        "order_amount": p["orderAmount"],
        "discount_amount": p["discountAmount"],
    }


def main():
    global stopping
    a = argparse.ArgumentParser()
    a.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    a.add_argument("--clickhouse-url", default="http://127.0.0.1:8123")
    a.add_argument("--group", default="analytics-consumers")
    a.add_argument("--consumer", default=socket.gethostname())
    a.add_argument("--prefix", default="events:")
    args = a.parse_args()
    stream = args.prefix + "PromoCodeAppliedEvent"

    def stop(*_):
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    clickhouse(args.clickhouse_url, "CREATE DATABASE IF NOT EXISTS analytics")
    clickhouse(args.clickhouse_url, DDL)
    r = redis.Redis.from_url(args.redis_url)
    try:
        r.xgroup_create(stream, args.group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    print("consuming", flush=True)
    while not stopping:
        got = r.xreadgroup(args.group, args.consumer, {stream: ">"}, count=1000, block=200)
        for _, entries in got or []:
            if not entries:
                continue
            body = "\n".join(json.dumps(row(payload_of(f))) for _, f in entries).encode()
            clickhouse(args.clickhouse_url, f"INSERT INTO {TABLE} FORMAT JSONEachRow", body)
            r.xack(stream, args.group, *[i for i, _ in entries])
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
