//! The ceiling for this pipeline: a minimal Rust reader/writer with no plugin. XREADGROUP 1,000
//! entries at a time from `events:PromoCodeAppliedEvent`, the same rows as promo-code-analytics
//! encoded straight to RowBinary, one INSERT per up to 100,000 rows (or 100 ms), then XACK.
//! Reading and inserting overlap (two tasks), as they do in Sluice.
//!
//!     limit-pipeline REDIS_URL CLICKHOUSE_URL

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};
use serde::Deserialize;

const STREAM: &str = "events:PromoCodeAppliedEvent";
const GROUP: &str = "limit";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromoCodeApplied<'a> {
    promo_code_id: &'a str,
    promo_code: &'a str,
    user_id: &'a str,
    order_id: &'a str,
    order_amount: f64,
    discount_amount: f64,
    created_at: &'a str,
}

fn put_str(out: &mut BytesMut, s: &str) {
    let mut n = s.len() as u64;
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
    out.put_slice(s.as_bytes());
}

/// One row of promo_code_usages_analytics in RowBinary.
fn encode(payload: &[u8], out: &mut BytesMut) -> Result<()> {
    let e: PromoCodeApplied = serde_json::from_slice(payload)?;
    let secs = chrono::DateTime::parse_from_rfc3339(e.created_at)?.timestamp();
    out.put_u16_le(secs.div_euclid(86_400) as u16);
    out.put_u32_le(secs as u32);
    put_str(out, e.promo_code);
    put_str(out, e.promo_code_id);
    put_str(out, e.user_id);
    put_str(out, e.order_id);
    out.put_f64_le(e.order_amount);
    out.put_f64_le(e.discount_amount);
    Ok(())
}

async fn insert(ch: &clickhouse::Client, data: Bytes) -> clickhouse::error::Result<()> {
    let mut insert = ch.insert_formatted_with("INSERT INTO analytics.promo_code_usages_analytics FORMAT RowBinary");
    insert.send(data).await?;
    insert.end().await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (redis_url, ch_url) = (args.get(1).context("REDIS_URL")?, args.get(2).context("CLICKHOUSE_URL")?);
    let client = redis::Client::open(redis_url.as_str())?;
    let mut reader = client.get_multiplexed_async_connection().await?;
    let mut acker = reader.clone();
    let _: redis::RedisResult<()> = reader.xgroup_create_mkstream(STREAM, GROUP, "0").await;
    let ch = clickhouse::Client::default().with_url(ch_url).with_validation(false);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<String>, BytesMut)>(64);

    tokio::spawn(async move {
        let opts = StreamReadOptions::default().group(GROUP, "limit-1").count(1000).block(1000);
        loop {
            let reply: StreamReadReply = match reader.xread_options(&[STREAM], &[">"], &opts).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("read: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            for key in reply.keys {
                let mut ids = Vec::with_capacity(key.ids.len());
                let mut rows = BytesMut::with_capacity(key.ids.len() * 128);
                for entry in key.ids {
                    if let Some(redis::Value::BulkString(p)) = entry.map.get("payload") {
                        if let Err(e) = encode(p, &mut rows) {
                            eprintln!("bad event {}: {e}", entry.id);
                        }
                    }
                    ids.push(entry.id);
                }
                if tx.send((ids, rows)).await.is_err() {
                    return;
                }
            }
        }
    });

    let mut ids: Vec<String> = Vec::new();
    let mut rows = BytesMut::new();
    let mut since = Instant::now();
    loop {
        let got = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await;
        if let Ok(Some((i, r))) = got {
            ids.extend(i);
            rows.extend_from_slice(&r);
        }
        if ids.len() >= 100_000 || (!ids.is_empty() && since.elapsed() >= Duration::from_millis(100)) {
            let data: Bytes = std::mem::take(&mut rows).freeze();
            // Retried until it lands (ClickHouse under load says "too many parts" at times).
            while let Err(e) = insert(&ch, data.clone()).await {
                eprintln!("insert of {} rows failed, retrying: {e}", ids.len());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let _: i64 = acker.xack(STREAM, GROUP, &ids).await?;
            ids.clear();
            since = Instant::now();
        }
        if ids.is_empty() {
            since = Instant::now();
        }
    }
}
