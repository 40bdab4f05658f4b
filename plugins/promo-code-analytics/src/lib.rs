//! `promo-code-analytics`: one row per applied promo code, as the seed's
//! `PromoCodeAnalyticsConsumer` wrote them, into `promo_code_usages_analytics`.

use serde::Deserialize;
use sluice_sdk::{Date, DateTime, Event, Failure, Manifest, Output, Plugin, Table};

sluice_sdk::table! {
    /// One use of a promo code on an order.
    pub struct PromoCodeUsage = "promo_code_usages_analytics" {
        event_date: Date = "Date",
        created_at: DateTime = "DateTime",
        promo_code: String = "String",
        promo_code_id: String = "String",
        user_id: String = "String",
        order_id: String = "String",
        order_amount: f64 = "Float64",
        discount_amount: f64 = "Float64",
    }
}

/// The seed's `PromoCodeAppliedEvent`, as NestJS serialises it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromoCodeApplied {
    promo_code_id: String,
    promo_code: String,
    user_id: String,
    order_id: String,
    order_amount: f64,
    discount_amount: f64,
    created_at: String,
}

pub struct PromoCodeAnalytics;

impl Plugin for PromoCodeAnalytics {
    fn manifest() -> Manifest {
        Manifest::new("promo-code-analytics", env!("CARGO_PKG_VERSION")).subscribe("PromoCodeAppliedEvent").table(
            Table::of::<PromoCodeUsage>().partition_by("toYYYYMM(event_date)").order_by(["event_date", "promo_code"]),
        )
    }

    fn handle(event: &Event, out: &mut Output) -> Result<(), Failure> {
        let e: PromoCodeApplied = event.json()?;
        let created_at = DateTime::parse(&e.created_at)?;
        out.row(&PromoCodeUsage {
            event_date: created_at.date(),
            created_at,
            promo_code: e.promo_code,
            promo_code_id: e.promo_code_id,
            user_id: e.user_id,
            order_id: e.order_id,
            order_amount: e.order_amount,
            discount_amount: e.discount_amount,
        })
    }
}

sluice_sdk::export_plugin!(PromoCodeAnalytics);
