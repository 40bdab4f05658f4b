//! Start-up and evolution of the tables plugins declare.
//!
//! Before a plugin version starts, each of its tables is compared with what exists in
//! ClickHouse ([`TableSchema::compare`]):
//! - missing: created, and recorded in the registry table `sluice_tables`;
//! - the same: nothing to do;
//! - new columns or Enum items only, in a table Sluice created: `ALTER TABLE ... ADD COLUMN` /
//!   `MODIFY COLUMN` for each;
//! - anything else (a type, engine or key change, a dropped column, or a missing column in a
//!   table Sluice did not create): the plugin version is refused with every reason, and nothing
//!   is changed — not even the tables of that plugin that were fine.
//!
//! The registry is how the host tells its own tables from tables someone else made: those are
//! checked like any other but never altered. It also keeps who changed what: every create and
//! every added column is a row (plugin, version, file hash, the DDL run, when).
//!
//! Ownership policy: a table belongs to one plugin — the one that created it (`create` row),
//! or, for a table Sluice did not create, the first plugin that declared it (`adopt` row). Any
//! other plugin that declares it is refused at load, naming the owner, unless the host config
//! shares the table with it (`[tables.<name>] shared_with = ["plugin", ...]`): a plugin it is
//! shared with may declare, write and evolve it as its owner does. The owner is a plugin
//! *name*: a renamed plugin is another plugin, and gets its old tables back only when they are
//! shared with its new name (its consumer groups are new too: see the plugin guide).

use super::clickhouse::{ChClient, ChError};
use super::dedup::ServerDedup;
use crate::schema::ENTRY_COLUMN;
use crate::schema::{Change, ColumnType, LiveTable, RESERVED_PREFIX, TableSchema, sql_string};

/// The plugin version a change is made for, as recorded in the registry.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub plugin: &'a str,
    pub version: &'a str,
    pub hash: &'a str,
}

/// Tables the operator shares beyond their owner: table name → the other plugins that may
/// declare, write and evolve it (`[tables.<name>] shared_with` in the host config).
pub type Shares = std::collections::HashMap<String, Vec<String>>;

/// What preparing one table takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The table does not exist: create it.
    Create,
    /// The live table matches the declaration.
    UpToDate,
    /// The live table (made by Sluice) needs these changes: new columns, Enums with new items.
    Alter(Vec<Change>),
    /// The live table, made by someone else and declared by no plugin yet, matches: this
    /// plugin becomes its owner (it is never altered).
    Adopt,
    /// The declaration is incompatible with the live table, for these reasons.
    Refused(Vec<String>),
}

/// Why a plugin's tables could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The declaration conflicts with a live table; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    ClickHouse(#[from] ChError),
}

fn registry(client: &ChClient) -> String {
    format!("{}.{RESERVED_PREFIX}tables", client.database())
}

/// Creates the registry table if it is missing.
/// On a cluster it is Replicated, so that every replica knows which tables Sluice made.
pub async fn ensure_registry(client: &ChClient) -> Result<(), ChError> {
    let engine = match client.cluster() {
        Some(_) => {
            // An ON CLUSTER task waits for every server: only when the table is missing.
            let exists = format!(
                "SELECT count() AS n FROM system.tables WHERE database = {} AND name = '{RESERVED_PREFIX}tables'",
                crate::schema::sql_string(client.database())
            );
            if client.query_count(&exists).await? > 0 {
                return Ok(());
            }
            format!(
                "ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{}.{RESERVED_PREFIX}tables', '{{replica}}')",
                client.database()
            )
        }
        None => "MergeTree()".to_string(),
    };
    client
        .execute_ddl(&format!(
            "CREATE TABLE IF NOT EXISTS {} (table_name String, plugin String, plugin_version String, \
                 plugin_hash String, change String, ddl String, changed_at DateTime) \
                 ENGINE = {engine} ORDER BY (table_name, changed_at)",
            registry(client)
        ))
        .await
}

/// Reads a table as it exists; None if it does not.
pub async fn live_table(client: &ChClient, name: &str) -> Result<Option<LiveTable>, ChError> {
    let (db, t) = (sql_string(client.database()), sql_string(name));
    let tables = client
        .query_json(&format!(
            "SELECT engine_full, partition_key, sorting_key FROM system.tables WHERE database = {db} AND name = {t}"
        ))
        .await?;
    let Some(row) = tables.first() else { return Ok(None) };
    let text = |k: &str| row.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let columns = client
        .query_json(&format!("SELECT name, type FROM system.columns WHERE database = {db} AND table = {t}"))
        .await?
        .iter()
        .map(|c| {
            let f = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            (f("name"), f("type"))
        })
        .collect();
    let managed = client
        .query_count(&format!(
            "SELECT count() AS n FROM {} WHERE table_name = {t} AND change = 'create'",
            registry(client)
        ))
        .await?
        > 0;
    let owner = client
        .query_json(&format!(
            "SELECT plugin FROM {} WHERE table_name = {t} AND change IN ('create', 'adopt') ORDER BY changed_at, plugin LIMIT 1",
            registry(client)
        ))
        .await?
        .first()
        .and_then(|r| r.get("plugin").and_then(|p| p.as_str()).map(str::to_string));
    Ok(Some(LiveTable {
        columns,
        engine: engine_of(&text("engine_full")),
        engine_full: text("engine_full"),
        partition_key: text("partition_key"),
        sorting_key: text("sorting_key"),
        managed,
        owner,
    }))
}

/// The engine and its arguments: `engine_full` up to the first clause after them.
fn engine_of(engine_full: &str) -> String {
    let cut = [" PARTITION BY ", " ORDER BY ", " PRIMARY KEY ", " SAMPLE BY ", " TTL ", " SETTINGS "]
        .iter()
        .filter_map(|c| engine_full.find(c))
        .min()
        .unwrap_or(engine_full.len());
    engine_full[..cut].trim().to_string()
}

/// What preparing `schema` for plugin `plugin` takes, without changing anything. A column type
/// the server lacks, or a table another plugin owns and does not share with it, refuses it.
pub async fn plan(client: &ChClient, schema: &TableSchema, plugin: &str, shares: &Shares) -> Result<Plan, ChError> {
    let caps = client.caps().await?;
    let mut problems: Vec<String> = schema
        .columns
        .iter()
        .filter_map(|c| caps.lacks(&c.ty).map(|why| format!("column `{}` {}: {why}", c.name, c.ty)))
        .collect();
    if !problems.is_empty() {
        return Ok(Plan::Refused(problems));
    }
    let Some(live) = live_table(client, &schema.name).await? else { return Ok(Plan::Create) };
    let shared = shares.get(&schema.name).is_some_and(|s| s.iter().any(|p| p == plugin));
    match &live.owner {
        Some(owner) if owner != plugin && !shared => problems.push(format!(
            "it belongs to the plugin `{owner}`, which {} it; another plugin may write it only if the host config shares it: [tables.{}] shared_with = [\"{plugin}\"]",
            if live.managed { "created" } else { "declared it first and adopted" },
            schema.name
        )),
        _ => {}
    }
    match schema.compare(&live) {
        Err(more) => problems.extend(more),
        Ok(_) if !problems.is_empty() => {}
        Ok(_) if live.owner.is_none() && !live.managed => return Ok(Plan::Adopt),
        Ok(changes) if changes.is_empty() => return Ok(Plan::UpToDate),
        Ok(changes) => return Ok(Plan::Alter(changes)),
    }
    Ok(Plan::Refused(problems))
}

async fn record(client: &ChClient, table: &str, owner: Owner<'_>, change: &str, ddl: &str) -> Result<(), ChError> {
    let values = [table, owner.plugin, owner.version, owner.hash, change, ddl].map(sql_string).join(", ");
    client.execute(&format!("INSERT INTO {} VALUES ({values}, now())", registry(client))).await
}

/// Prepares every table of one plugin version: all are planned first, and if any is refused
/// nothing is changed. New tables are created as `server` allows (Replicated when ZooKeeper
/// is there, see `dedup`). Then each table's guarantee and entry column are read from the live
/// table into `tables`. Returns what was done per table (for the log).
pub async fn prepare_plugin(
    client: &ChClient,
    server: &ServerDedup,
    tables: &mut [TableSchema],
    owner: Owner<'_>,
    shares: &Shares,
) -> Result<Vec<(String, Plan)>, PrepareError> {
    ensure_registry(client).await?;
    let mut plans = Vec::with_capacity(tables.len());
    for t in tables.iter() {
        plans.push(plan(client, t, owner.plugin, shares).await?);
    }
    let refused: Vec<String> = tables
        .iter()
        .zip(&plans)
        .filter_map(|(t, p)| match p {
            Plan::Refused(problems) => Some(format!("table {}.{}: {}", client.database(), t.name, problems.join("; "))),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        return Err(PrepareError::Refused(refused.join(" | ")));
    }
    for (t, p) in tables.iter().zip(&plans) {
        apply(client, server, t, p, owner).await?;
    }
    for t in tables.iter_mut() {
        let live = live_table(client, &t.name).await?.ok_or_else(|| {
            PrepareError::Refused(format!("table {}.{} vanished after it was prepared", client.database(), t.name))
        })?;
        t.guarantee = server.guarantee_of(&live);
        t.window = server.window_of(&live, t.guarantee);
        t.entry_column = live.columns.iter().any(|(n, _)| n == ENTRY_COLUMN);
    }
    Ok(tables.iter().map(|t| t.name.clone()).zip(plans).collect())
}

async fn apply(
    client: &ChClient,
    server: &ServerDedup,
    schema: &TableSchema,
    plan: &Plan,
    owner: Owner<'_>,
) -> Result<(), PrepareError> {
    match plan {
        Plan::UpToDate | Plan::Refused(_) => Ok(()),
        Plan::Adopt => {
            record(client, &schema.name, owner, "adopt", "").await?;
            tracing::info!(table = %schema.name, plugin = owner.plugin, "a table Sluice did not create is now this plugin's (it is written, never altered)");
            Ok(())
        }
        Plan::Create => {
            let ddl = server.create_ddl(schema, client.database());
            // Recorded first, so that another host looking at the new table sees it as ours.
            record(client, &schema.name, owner, "create", &ddl).await?;
            client.execute_ddl(&ddl).await?;
            tracing::info!(table = %schema.name, plugin = owner.plugin, version = owner.version, "table created");
            Ok(())
        }
        Plan::Alter(changes) => {
            // A Replicated table passes its ALTERs to its replicas itself: ON CLUSTER only
            // for the others.
            let replicated = match client.cluster().is_some() || client.endpoint_count() > 1 {
                true => live_table(client, &schema.name).await?.is_some_and(|t| t.engine.starts_with("Replicated")),
                false => false,
            };
            for change in changes {
                let c = change.column();
                let ddl = change.ddl(client.database(), &schema.name);
                record(client, &schema.name, owner, change.kind(), &ddl).await?;
                let done = match replicated {
                    true => client.execute(&ddl).await,
                    false => client.execute_ddl(&ddl).await,
                };
                if let Err(e) = done {
                    // 18.16 has no ADD COLUMN IF NOT EXISTS: another host may have just made
                    // the same change; if the column is now as declared, that is fine.
                    match live_table(client, &schema.name).await? {
                        Some(live)
                            if live
                                .columns
                                .iter()
                                .any(|(n, t)| n == &c.name && ColumnType::parse(t).is_ok_and(|t| t == c.ty)) => {}
                        _ => return Err(e.into()),
                    }
                }
                tracing::info!(table = %schema.name, column = %c.name, r#type = %c.ty, plugin = owner.plugin, version = owner.version, "{}", change.describe());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_of_engine_full() {
        assert_eq!(
            engine_of("SummingMergeTree(x) PARTITION BY toYYYYMM(a) ORDER BY (a, b) SETTINGS index_granularity = 8192"),
            "SummingMergeTree(x)"
        );
        assert_eq!(engine_of("MergeTree ORDER BY k SETTINGS index_granularity = 8192"), "MergeTree");
        assert_eq!(engine_of("Log"), "Log");
    }
}
