#!/usr/bin/env bash
# `make demo`: private Redis and ClickHouse, the host with the first-party plugins, sample
# events of every seed type, and what landed in each table.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.demo
SLUICE=./target/release/sluice
N=${DEMO_EVENTS:-2000}

bash scripts/services.sh start "$DIR"
source "$DIR/env"
cleanup() {
  [ -n "${HOST_PID:-}" ] && kill "$HOST_PID" 2>/dev/null && wait "$HOST_PID" 2>/dev/null || true
  bash scripts/services.sh stop "$DIR"
}
trap cleanup EXIT

ch() { curl -sf "$SLUICE_CLICKHOUSE_URL/" --data-binary "$1"; }

echo "== starting the host on target/plugins (log: $DIR/host.log)"
SLUICE_PLUGINS_DIR=target/plugins SLUICE_ADMIN_ADDR=127.0.0.1:0 "$SLUICE" run > "$DIR/host.log" 2>&1 &
HOST_PID=$!
for _ in $(seq 1 300); do grep -q "sluice is running" "$DIR/host.log" && break; sleep 0.2; done
grep -q "sluice is running" "$DIR/host.log" || { cat "$DIR/host.log"; echo "demo: the host did not start" >&2; exit 1; }

echo "== publishing $N events of each seed type"
for t in PromoCodeAppliedEvent OrderCreatedEvent order.created; do
  "$SLUICE" publish "$t" --count "$N"
done
echo "== and three by hand with redis-cli, in the wire format (one of them malformed)"
redis-cli -p "$DEMO_REDIS_PORT" XADD events:order.created '*' payload \
  '{"orderId":"by-hand-1","customerId":"alice","shopId":"s1","totalAmount":42.5}' id "$(cat /proc/sys/kernel/random/uuid)"
redis-cli -p "$DEMO_REDIS_PORT" XADD events:OrderCreatedEvent '*' payload \
  '{"orderId":"by-hand-2","userId":"bob","amount":7.25,"createdAt":"2024-06-01T10:00:00Z"}'
redis-cli -p "$DEMO_REDIS_PORT" XADD events:OrderCreatedEvent '*' payload '{"orderId": oops}'

expected=$((3 * N + 3))
echo "== waiting for the rows"
for _ in $(seq 1 300); do
  o=$(ch "SELECT count() FROM analytics.orders_analytics" 2>/dev/null || echo 0)
  p=$(ch "SELECT count() FROM analytics.promo_code_usages_analytics" 2>/dev/null || echo 0)
  [ "$((o + p))" -ge $((expected - 1)) ] && break
  sleep 0.2
done
sleep 1

echo
echo "== rows in ClickHouse ($SLUICE_CLICKHOUSE_URL, database analytics)"
for t in promo_code_usages_analytics orders_analytics users_analytics; do
  printf '%-30s %s rows\n' "$t" "$(ch "SELECT count() FROM analytics.$t")"
done
echo
echo "-- promo codes:  uses, order amount, discount"
ch "SELECT promo_code, count(), round(sum(order_amount), 2), round(sum(discount_amount), 2) FROM analytics.promo_code_usages_analytics GROUP BY promo_code ORDER BY promo_code LIMIT 5 FORMAT PrettyCompactNoEscapes"
echo "-- orders by event type"
ch "SELECT event_type, count(), round(sum(amount), 2) FROM analytics.orders_analytics GROUP BY event_type ORDER BY event_type FORMAT PrettyCompactNoEscapes"
echo "-- users_analytics (SummingMergeTree), top users"
ch "SELECT user_id, sum(orders_count) AS orders, round(sum(orders_amount), 2) AS amount, sum(promo_uses) AS promo_uses FROM analytics.users_analytics GROUP BY user_id ORDER BY orders DESC, user_id LIMIT 5 FORMAT PrettyCompactNoEscapes"
echo
echo "== dead letters (sluice:dlq): $(redis-cli -p "$DEMO_REDIS_PORT" XLEN sluice:dlq)"
redis-cli --raw -p "$DEMO_REDIS_PORT" XRANGE sluice:dlq - + COUNT 10 | awk '
  prev == "stream" { s = $0 } prev == "entry_id" { e = $0 } prev == "plugin" { p = $0 }
  prev == "error" { print "   " p " <- " s " " e ": " $0 } { prev = $0 }'
echo
admin=$(grep -o 'admin API listening addr=[0-9.:]*' "$DIR/host.log" | head -1 | sed 's/.*addr=//')
if [ -n "$admin" ]; then
  echo "== the host's own view: http://$admin/ready and /metrics (the dashboard is http://$admin/)"
  curl -s "http://$admin/ready"; echo
  curl -s "http://$admin/metrics" | grep -E '^sluice_(events_handled_total|rows_written_total|dead_letters)' | sort
  echo
fi
echo "Host log: $DIR/host.log. Try: $SLUICE plugin inspect target/plugins/user-stats.wasm"
# At a terminal the stack stays up for the dashboard until Ctrl-C (DEMO_KEEP=0: stop now,
# DEMO_KEEP=1: stay up without a terminal too).
keep=${DEMO_KEEP:-}
if [ -z "$keep" ]; then [ -t 0 ] && [ -t 1 ] && keep=1 || keep=0; fi
if [ "$keep" = 1 ] && [ -n "$admin" ]; then
  echo
  echo "== the stack stays up: open the dashboard at http://$admin/ — Ctrl-C stops everything"
  echo "   more events:  SLUICE_REDIS_URL=$SLUICE_REDIS_URL $SLUICE publish order.created --count 1000"
  echo "   another host: SLUICE_REDIS_URL=$SLUICE_REDIS_URL SLUICE_CLICKHOUSE_URL=$SLUICE_CLICKHOUSE_URL SLUICE_PLUGINS_DIR=target/plugins SLUICE_ADMIN_ADDR=127.0.0.1:0 $SLUICE run"
  trap 'echo; echo "stopping"; exit 0' INT TERM
  wait "$HOST_PID" || true
else
  echo "The services stop now (DEMO_KEEP=1 keeps them up with the dashboard)."
fi
