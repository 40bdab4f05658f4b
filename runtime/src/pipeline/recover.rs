//! Events delivered again (a retry, a dead host's batch, a job run again): which exactly-once
//! tables already hold their rows. A recorded batch still open (its writer died, or has not
//! closed it yet) is inserted again first — identical, so the table drops it if it had landed —
//! and then counts as written. The events' new rows for those tables are dropped.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Result;

use super::Stage;
use crate::ledger;
use crate::source::SourceEvent;

impl Stage {
    /// Marks in each event's `written` the tables that hold its rows from an earlier delivery,
    /// and in `chunk_refs` the ledger's chunk fields that list it. `chunked`: the source's
    /// batches are indexed by chunk (see `ledger`).
    pub(super) async fn find_written(&self, events: &mut [SourceEvent], chunked: bool) -> Result<()> {
        if !self.writer.exactly_once() {
            // Off: at-least-once, the events are handled again in full.
            return Ok(());
        }
        // A connection of its own: batches of one pipeline are handled side by side.
        let mut control = self.control.clone();
        let group = self.who.group.clone();
        // This version's exactly-once tables, and any table an earlier version recorded
        // batches for (dropped since, or no longer exactly-once): those batches are re-sent
        // too, or their rows would be lost.
        let mut tables: Vec<String> = self.who.ledger_tables.to_vec();
        for t in ledger::recorded_tables(&mut control, &group).await? {
            if !tables.contains(&t) {
                tables.push(t);
            }
        }
        let mut streams: Vec<Arc<str>> = Vec::new();
        for e in events.iter() {
            if !streams.contains(&e.stream) {
                streams.push(e.stream.clone());
            }
        }
        for table in &tables {
            let table_index = self.plugin.tables.iter().position(|t| &t.name == table);
            let acked_with_fields = self.who.ledger_tables.contains(table);
            for stream in streams.iter().cloned() {
                let idx: Vec<usize> = (0..events.len()).filter(|&i| events[i].stream == stream).collect();
                let ids: Vec<&str> = idx.iter().map(|&i| events[i].entry_id.as_str()).collect();
                let conn = &mut control;
                let mut batches = ledger::written_in(conn, &group, &stream, &ids, table, chunked).await?;
                let open: HashSet<String> = batches.iter().flatten().map(|f| f.batch.clone()).collect();
                if open.is_empty() {
                    continue;
                }
                for id in &open {
                    self.writer.recover(id).await?;
                }
                // Recovery drops the fields of rows ClickHouse refused: read them again.
                batches = ledger::written_in(&mut control, &group, &stream, &ids, table, chunked).await?;
                if !acked_with_fields {
                    // Acknowledging will not delete fields of a table this version does not
                    // write exactly-once: delete them now that their batches are closed.
                    let mut p = redis::pipe();
                    let cluster = control.is_cluster();
                    ledger::forget(&mut p, &group, &stream, &ids, std::slice::from_ref(table), cluster);
                    p.query_async::<()>(&mut control).await?;
                }
                let mut written = 0;
                for (&i, found) in idx.iter().zip(&batches) {
                    if let (Some(_), Some(t)) = (found, table_index) {
                        events[i].written.push(t);
                    }
                    if let Some(f) = found.as_ref().and_then(|f| f.chunk_field.clone())
                        && !events[i].chunk_refs.contains(&f)
                    {
                        events[i].chunk_refs.push(f);
                    }
                    written += found.is_some() as usize;
                }
                tracing::info!(stream = %stream, plugin = %self.who.plugin, table = %table, events = written, batches = open.len(), "events delivered again already have rows in this table (exactly-once): their new rows for it are dropped");
            }
        }
        Ok(())
    }
}
