//! Events in: the BullMQ example producer, and the seed events with what they add up to in
//! the first-party plugins' tables.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::*;

/// Runs the example BullMQ producer (`examples/bullmq/producer.js`, with the real `bullmq`
/// package from npm) against `redis`; returns the JSON line it prints.
pub fn bullmq(redis: &Redis, args: &[&str]) -> Result<serde_json::Value> {
    bullmq_at(&redis.url(), args)
}

/// Runs the example Python Streams producer (`examples/python-streams/producer.py`, with the
/// real redis-py) against `redis`; returns the entry id it prints.
pub fn python_producer(redis: &Redis, args: &[&str]) -> Result<String> {
    let root = repo_root();
    let python = producer_python();
    assert!(
        python.exists(),
        "no redis-py in target/tools/python-producer: run `make examples` (scripts/plugin-toolchains.sh)"
    );
    let out = Command::new("timeout")
        .arg("60")
        .arg(python)
        .arg(root.join("examples/python-streams/producer.py"))
        .arg("--redis-url")
        .arg(redis.url())
        .args(args)
        .output()
        .context("cannot run python")?;
    if !out.status.success() {
        bail!(
            "producer.py {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Node.js: the 20 that scripts/plugin-toolchains.sh fetched when the system's is older.
pub fn node_bin() -> PathBuf {
    let own = repo_root().join("target/tools/node/bin/node");
    if own.exists() { own } else { PathBuf::from("node") }
}

/// The Python with redis-py that scripts/plugin-toolchains.sh installed.
pub fn producer_python() -> PathBuf {
    repo_root().join("target/tools/python-producer/bin/python")
}

/// [`bullmq`] against a Redis URL.
pub fn bullmq_at(redis_url: &str, args: &[&str]) -> Result<serde_json::Value> {
    node_producer("bullmq", redis_url, args)
}

/// Runs the example classic Bull producer (`examples/bull/producer.js`, with the real `bull`
/// package from npm) against `redis`; returns the JSON line it prints.
pub fn bull(redis: &Redis, args: &[&str]) -> Result<serde_json::Value> {
    node_producer("bull", &redis.url(), args)
}

/// Runs `examples/<package>/producer.js` (which uses the npm package `package`).
fn node_producer(package: &str, redis_url: &str, args: &[&str]) -> Result<serde_json::Value> {
    let root = repo_root();
    assert!(
        root.join(format!("examples/{package}/node_modules/{package}")).exists(),
        "no {package} in examples/{package}/node_modules: run `make examples` (scripts/plugin-toolchains.sh)"
    );
    let node = node_bin();
    // A bound on every wait: a producer whose Redis is gone would retry for ever.
    let mut cmd = Command::new("timeout");
    cmd.arg("180")
        .arg(node)
        .arg(root.join(format!("examples/{package}/producer.js")))
        .args(&args[..1])
        .arg("--redis-url")
        .arg(redis_url);
    cmd.args(&args[1..]);
    let out = cmd.output().context("cannot run node")?;
    if !out.status.success() {
        bail!(
            "producer.js {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("producer.js printed `{text}`"))
}

/// What events of the three seed types (`OrderCreatedEvent`, `order.created`,
/// `PromoCodeAppliedEvent`) add up to in the first-party plugins' tables. Amounts are
/// multiples of 0.25 (exact in binary), so float sums are exact in any order.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SeedSums {
    pub orders: i64,
    pub order_amount: f64,
    pub promos: i64,
    pub promo_order_amount: f64,
    pub discount: f64,
}

impl SeedSums {
    /// Event `i` of the seed mix (types in turn): its stream and payload, counted in `self`.
    pub fn event(&mut self, i: u32) -> (String, String) {
        let ty = ["OrderCreatedEvent", "order.created", "PromoCodeAppliedEvent"][(i % 3) as usize];
        let amount = (i % 400) as f64 * 0.25 + 1.0;
        let payload = if ty == "PromoCodeAppliedEvent" {
            let discount = (i % 40) as f64 * 0.25;
            self.promos += 1;
            self.promo_order_amount += amount;
            self.discount += discount;
            serde_json::json!({"promoCodeId": format!("p{}", i % 7), "promoCode": format!("CODE{}", i % 7), "userId": format!("u{}", i % 300),
                "orderId": format!("o-{i}"), "orderAmount": amount, "discountAmount": discount, "createdAt": "2024-06-01T10:00:00Z"})
        } else {
            self.orders += 1;
            self.order_amount += amount;
            serde_json::json!({"orderId": format!("o-{i}"), "userId": format!("u{}", i % 300), "amount": amount, "createdAt": "2024-06-01T10:00:00Z"})
        };
        (format!("events:{ty}"), payload.to_string())
    }

    /// The tables as a plain query sees them: no FINAL, no GROUP BY event.
    pub fn in_tables(ch: &ClickHouse) -> Result<SeedSums> {
        let orders = ch.query("SELECT count(), sum(amount) FROM analytics.orders_analytics")?;
        let promos = ch.query(
            "SELECT count(), sum(order_amount), sum(discount_amount) FROM analytics.promo_code_usages_analytics",
        )?;
        let o: Vec<&str> = orders.split('\t').collect();
        let p: Vec<&str> = promos.split('\t').collect();
        Ok(SeedSums {
            orders: o[0].parse()?,
            order_amount: o[1].parse()?,
            promos: p[0].parse()?,
            promo_order_amount: p[1].parse()?,
            discount: p[2].parse()?,
        })
    }

    /// `users_analytics`' sums these events must give, as [`user_sums`] prints them.
    pub fn user_sums_text(&self) -> String {
        format!("{}\t{}\t{}\t{}", self.orders, self.order_amount, self.promos, self.discount)
    }
}

/// What the queue producers' PromoCodeAppliedEvent jobs add up to in promo-code-analytics'
/// table: (rows, distinct orders, order amounts in cents, discounts in cents).
pub fn promo_sums(ch: &ClickHouse) -> Result<(i64, i64, i64, i64)> {
    let r = ch.query(
        "SELECT count(), uniqExact(order_id), sum(toInt64(round(order_amount * 100))), \
         sum(toInt64(round(discount_amount * 100))) FROM analytics.promo_code_usages_analytics",
    )?;
    let v: Vec<i64> = r.split('\t').map(|x| x.trim().parse().unwrap_or(-1)).collect();
    Ok((v[0], v[1], v[2], v[3]))
}

/// `users_analytics`' sums (a SummingMergeTree: its row count shrinks as parts merge, its
/// sums do not); empty if it cannot be read.
pub fn user_sums(ch: &ClickHouse) -> String {
    ch.query(
        "SELECT sum(orders_count), sum(orders_amount), sum(promo_uses), sum(discount_amount) FROM analytics.users_analytics",
    )
    .unwrap_or_default()
}
