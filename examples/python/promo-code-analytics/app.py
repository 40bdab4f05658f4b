"""`promo-code-analytics-py`: the Python twin of the Rust `promo-code-analytics` plugin.

One row per applied promo code into `promo_code_usages_analytics`, the same rows the Rust
plugin writes for the same events: `make test` runs the Rust plugin's fixtures against this
build and compares both plugins' tables in ClickHouse row by row (tests/tests/languages.rs).

Build: `make examples` from the repository's top (componentize-py, with sdk/python on the path).
"""

import sluice_sdk
from sluice_sdk import DateTime, Plugin, Table

PROMO_CODE_USAGES = Table(
    "promo_code_usages_analytics",
    [
        ("event_date", "Date"),
        ("created_at", "DateTime"),
        ("promo_code", "String"),
        ("promo_code_id", "String"),
        ("user_id", "String"),
        ("order_id", "String"),
        ("order_amount", "Float64"),
        ("discount_amount", "Float64"),
    ],
    partition_by="toYYYYMM(event_date)",
    order_by=["event_date", "promo_code"],
)

# The seed's `PromoCodeAppliedEvent`, as NestJS serialises it.
PROMO_CODE_APPLIED = {
    "promoCodeId": str,
    "promoCode": str,
    "userId": str,
    "orderId": str,
    "orderAmount": float,
    "discountAmount": float,
    "createdAt": str,
}


class PromoCodeAnalytics(Plugin):
    name = "promo-code-analytics-py"
    version = "0.1.0"
    subscriptions = ["PromoCodeAppliedEvent"]
    tables = [PROMO_CODE_USAGES]

    def handle(self, event, out):
        e = event.json(PROMO_CODE_APPLIED)
        created_at = DateTime.parse(e["createdAt"])
        out.row(
            PROMO_CODE_USAGES,
            {
                "event_date": created_at.date(),
                "created_at": created_at,
                "promo_code": e["promoCode"],
                "promo_code_id": e["promoCodeId"],
                "user_id": e["userId"],
                "order_id": e["orderId"],
                "order_amount": float(e["orderAmount"]),
                "discount_amount": float(e["discountAmount"]),
            },
        )


Handler = sluice_sdk.export(PromoCodeAnalytics())
