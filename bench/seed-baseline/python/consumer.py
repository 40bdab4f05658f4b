"""The seed's Python Redis Streams consumer (seed 004's design): a consumer group on
`events:PromoCodeAppliedEvent`, XREADGROUP 1,000 entries at a time, one INSERT of their rows
into promo_code_usages_analytics (clickhouse-driver, native protocol), then XACK.

    python consumer.py --redis-port P --clickhouse-port TCP_PORT
"""

import argparse
import json
from datetime import datetime, timezone

import redis
from clickhouse_driver import Client

STREAM, GROUP = "events:PromoCodeAppliedEvent", "seed-python"
INSERT = ("INSERT INTO analytics.promo_code_usages_analytics (event_date, created_at, promo_code, promo_code_id, "
          "user_id, order_id, order_amount, discount_amount) VALUES")


def row(e):
    at = datetime.strptime(e["createdAt"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return (at.date(), at.replace(microsecond=0), e["promoCode"], e["promoCodeId"], e["userId"], e["orderId"],
            float(e["orderAmount"]), float(e["discountAmount"]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis-port", type=int, required=True)
    p.add_argument("--clickhouse-port", type=int, required=True)
    a = p.parse_args()
    r = redis.Redis(port=a.redis_port)
    ch = Client(host="127.0.0.1", port=a.clickhouse_port)
    try:
        r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError:
        pass  # the group exists
    while True:
        got = r.xreadgroup(GROUP, "consumer-1", {STREAM: ">"}, count=1000, block=1000)
        if not got:
            continue
        entries = got[0][1]
        ch.execute(INSERT, [row(json.loads(fields[b"payload"])) for _, fields in entries])
        r.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])


if __name__ == "__main__":
    main()
