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
Prints the entry id.
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    p.add_argument("--prefix", default="events:")
    p.add_argument("--type", required=True)
    p.add_argument("--layout", default="envelope")
    p.add_argument("--payload", required=True)
    p.add_argument("--id", default=None)
    p.add_argument("--timestamp", default=None)
    a = p.parse_args()
    r = redis.Redis.from_url(a.redis_url)
    timestamp = a.timestamp or datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
    entry = r.xadd(a.prefix + a.type, fields(a.layout, a.type, json.loads(a.payload), a.id or str(uuid.uuid4()), timestamp))
    print(entry.decode())


if __name__ == "__main__":
    main()
