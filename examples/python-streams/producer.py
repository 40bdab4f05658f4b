"""Publishes events to Redis Streams the way the Python services do today, with redis-py, in
each layout Sluice reads (see docs/contract.md, "Events on Redis Streams"):

  envelope   one field `data` holding the JSON envelope {type, aggregate_id, aggregate_type,
             data, timestamp, event_id}                      (what shared_events/event_bus.py writes)
  event      the same envelope in a field `event`
  flat       the envelope's keys as fields of their own, `data` holding the payload
  data-only  `data` holding the payload alone
  payload    Sluice's own: `payload` (and `id`)

usage: python producer.py --redis-url URL --type TYPE --layout LAYOUT --payload JSON [--id ID]
                          [--timestamp ISO] [--prefix events:]
         prints the entry id;
       python producer.py --redis-url URL --promo-count N [--from K] [--layout LAYOUT]
         publishes N PromoCodeAppliedEvent events (numbers K..K+N-1, order ids `order-py-<i>`,
         event ids `py-<i>`) and prints {"events": N}.
"""

import argparse
import json
import uuid
from datetime import datetime, timezone

import redis


def fields(layout, event_type, payload, event_id, timestamp):
    envelope = {
        "type": event_type,
        "aggregate_id": str(payload.get("id", payload.get("task_id", ""))),
        "aggregate_type": event_type.split(".")[0],
        "data": payload,
        "timestamp": timestamp,
        "event_id": event_id,
    }
    if layout == "envelope":
        return {"data": json.dumps(envelope)}
    if layout == "event":
        return {"event": json.dumps(envelope)}
    if layout == "flat":
        flat = {k: (json.dumps(v) if k == "data" else v) for k, v in envelope.items()}
        return flat
    if layout == "data-only":
        return {"data": json.dumps(payload), "event_id": event_id}
    if layout == "payload":
        return {"payload": json.dumps(payload), "id": event_id}
    raise SystemExit(f"unknown layout {layout!r}")


def promo(i):
    """PromoCodeAppliedEvent number i, as the NestJS services serialise it."""
    return {
        "promoCodeId": f"promo-{i % 50}",
        "promoCode": f"SUMMER{i % 50}",
        "userId": f"user-{i % 1000}",
        "orderId": f"order-py-{i}",
        "orderAmount": (i % 10000) / 100 + 10,
        "discountAmount": (i % 500) / 100,
        "createdAt": f"2024-06-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{i * 7 % 60:02d}.000Z",
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    p.add_argument("--prefix", default="events:")
    p.add_argument("--type", default="PromoCodeAppliedEvent")
    p.add_argument("--layout", default="envelope")
    p.add_argument("--payload")
    p.add_argument("--promo-count", type=int)
    p.add_argument("--from", dest="start", type=int, default=0)
    p.add_argument("--id", default=None)
    p.add_argument("--timestamp", default=None)
    a = p.parse_args()
    r = redis.Redis.from_url(a.redis_url)
    if a.promo_count is not None:
        pipe = r.pipeline(transaction=False)
        for i in range(a.start, a.start + a.promo_count):
            now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
            pipe.xadd(a.prefix + a.type, fields(a.layout, a.type, promo(i), f"py-{i}", now))
        pipe.execute()
        print(json.dumps({"events": a.promo_count}))
        return
    if a.payload is None:
        raise SystemExit("--payload (or --promo-count) is required")
    timestamp = a.timestamp or datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
    entry = r.xadd(a.prefix + a.type, fields(a.layout, a.type, json.loads(a.payload), a.id or str(uuid.uuid4()), timestamp))
    print(entry.decode())


if __name__ == "__main__":
    main()
