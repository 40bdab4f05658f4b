//! `sluice plugin inspect|run|test|bench|new|build|dev|types`: plugins without Redis or ClickHouse (inspect can compare
//! with a live ClickHouse).

mod bench;
mod build;
mod dev;
mod fixtures;
mod inspect;
mod offline;
mod run;
mod scaffold;
mod ts_types;

use anyhow::Result;

use self::inspect::LiveTarget;
use super::PluginCommand;

/// Runs a `plugin` subcommand. Ok(false): the answer is no (exit code 1).
pub async fn run(command: PluginCommand) -> Result<bool> {
    match command {
        PluginCommand::Inspect { file, clickhouse_url, clickhouse_database, clickhouse_user, clickhouse_password } => {
            let live =
                clickhouse_url.map(|url| LiveTarget { url, user: clickhouse_user, password: clickhouse_password });
            inspect::inspect(&file, &clickhouse_database, live).await
        }
        PluginCommand::New { name, lang, dir } => scaffold::new_plugin(&name, &lang, &dir).map(|root| {
            println!("{}", scaffold::next_steps(&root, &name, &lang));
            true
        }),
        PluginCommand::Build { dir } => build::build(&dir).map(|wasm| {
            println!("{}", wasm.display());
            true
        }),
        PluginCommand::Dev { dir, plugins_dir, fixtures, once } => {
            dev::dev(&dir, &plugins_dir, fixtures.as_deref(), once).await
        }
        PluginCommand::Test { file, fixtures } => fixtures::run(&file, &fixtures).await,
        PluginCommand::Bench { files, event, count, batch, rounds } => {
            bench::bench(&files, event.as_deref(), count, batch, rounds).await.map(|_| true)
        }
        PluginCommand::Types { wit } => ts_types::print(wit.as_deref()).map(|_| true),
        PluginCommand::Run { file, event, event_type } => run::run_plugin(&file, &event, event_type.as_deref()).await,
    }
}
