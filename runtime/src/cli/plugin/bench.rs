//! `sluice plugin bench`: what a plugin costs per event, with no Redis and no ClickHouse.
//!
//! The figure is the wall-clock time of `Sandbox::run` per event — lifting the batch into the
//! component, the handler, lowering its output, and the host's check and RowBinary encoding of
//! the rows — which is what the pipeline pays per event besides Redis and ClickHouse. It is how
//! plugin authors compare two versions of a handler, and how the SDKs were tuned
//! (docs/performance.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::offline::{load_one, read_events};
use crate::plugin::{Sandbox, wit};

/// Generated events of `event_type` (see `sample`), numbered from 0.
fn generated(event_type: &str, n: usize) -> Result<Vec<wit::Event>> {
    (0..n as u64)
        .map(|i| {
            Ok(wit::Event {
                id: format!("bench-{i}"),
                event_type: event_type.to_string(),
                timestamp_ms: 1_717_200_000_000 + i as i64,
                payload: crate::sample::payload(event_type, i)?.to_string(),
                source: Some("sluice-plugin-bench".into()),
                tenant: None,
                attempt: 1,
            })
        })
        .collect()
}

pub async fn bench(files: &[PathBuf], event: Option<&Path>, count: usize, batch: usize, rounds: usize) -> Result<()> {
    if batch == 0 || count < batch || rounds == 0 {
        bail!(
            "--count ({count}) must be at least --batch ({batch}), which must be at least 1, and --rounds at least 1"
        );
    }
    let given = event.map(|e| read_events(e, None)).transpose()?;
    println!("{:<32} {:>10} {:>12} {:>10} {:>10}", "plugin", "µs/event", "events/s", "rows", "failed");
    for file in files {
        let plugin = Arc::new(load_one(file).await?);
        let events = match &given {
            Some(e) if e.is_empty() => bail!("{}: no events", event.unwrap_or(Path::new("")).display()),
            Some(e) => e.iter().cycle().take(count).cloned().collect(),
            None => {
                let seed = plugin
                    .manifest
                    .subscriptions
                    .iter()
                    .find(|s| crate::sample::SEED_TYPES.contains(&s.as_str()))
                    .with_context(|| {
                        format!(
                            "{} subscribes to no seed event type ({}): give events with --event",
                            file.display(),
                            crate::sample::SEED_TYPES.join(", ")
                        )
                    })?;
                generated(seed, count)?
            }
        };
        let mut sandbox = Sandbox::new(plugin.clone());
        let (mut best, mut rows, mut failed) = (f64::MAX, 0, 0);
        // Round 0 warms up: the instance, the interpreter's caches, the allocator.
        for round in 0..=rounds {
            let started = Instant::now();
            (rows, failed) = (0, 0);
            for chunk in events.chunks(batch) {
                let out = sandbox.run(chunk, &[]).await;
                failed += out.failures.len();
                rows += out.tables.iter().map(|t| t.rows).sum::<usize>();
            }
            if round > 0 {
                best = best.min(started.elapsed().as_secs_f64() * 1e6 / count as f64);
            }
        }
        println!("{:<32} {:>10.2} {:>12.0} {:>10} {:>10}", plugin.name(), best, 1e6 / best, rows, failed);
    }
    Ok(())
}
