use std::process::ExitCode;

use clap::Parser;
use sluice::cli::Cli;

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

unsafe extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}

fn main() -> ExitCode {
    let args = Cli::parse();
    // The tools' output piped into `head` and the like: end quietly when the reader goes away,
    // as command-line tools do, instead of panicking on a broken pipe. (`run` keeps Rust's
    // default: a peer closing a socket must not kill the host.)
    if !matches!(args.command, sluice::cli::Command::Run(_)) {
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: restoring a signal's default disposition before any thread starts.
        unsafe { signal(SIGPIPE, SIG_DFL) };
    }
    // One TLS crypto provider for the process (the Redis and ClickHouse clients use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logs(&args.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    // Exit codes (see `cli`): 0 success, 1 "no" (a failed check), 2 an error.
    match rt.block_on(sluice::cli::run(args.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
