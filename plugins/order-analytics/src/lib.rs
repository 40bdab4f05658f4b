//! `order-analytics`: one row per created order into `orders_analytics`. Accepts both shapes
//! the seeds publish: the NestJS `OrderCreatedEvent` {orderId, userId, amount, createdAt} and
//! the event-bus `order.created` {orderId, customerId, shopId, totalAmount}.

use serde::Deserialize;
use sluice_sdk::{Date, DateTime, Event, Failure, Manifest, Output, Plugin, Table};

sluice_sdk::table! {
    /// One created order.
    pub struct OrderRow = "orders_analytics" {
        event_date: Date = "Date",
        created_at: DateTime = "DateTime",
        order_id: String = "String",
        user_id: String = "String",
        shop_id: Option<String> = "Nullable(String)",
        amount: f64 = "Float64",
        event_type: String = "LowCardinality(String)",
    }
}

/// Both seed shapes of an order-created event.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: String,
    #[serde(alias = "customerId")]
    pub user_id: String,
    #[serde(default)]
    pub shop_id: Option<String>,
    #[serde(alias = "totalAmount")]
    pub amount: f64,
    /// Missing in the event-bus shape: the event's own timestamp is used then.
    #[serde(default)]
    pub created_at: Option<String>,
}

impl OrderCreated {
    /// When the order was created: `createdAt` if given, else the event time.
    pub fn created(&self, event: &Event) -> Result<DateTime, Failure> {
        match &self.created_at {
            Some(t) => DateTime::parse(t),
            None => Ok(DateTime::from_millis(event.timestamp_ms)),
        }
    }
}

pub struct OrderAnalytics;

impl Plugin for OrderAnalytics {
    fn manifest() -> Manifest {
        Manifest::new("order-analytics", env!("CARGO_PKG_VERSION"))
            .subscribe("OrderCreatedEvent")
            .subscribe("order.created")
            .table(Table::of::<OrderRow>().partition_by("toYYYYMM(event_date)").order_by(["event_date", "order_id"]))
    }

    fn handle(event: &Event, out: &mut Output) -> Result<(), Failure> {
        let e: OrderCreated = event.json()?;
        let created_at = e.created(event)?;
        out.row(&OrderRow {
            event_date: created_at.date(),
            created_at,
            order_id: e.order_id,
            user_id: e.user_id,
            shop_id: e.shop_id,
            amount: e.amount,
            event_type: event.event_type.clone(),
        })
    }
}

sluice_sdk::export_plugin!(OrderAnalytics);
