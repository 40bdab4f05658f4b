#!/usr/bin/env bash
# Installs what building, testing and demoing Sluice needs on a Debian machine, skipping
# whatever is already present. Safe to run repeatedly; used by `make demo` and `make test`.
#   - redis-server, clickhouse-server/client: the real services the tests and demo start
#   - the wasm32-wasip2 Rust target: what plugins compile to
#   - with `languages` (and `test`): python3 with venv, nodejs and npm, which build the Python
#     and JavaScript plugins (scripts/plugin-toolchains.sh installs the build tools themselves)
#   - with `test`: chromium, which the test suite drives headless to check the dashboard, and
#     zookeeper (with its Java runtime), which the exactly-once tests give ClickHouse for
#     Replicated tables, and openssl, with which the TLS tests make their certificates
#   - with `test`: python3-yaml and promtool, for scripts/check-monitoring.py (the monitoring
#     examples' check); promtool alone is taken out of Debian's `prometheus` package into
#     target/tools/promtool/ — installing the package would also install (and, on a machine
#     with systemd, enable at boot) a Prometheus server
#     usage: install-deps.sh [test|languages]
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_pkgs+=(redis-tools)
command -v clickhouse-server >/dev/null 2>&1 || need_pkgs+=(clickhouse-server)
command -v clickhouse-client >/dev/null 2>&1 || need_pkgs+=(clickhouse-client)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [ "${1:-}" = test ]; then
  command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
  [ -f /usr/share/java/zookeeper.jar ] || need_pkgs+=(zookeeper)
  [ -f /usr/share/java/slf4j-simple.jar ] || need_pkgs+=(libslf4j-java)
  command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
  python3 -c 'import yaml' >/dev/null 2>&1 || need_pkgs+=(python3-yaml)
fi
if [ "${1:-}" = test ] || [ "${1:-}" = languages ] || [ "${1:-}" = current-clickhouse ]; then
  command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
  command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
fi

if [ "${#need_pkgs[@]}" -gt 0 ]; then
  echo "install-deps: installing ${need_pkgs[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The services are started privately by the test harness / demo; keep the packaged
  # system services from starting (and occupying 6379/8123) on install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  timeout 600 $SUDO apt-get update -qq
  timeout 900 $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "install-deps: adding the wasm32-wasip2 Rust target" >&2
    timeout 600 rustup target add wasm32-wasip2
  fi
else
  echo "install-deps: rustup not found; install Rust from https://rustup.rs and re-run" >&2
  exit 1
fi

# promtool, from the Debian package of the distribution's apt sources (Debian 12: Prometheus 2.42,
# which has `promtool test rules`), downloaded and unpacked without installing it: no server,
# no service, no user. A promtool already on PATH is used instead (scripts/check-monitoring.py).
if [ "${1:-}" = test ] && ! command -v promtool >/dev/null 2>&1; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  dest="$root/target/tools/promtool"
  if ! "$dest/promtool" --version >/dev/null 2>&1; then
    echo "install-deps: extracting promtool from Debian's prometheus package into $dest" >&2
    work=$(mktemp -d)
    # apt-get download needs the package lists (a fresh container has none until an update).
    if ! (cd "$work" && timeout 600 apt-get download -qq prometheus >/dev/null 2>&1); then
      timeout 600 $SUDO apt-get update -qq
      (cd "$work" && timeout 600 apt-get download -qq prometheus >/dev/null)
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
    mkdir -p "$dest"
    install -m 0755 "$work/x/usr/bin/promtool" "$dest/promtool"
    rm -rf "$work"
    "$dest/promtool" --version >/dev/null
  fi
fi

# ClickHouse 26.9 (chdb-core's clickhouse-local, served by scripts/clickhouse/serve-current.py).
CHDB_VERSION=26.9.0
if [ "${1:-}" = test ] || [ "${1:-}" = current-clickhouse ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  venv="$root/target/tools/chdb"
  if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('chdb-core') != '$CHDB_VERSION')" 2>/dev/null; then
    echo "install-deps: installing ClickHouse 26.9 (PyPI chdb-core==$CHDB_VERSION) into $venv" >&2
    rm -rf "$venv"
    timeout 300 python3 -m venv "$venv"
    # --no-deps: the server needs none of its Python dependencies (pandas, pyarrow).
    timeout 900 "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "chdb-core==$CHDB_VERSION" >&2
  fi
fi
