use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sluice::cli::{self, Cli, Command, PluginCommand};

fn init_logs(format: &str) {
    // The Redis Cluster client logs every reconnection attempt while a shard fails over
    // (hundreds of lines a second); Sluice says what failed itself. Unless asked for.
    let directives = std::env::var("SLUICE_LOG").unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    let directives =
        if directives.contains("redis") { directives } else { format!("{directives},redis::cluster_handling=error") };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn,redis::cluster_handling=error".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let args = Cli::parse();
    // One TLS crypto provider for the process (the Redis and ClickHouse clients use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logs(&args.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async move {
        match args.command {
            Command::Run(run) => {
                let settings = run.settings()?;
                sluice::host::run(settings, Duration::from_secs(run.shutdown_grace_s)).await.map(|_| true)
            }
            Command::Publish(p) => cli::publish(p).await.map(|_| true),
            Command::Plugin(PluginCommand::Inspect {
                file,
                clickhouse_url,
                clickhouse_database,
                clickhouse_user,
                clickhouse_password,
            }) => {
                let live = clickhouse_url.map(|url| cli::LiveTarget {
                    url,
                    user: clickhouse_user,
                    password: clickhouse_password,
                });
                cli::inspect(&file, &clickhouse_database, live).await
            }
            Command::Dlq(d) => cli::dlq(d).await.map(|_| true),
            Command::Replay(r) => cli::replay(r).await.map(|_| true),
            Command::Health(h) => cli::health(h).await,
            Command::Plugin(PluginCommand::New { name, lang, dir }) => sluice::scaffold::new_plugin(&name, &lang, &dir)
                .map(|root| {
                    println!("{}", sluice::scaffold::next_steps(&root, &name, &lang));
                    true
                }),
            Command::Plugin(PluginCommand::Test { file, fixtures }) => sluice::fixtures::run(&file, &fixtures).await,
            Command::Plugin(PluginCommand::Run { file, event, event_type }) => {
                cli::run_plugin(&file, &event, event_type.as_deref()).await
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
