//! `user-stats`: per-user daily totals in `users_analytics`, a SummingMergeTree that adds up
//! one row per order and one per promo code use. It subscribes to the same event types as
//! `order-analytics` and `promo-code-analytics`: each plugin has its own consumer group, so
//! both see every event.

use serde::Deserialize;
use sluice_sdk::{Date, DateTime, Event, Failure, Manifest, Output, Plugin, Table};

sluice_sdk::table! {
    /// A user's activity on one day; rows with the same key are summed by ClickHouse.
    pub struct UserDay = "users_analytics" {
        event_date: Date = "Date",
        user_id: String = "String",
        orders_count: u64 = "UInt64",
        orders_amount: f64 = "Float64",
        promo_uses: u64 = "UInt64",
        discount_amount: f64 = "Float64",
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderCreated {
    #[serde(alias = "customerId")]
    user_id: String,
    #[serde(alias = "totalAmount")]
    amount: f64,
    #[serde(default)]
    created_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromoCodeApplied {
    user_id: String,
    discount_amount: f64,
    created_at: String,
}

pub struct UserStats;

impl Plugin for UserStats {
    fn manifest() -> Manifest {
        Manifest::new("user-stats", env!("CARGO_PKG_VERSION"))
            .subscribe("OrderCreatedEvent")
            .subscribe("order.created")
            .subscribe("PromoCodeAppliedEvent")
            .table(
                Table::of::<UserDay>()
                    .summing(["orders_count", "orders_amount", "promo_uses", "discount_amount"])
                    .partition_by("toYYYYMM(event_date)")
                    .order_by(["event_date", "user_id"]),
            )
    }

    fn handle(event: &Event, out: &mut Output) -> Result<(), Failure> {
        let row = if event.event_type == "PromoCodeAppliedEvent" {
            let e: PromoCodeApplied = event.json()?;
            UserDay {
                event_date: DateTime::parse(&e.created_at)?.date(),
                user_id: e.user_id,
                orders_count: 0,
                orders_amount: 0.0,
                promo_uses: 1,
                discount_amount: e.discount_amount,
            }
        } else {
            let e: OrderCreated = event.json()?;
            let at = match &e.created_at {
                Some(t) => DateTime::parse(t)?,
                None => DateTime::from_millis(event.timestamp_ms),
            };
            UserDay {
                event_date: at.date(),
                user_id: e.user_id,
                orders_count: 1,
                orders_amount: e.amount,
                promo_uses: 0,
                discount_amount: 0.0,
            }
        };
        out.row(&row)
    }
}

sluice_sdk::export_plugin!(UserStats);
