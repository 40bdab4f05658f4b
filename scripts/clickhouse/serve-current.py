#!/usr/bin/env python3
"""A current ClickHouse server (26.9) for the tests, the demo and the benchmark.

Debian ships only ClickHouse 18.16. The PyPI package chdb-core carries a current ClickHouse as
a library (clickhouse-local); its full entry point can open the real HTTP interface, which is
all Sluice talks to. scripts/install-deps.sh installs it (pinned) into target/tools/chdb.

    serve-current.py --dir DIR --http-port PORT [--tcp-port PORT]

- Data lives in DIR/data and survives a restart on the same DIR (SIGTERM or SIGKILL).
- The listeners live while one query batch runs: `SYSTEM START LISTEN HTTP` (and TCP), then a query
  that never finishes and costs nothing. SIGTERM/SIGINT kill that query; the server then
  closes its listeners and this process exits 0.
- `<timezone>` is ignored by clickhouse-local: the time zone comes from TZ (UTC here).
- No ZooKeeper of its own: Replicated tables cannot be used (they stay read-only).
"""

import argparse
import os
import signal
import sys
import threading
import urllib.request

# The query that keeps the listener open; found again by its text to stop the server.
HOLD = "SELECT sum(sleepEachRow(1)) FROM system.numbers SETTINGS max_block_size = 1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="data and config directory (created)")
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--tcp-port", type=int, help="native protocol port (default: none)")
    args = ap.parse_args()

    top = os.path.abspath(args.dir)
    os.makedirs(os.path.join(top, "data"), exist_ok=True)
    os.environ["TZ"] = "UTC"
    tcp = f"<tcp_port>{args.tcp_port}</tcp_port>" if args.tcp_port else ""
    # clickhouse-local reads config.xml from its working directory.
    with open(os.path.join(top, "config.xml"), "w") as f:
        f.write(
            "<clickhouse>\n"
            f"  <http_port>{args.http_port}</http_port>{tcp}\n"
            "  <listen_host>127.0.0.1</listen_host>\n"
            "  <keep_alive_timeout>3</keep_alive_timeout>\n"
            "  <max_concurrent_queries>100</max_concurrent_queries>\n"
            "</clickhouse>\n"
        )
    os.chdir(top)
    from chdb import _chdb  # noqa: E402  (after TZ and the working directory are set)

    # ClickHouse would install its own handlers (SIGTERM ends the process at once): stopping
    # is this script's job.
    _chdb.set_signal_handlers_enabled(0)

    failure = []

    def serve():
        try:
            # TabSeparated: the default output format of the HTTP interface, as on a server.
            listen = "SYSTEM START LISTEN HTTP; " + ("SYSTEM START LISTEN TCP; " if args.tcp_port else "")
            _chdb.query(listen + HOLD, "TabSeparated", path=os.path.join(top, "data"))
        except Exception as e:  # the hold query ends only by being killed
            if "QUERY_WAS_CANCELLED" not in str(e) and "cancelled" not in str(e):
                failure.append(str(e))

    server = threading.Thread(target=serve, name="clickhouse", daemon=True)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while server.is_alive() and not stop.is_set():
        server.join(0.2)
    if stop.is_set():
        kill = f"KILL QUERY WHERE query = '{HOLD}' SYNC".encode()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{args.http_port}/", data=kill, timeout=10).read()
            server.join(10)
        except Exception as e:
            print(f"serve-current: cannot stop cleanly ({e}); exiting", file=sys.stderr)
            os._exit(1)
    if failure:
        print(f"serve-current: ClickHouse stopped: {failure[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
