# The README's two set-up commands are `make demo` and `make test`; both install what they need.
SHELL := /bin/bash
PLUGINS := promo-code-analytics order-analytics user-stats
# Built with the others, used only by the test suite (plugins/testing/).
TEST_PLUGINS := flaky echo hostile future-wit
CARGO ?= cargo
PLUGIN_OUT := target/plugins

.PHONY: deps test-deps build build-failpoints plugins examples demo install test unit check-monitoring bench fmt clippy clean

deps:
	@bash scripts/install-deps.sh

# The suite also drives a headless Chromium (the dashboard test).
test-deps:
	@bash scripts/install-deps.sh test

# Builds every first-party plugin into target/plugins/<name>.wasm (and the test suite's own
# plugins into target/test-plugins/).
plugins: deps
	cd plugins && $(CARGO) build --release --target wasm32-wasip2 --locked
	@mkdir -p $(PLUGIN_OUT)
	@for p in $(PLUGINS); do \
	  cp plugins/target/wasm32-wasip2/release/$${p//-/_}.wasm $(PLUGIN_OUT)/$$p.wasm; \
	  echo "$(PLUGIN_OUT)/$$p.wasm"; \
	done
	@mkdir -p target/test-plugins
	@for p in $(TEST_PLUGINS); do cp plugins/target/wasm32-wasip2/release/$${p//-/_}.wasm target/test-plugins/$$p.wasm; done

# Builds the Python, JavaScript and TypeScript example plugins (twins of promo-code-analytics)
# into target/examples/, installing componentize-py, componentize-js and tsc first (into the
# repository).
# componentize-js resolves imports inside the directory it runs in: run it from the top.
EXAMPLES_OUT := target/examples
examples: deps
	@mkdir -p $(EXAMPLES_OUT)
	@node_bin=$$(bash scripts/plugin-toolchains.sh) && export PATH="$${node_bin:+$$node_bin:}$$PATH" && set -x && \
	  timeout 600 target/tools/python/bin/componentize-py -q -d wit/0.2.0 -w plugin componentize \
	    -p examples/python/promo-code-analytics -p sdk/python app \
	    -o $(EXAMPLES_OUT)/promo-code-analytics-py.wasm && \
	  timeout 600 examples/js/node_modules/.bin/componentize-js examples/js/promo-code-analytics/plugin.js \
	    --wit wit/0.2.0 -n plugin -d http fetch-event -o $(EXAMPLES_OUT)/promo-code-analytics-js.wasm && \
	  timeout 300 examples/js/node_modules/.bin/tsc -p examples/ts && \
	  timeout 600 examples/js/node_modules/.bin/componentize-js target/ts/promo-code-analytics/plugin.js \
	    --wit wit/0.2.0 -n plugin -d http fetch-event -o $(EXAMPLES_OUT)/promo-code-analytics-ts.wasm

build: deps
	$(CARGO) build --release --locked -p sluice

# The test suite's second binary: the host with its fault-injection hooks (the `failpoints`
# feature), as target/release/sluice-failpoints. Cargo keeps both builds, so `build` after it
# only puts the plain binary back.
build-failpoints: deps
	$(CARGO) build --release --locked -p sluice --features failpoints
	cp target/release/sluice target/release/sluice-failpoints

# Starts private Redis and ClickHouse, runs the host on the first-party plugins, publishes
# sample events of every seed type and prints what landed in each table.
demo: plugins build
	@bash scripts/demo.sh

# Puts `sluice` on PATH (cargo's bin directory, ~/.cargo/bin): the commands the tools print
# (`sluice plugin test …`) then work as printed.
install: deps
	$(CARGO) install --locked --path runtime

# The whole suite: the monitoring examples' check, unit tests of the host and the three SDKs,
# plugin fixtures, and end-to-end tests against real redis-server and ClickHouse processes
# started on free ports — each test once on ClickHouse 18.16 (Debian) and once on 26.9
# (chdb-core, see docs/clickhouse.md).
test: test-deps plugins examples build-failpoints build
	@mkdir -p target
	set -o pipefail; { \
	  timeout 120 python3 scripts/check-monitoring.py && \
	  (cd plugins && $(CARGO) test --locked -p sluice-sdk) && \
	  timeout 120 python3 -m unittest discover -s sdk/python/tests && \
	  timeout 120 node --test sdk/js/test/ && \
	  SLUICE_TEST_PLUGINS=$(CURDIR)/$(PLUGIN_OUT) SLUICE_TEST_EXAMPLES=$(CURDIR)/$(EXAMPLES_OUT) \
	  SLUICE_TEST_BIN=$(CURDIR)/target/release/sluice SLUICE_TEST_FAILPOINT_BIN=$(CURDIR)/target/release/sluice-failpoints \
	    $(CARGO) test --release --locked --workspace -- --test-threads=2; \
	} 2>&1 | tee target/test.log
	@bash scripts/test-summary.sh target/test.log

# The fast part alone, no servers (seconds once built): the host's unit tests — the delivery
# decisions, schema comparison, config resolution, row encoding, the ledger's fields — and the
# Rust, Python and JavaScript SDKs' own.
unit: deps
	$(CARGO) test --locked -p sluice --lib
	cd plugins && $(CARGO) test --locked -p sluice-sdk
	timeout 120 python3 -m unittest discover -s sdk/python/tests
	timeout 120 node --test sdk/js/test/

# examples/monitoring against the host's code (metric names) and promtool (the rules, their unit
# tests, the dashboard's queries; skipped, saying so, without promtool): seconds, no build.
check-monitoring:
	timeout 120 python3 scripts/check-monitoring.py

# The benchmark (bench/README.md): Sluice against the pipeline's limit and the seed designs.
# `make bench BENCH_ARGS=--quick` for 100,000 events instead of 1,000,000.
bench: plugins examples build
	@bash scripts/bench.sh $(BENCH_ARGS)

fmt:
	$(CARGO) fmt --all && (cd plugins && $(CARGO) fmt --all)

clippy:
	$(CARGO) clippy --workspace --all-targets && (cd plugins && $(CARGO) clippy --target wasm32-wasip2)

clean:
	$(CARGO) clean && (cd plugins && $(CARGO) clean)
