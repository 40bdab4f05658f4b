#!/usr/bin/env bash
# `make bench`: installs the seed baselines' packages (npm: bullmq, @clickhouse/client; PyPI:
# redis, clickhouse-driver — pinned in bench/seed-baseline/), builds the benchmark and the limit
# pipeline, and runs them: every contender on its own private Redis and ClickHouse.
#   usage: bench.sh [--quick] [--events N] [--only limit,sluice,sluice-no-idem,sluice-eo,python,bullmq-batched,bullmq-per-job,sluice-py,sluice-js,sluice-ts]
set -euo pipefail
cd "$(dirname "$0")/.."

node_bin=$(bash scripts/plugin-toolchains.sh)   # python3/venv, nodejs/npm, and Node 20 if needed
export PATH="${node_bin:+$node_bin:}$PATH"

py=target/tools/bench-python
if ! "$py/bin/python" -c 'import redis, clickhouse_driver' 2>/dev/null; then
  echo "bench: installing the Python seed baseline's packages into $py" >&2
  rm -rf "$py"
  timeout 300 python3 -m venv "$py"
  timeout 900 "$py/bin/pip" install --quiet --disable-pip-version-check -r bench/seed-baseline/python/requirements.txt >&2
fi
node_dir=bench/seed-baseline/node
if [ ! -d "$node_dir/node_modules/bullmq" ] || [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
  echo "bench: installing the Node.js seed baseline's packages" >&2
  (cd "$node_dir" && timeout 900 npm ci --no-audit --no-fund --loglevel=error >&2)
fi

timeout 1200 cargo build --release --locked -p sluice-bench >&2
SLUICE_TEST_PLUGINS="$PWD/target/plugins" SLUICE_TEST_EXAMPLES="$PWD/target/examples" SLUICE_TEST_BIN="$PWD/target/release/sluice" \
  timeout 3600 target/release/sluice-bench "$@"
