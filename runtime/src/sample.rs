//! Generated events of the seed types, for `sluice publish --count`, demos and benchmarks.
//! Deterministic in the index, so a run can be checked against known totals.

use anyhow::{Result, bail};
use serde_json::{Value, json};

/// The seed event types `sluice publish --count` can generate.
pub const SEED_TYPES: &[&str] = &["PromoCodeAppliedEvent", "OrderCreatedEvent", "order.created"];

/// The payload of generated event `i` of `event_type`.
pub fn payload(event_type: &str, i: u64) -> Result<Value> {
    let day = 1 + (i % 28);
    let created_at = format!("2024-06-{day:02}T{:02}:{:02}:{:02}.000Z", i % 24, i % 60, (i * 7) % 60);
    let user = format!("user-{}", i % 1000);
    let order = format!("order-{event_type}-{i}");
    // Amounts in whole cents so that sums in ClickHouse are exact.
    let amount = ((i % 10_000) as f64) / 100.0 + 10.0;
    Ok(match event_type {
        "PromoCodeAppliedEvent" => json!({
            "promoCodeId": format!("promo-{}", i % 50),
            "promoCode": format!("SUMMER{}", i % 50),
            "userId": user,
            "orderId": order,
            "orderAmount": amount,
            "discountAmount": ((i % 500) as f64) / 100.0,
            "createdAt": created_at,
        }),
        "OrderCreatedEvent" => json!({
            "orderId": order,
            "userId": user,
            "amount": amount,
            "createdAt": created_at,
        }),
        "order.created" => json!({
            "orderId": order,
            "customerId": user,
            "shopId": format!("shop-{}", i % 20),
            "totalAmount": amount,
        }),
        other => bail!("no generator for event type `{other}`; generated events exist for {}", SEED_TYPES.join(", ")),
    })
}
