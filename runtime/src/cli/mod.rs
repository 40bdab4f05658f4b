//! The `sluice` command line, one file per command family: `run` (the host, `host`), `publish`,
//! `dlq` and `replay` (`dead_letters`), `plugin inspect|run|test|new` (`plugin/`), `health`,
//! `trace`.
//!
//! Exit codes: 0 success; 1 the command ran and says no (a fixture did not match in `plugin test`,
//! an event failed in `plugin run`, `plugin inspect` would refuse a table, `health` got no 200
//! or no answer, `trace` found nothing); 2 an error (printed as `error: ...`); 130 when a second signal stops `sluice
//! run` at once.

mod dead_letters;
mod health;
mod plugin;
mod publish;
mod takeover;
mod trace;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::config::{CommonArgs, RunArgs, defaults};

#[derive(Parser, Debug)]
#[command(name = "sluice", version, about = "Redis events -> sandboxed WebAssembly handlers -> ClickHouse rows", long_about = None)]
pub struct Cli {
    /// Log format: `text` for terminals, `json` for containers.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the host: consume events from Redis, call the plugins, write rows to ClickHouse.
    Run(Box<RunArgs>),
    /// Publish events to Redis Streams in the wire format (one, or --count generated ones).
    Publish(PublishArgs),
    /// Inspect and run plugins without Redis or ClickHouse (inspect can compare with a live ClickHouse).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// List, reprocess or purge dead letters (the `sluice:dlq` stream).
    Dlq(DlqArgs),
    /// Re-feed a stream's history to one plugin (through its replay stream).
    Replay(ReplayArgs),
    /// Ask a running host whether it is alive (/health) or ready (/ready); exit 0 if so, 1 if
    /// not. For container health checks (the image has no curl).
    Health(HealthArgs),
    /// Hand a consumer group's streams to a plugin: the plugin's group starts exactly where
    /// the group of the service it replaces stopped (a switch with no gap and no double rows).
    Takeover(TakeoverArgs),
    /// Tell an event's whole story: when it was read and by which host, which plugin versions
    /// handled it, each attempt's outcome and error, its rows per table (counted in ClickHouse
    /// where the table has the entry column), and whether it was acknowledged, is pending or was
    /// dead-lettered and why. Exit 1 if nothing knows the id.
    Trace(Box<TraceArgs>),
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// A stream entry id (1717245000123-0), an event id (the producer's `id`), or a BullMQ /
    /// Bull job id.
    pub id: String,
    /// A running host's admin address (host:port or http://host:port) to ask for the attempts
    /// it remembers; repeat for every host (each knows only its own) [default: the settings'
    /// admin address, SLUICE_ADMIN_ADDR]
    #[arg(long = "admin", value_name = "URL")]
    pub admin: Vec<String>,
    /// Print the admin API's JSON (`GET /api/trace/{id}`) instead of the story.
    #[arg(long)]
    pub json: bool,
    /// Where Redis, ClickHouse and the queues are: the same settings as `sluice run`.
    #[command(flatten, next_help_heading = "Host settings (as for `sluice run`)")]
    pub host: RunArgs,
}

#[derive(Args, Debug)]
pub struct TakeoverArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The plugin taking over (its consumer group is `sluice:<plugin>`).
    #[arg(long)]
    pub plugin: String,
    /// The consumer group of the service being replaced (e.g. `analytics-consumers`).
    #[arg(long)]
    pub from_group: String,
    /// The event types to take over (their streams `<prefix><type>`); repeat or comma-separate.
    #[arg(long = "type", value_delimiter = ',', required = true)]
    pub event_types: Vec<String>,
    /// Take over although the old group still has entries delivered and not acknowledged: the
    /// plugin starts at the oldest of them, and every entry from there on is delivered to it
    /// again, acknowledged ones too (their rows may then be written twice).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub confirm: Confirm,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The host's admin address; 0.0.0.0 means this machine [default: 127.0.0.1:9464]
    #[arg(long, env = "SLUICE_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Check readiness (Redis, ClickHouse, plugins) instead of liveness.
    #[arg(long)]
    pub ready: bool,
}

#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters, oldest first, and how many match in all.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their plugin (and remove them from the dead-letter stream):
    /// one by id, or --all matching the filters, after showing the plan.
    Reprocess {
        /// The dead letter's id in sluice:dlq (see `dlq list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// All dead letters matching the filters below.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: DlqFilter,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Delete dead letters for good: those matching the filters (all without one), after
    /// showing the plan.
    Purge {
        #[command(flatten)]
        filter: DlqFilter,
        #[command(flatten)]
        confirm: Confirm,
    },
}

/// Which dead letters: each filter given must match. A plugin or type nobody knows is an error
/// listing the known ones.
#[derive(Args, Debug, Clone)]
pub struct DlqFilter {
    /// Only this plugin's dead letters.
    #[arg(long)]
    pub plugin: Option<String>,
    /// Only dead letters of this event type.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only this error kind: invalid_event, permanent, retries_exhausted, insert_failed.
    #[arg(long)]
    pub kind: Option<crate::dead_letter::DeadLetterKind>,
}

/// Commands that change data show their plan first, and act only when told to.
#[derive(Args, Debug, Clone, Copy)]
pub struct Confirm {
    /// Act without asking (needed when the input is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Show the plan and stop: nothing is changed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The plugin to re-feed.
    #[arg(long)]
    pub plugin: String,
    /// Start: a stream entry id (1717245000123-0), an RFC 3339 time, a UTC date and time
    /// (2024-06-01T10:00:00) or a date (2024-06-01: midnight UTC); `-` for the beginning.
    #[arg(long)]
    pub from: String,
    /// End (inclusive), in the same forms [default: the end]
    #[arg(long, default_value = "+")]
    pub to: String,
    /// Event types to replay [default: every stream that has the plugin's consumer group]
    #[arg(long = "type")]
    pub event_types: Vec<String>,
    /// After queueing, follow the host working through the replay until it is done.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub confirm: Confirm,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Print a plugin's manifest (name, version, hash, subscriptions, tables and their DDL) as
    /// JSON. With --clickhouse-url, also compare each table with the live one and say what
    /// starting this version would do: create it, add columns, nothing, or refuse (and why);
    /// exits with 1 if it would be refused.
    Inspect {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// Compare the tables with this ClickHouse server's (read-only: nothing is changed).
        /// Only this flag turns the comparison on; the database and credentials below come from
        /// the host's environment as for `sluice run`, and are unused without it.
        #[arg(long)]
        clickhouse_url: Option<String>,
        /// The database the host writes to.
        #[arg(long, env = "SLUICE_CLICKHOUSE_DATABASE", default_value = defaults::CLICKHOUSE_DATABASE)]
        clickhouse_database: String,
        #[arg(long, env = "SLUICE_CLICKHOUSE_USER")]
        clickhouse_user: Option<String>,
        #[arg(long, env = "SLUICE_CLICKHOUSE_PASSWORD", hide_env_values = true)]
        clickhouse_password: Option<String>,
    },
    /// Create a ready-to-build plugin project: manifest, one handler, one fixture, one test.
    New {
        /// The plugin's name (lower-case letters, digits, `-`); also the directory created.
        name: String,
        /// The language of the project: rust (cargo, wasm32-wasip2), python (componentize-py),
        /// js (componentize-js, Node.js 20+) or ts (TypeScript: tsc, then componentize-js; rows
        /// typed by their table's columns, the contract's types generated from the WIT).
        #[arg(long, default_value = "rust", value_parser = ["rust", "python", "js", "ts"])]
        lang: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin project in DIR, whatever its language (Cargo.toml: Rust; package.json:
    /// JavaScript or TypeScript; app.py: Python); the toolchain's output goes to stderr, and the last line on
    /// stdout is the built component's path.
    Build {
        /// The project's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Build, test and deploy on every change: builds the project in DIR (as `plugin build`),
    /// runs its fixtures (as `plugin test`), and only when they pass copies the component into
    /// the plugins directory as `<plugin name>.wasm`, where a running host hot-reloads it; then
    /// waits for the next change to the project's sources and starts again. A failed build or
    /// fixture deploys nothing.
    Dev {
        /// The project's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// The running host's plugins directory.
        #[arg(long, env = "SLUICE_PLUGINS_DIR")]
        plugins_dir: PathBuf,
        /// The fixtures to pass before deploying [default: DIR/fixtures].
        #[arg(long)]
        fixtures: Option<PathBuf>,
        /// One round (build, fixtures, deploy) and exit: 1 if the build or a fixture failed.
        #[arg(long)]
        once: bool,
    },
    /// Run fixture files against a plugin (events in, expected rows or errors out) and print a
    /// readable difference for each that does not match; exit 1 if any fails.
    Test {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// A fixture file, or a directory of them (*.json).
        #[arg(long)]
        fixtures: PathBuf,
    },
    /// Measure what a plugin costs per event, with no Redis and no ClickHouse: the call (lifting
    /// the events into the component, the handler, lowering its output) plus the host's check
    /// and encoding of its rows, in batches as the pipeline makes them. Prints µs per event and
    /// events/s, the best of --rounds rounds after a warm-up one.
    Bench {
        /// The plugin's .wasm file(s).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Events to use, as for `plugin run` (cycled up to --count); without it, events of the
        /// plugin's first seed type (PromoCodeAppliedEvent, OrderCreatedEvent, order.created)
        /// as `sluice publish --count` generates them.
        #[arg(long)]
        event: Option<PathBuf>,
        /// Events per round.
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Events per call (the pipeline's batch size, `--batch-size`).
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Print the plugin contract's types as TypeScript declarations (`declare module
    /// 'sluice:plugin/...'`), as `plugin new --lang ts` writes them into types/: for a project
    /// moving to this release's contract.
    Types {
        /// A WIT file to declare instead of this release's sluice:plugin@0.2.0.
        #[arg(long)]
        wit: Option<PathBuf>,
    },
    /// Run a plugin's handler on events from a file and print the rows as JSON lines.
    Run {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// A JSON file with one event, an array of events, or one event per line. An event is
        /// {"type": "...", "payload": {...}, "id"?: "...", "ts"?: ms}; with --type, each object
        /// is a payload.
        #[arg(long)]
        event: PathBuf,
        /// Treat every object in the file as the payload of an event of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The event type, e.g. `PromoCodeAppliedEvent` or `order.created`.
    pub event_type: String,
    /// The payload, JSON text. Omit with --count.
    pub payload: Option<String>,
    /// Publish this many generated events of a seed type (PromoCodeAppliedEvent,
    /// OrderCreatedEvent, order.created) and print the rate.
    #[arg(long)]
    pub count: Option<u64>,
    /// Event id (the idempotency key) of a single event.
    #[arg(long)]
    pub id: Option<String>,
    /// Hold the event until this much time has passed (30s, 5m, 1h, 250ms); see
    /// "Delayed events" in docs/contract.md for the Redis format other producers can use.
    #[arg(long, value_parser = crate::source::delayed::parse_duration)]
    pub delay: Option<Duration>,
}

/// Runs a command. Ok(false): it ran and the answer is no (exit code 1).
pub async fn run(command: Command) -> Result<bool> {
    match command {
        Command::Run(run) => crate::host::run(run.resolve()?).await.map(|_| true),
        Command::Publish(p) => publish::publish(p).await.map(|_| true),
        Command::Dlq(d) => dead_letters::dlq(d).await.map(|_| true),
        Command::Replay(r) => dead_letters::replay(r).await.map(|_| true),
        Command::Health(h) => health::health(h).await,
        Command::Takeover(t) => takeover::takeover(t).await.map(|_| true),
        Command::Trace(t) => trace::trace(*t).await,
        Command::Plugin(p) => plugin::run(p).await,
    }
}

/// How to run this binary again in a printed hint: `sluice` when that is what `PATH` finds,
/// else the binary's own path (`make install` or `cargo install --path runtime` puts it on
/// `PATH`).
pub(crate) fn this_command() -> String {
    let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("sluice"))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
    });
    match (me, on_path) {
        (Some(me), Some(found)) if me == found => "sluice".into(),
        (Some(me), _) => me.display().to_string(),
        (None, _) => "sluice".into(),
    }
}

/// Connects to Redis for a tool.
async fn tool_connection(tool: &crate::config::ToolSettings) -> Result<crate::redis_conn::RedisConn> {
    crate::redis_conn::connect(&tool.redis, Duration::from_secs(1))
        .await
        .map_err(|e| anyhow::anyhow!("{} — the address comes from {}", crate::backoff::one_line(&e), tool.redis_origin))
}
