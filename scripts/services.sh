#!/usr/bin/env bash
# Starts or stops a private redis-server and clickhouse-server for the demo, on free local
# ports, with their data under a directory of their own (default .demo/). Never touches the
# system services or ports 6379/8123.
#   scripts/services.sh start [DIR]   -> writes DIR/env with SLUICE_REDIS_URL, SLUICE_CLICKHOUSE_URL
#   scripts/services.sh stop [DIR]
set -euo pipefail
cmd=${1:?usage: services.sh start|stop [DIR]}
dir=$(realpath -m "${2:-.demo}")
here=$(cd "$(dirname "$0")" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "services: $what did not come up within ${secs}s" >&2; return 1
}

case "$cmd" in
start)
  "$0" stop "$dir" >/dev/null 2>&1 || true
  mkdir -p "$dir"/redis "$dir"/clickhouse/{log,data,tmp,user_files,format_schemas}
  rport=$(free_port); hport=$(free_port); tport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --dir "$dir/redis" --appendonly yes --save '' \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis/redis.log"
  sed -e "s#@DIR@#$dir/clickhouse#g" -e "s/@HTTP_PORT@/$hport/" -e "s/@TCP_PORT@/$tport/" \
    "$here/clickhouse/config.xml" > "$dir/clickhouse/config.xml"
  cp "$here/clickhouse/users.xml" "$dir/clickhouse/users.xml"
  nohup clickhouse-server --config-file="$dir/clickhouse/config.xml" \
    > "$dir/clickhouse/log/stdout.log" 2>&1 &
  echo $! > "$dir/clickhouse.pid"
  wait_for "redis-server" 20 redis-cli -p "$rport" ping
  wait_for "clickhouse-server" 60 curl -sf "http://127.0.0.1:$hport/ping"
  cat > "$dir/env" <<ENV
export SLUICE_REDIS_URL=redis://127.0.0.1:$rport
export SLUICE_CLICKHOUSE_URL=http://127.0.0.1:$hport
export DEMO_REDIS_PORT=$rport
export DEMO_CLICKHOUSE_PORT=$hport
ENV
  echo "services: redis on 127.0.0.1:$rport, clickhouse on http://127.0.0.1:$hport (data in $dir)"
  ;;
stop)
  for pidfile in "$dir/clickhouse.pid" "$dir/redis.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
  ;;
*) echo "usage: services.sh start|stop [DIR]" >&2; exit 2 ;;
esac
