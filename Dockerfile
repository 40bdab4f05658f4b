# syntax=docker/dockerfile:1
# Sluice host image: the `sluice` binary and the first-party plugins baked in at /plugins.
#   docker build -t sluice .
# Mount another directory on /plugins to run your own plugins (dropping a file there is how
# plugins are deployed).

# ---- build: the host and the plugins, with the same commands as `make build plugins` ----
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY wit ./wit
COPY runtime ./runtime
COPY tests ./tests
COPY bench ./bench
# The Python and JavaScript SDKs: `sluice plugin new --lang python|js` copies them in.
COPY sdk ./sdk
COPY plugins ./plugins
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/src/plugins/target \
    cargo build --release --locked -p sluice \
 && (cd plugins && cargo build --release --target wasm32-wasip2 --locked \
       -p promo-code-analytics -p order-analytics -p user-stats) \
 && mkdir -p /out/plugins \
 && cp target/release/sluice /out/sluice \
 && for p in promo-code-analytics order-analytics user-stats; do \
      cp "plugins/target/wasm32-wasip2/release/$(echo $p | tr - _).wasm" "/out/plugins/$p.wasm"; \
    done

# ---- runtime: small, non-root ----
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin sluice \
 && install -d -o 10001 -m 0700 /var/cache/sluice
COPY --from=build /out/sluice /usr/local/bin/sluice
COPY --from=build /out/plugins /plugins
ENV SLUICE_PLUGINS_DIR=/plugins \
    SLUICE_CACHE_DIR=/var/cache/sluice \
    SLUICE_ADMIN_ADDR=0.0.0.0:9464 \
    SLUICE_LOG_FORMAT=json
USER 10001
# The admin API: dashboard at /, /health, /ready, /metrics (see docs/operations.md, "Admin API").
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=6s --start-period=30s --retries=3 CMD ["sluice", "health", "--ready"]
ENTRYPOINT ["sluice"]
CMD ["run"]
