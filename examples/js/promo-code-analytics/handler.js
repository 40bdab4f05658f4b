// `promo-code-analytics-js`: the JavaScript twin of the Rust `promo-code-analytics` plugin.
//
// One row per applied promo code into `promo_code_usages_analytics`, the same rows the Rust
// plugin writes for the same events: `make test` runs the Rust plugin's fixtures against this
// build and compares both plugins' tables in ClickHouse row by row (tests/tests/languages.rs).
//
// Build: `make examples` from the repository's top (componentize-js only resolves imports
// below the directory it runs in, so it runs there and finds sdk/js/).

import { Instant, Table } from '../../../sdk/js/sluice_sdk.js';

export const promoCodeUsages = new Table(
  'promo_code_usages_analytics',
  [
    ['event_date', 'Date'],
    ['created_at', 'DateTime'],
    ['promo_code', 'String'],
    ['promo_code_id', 'String'],
    ['user_id', 'String'],
    ['order_id', 'String'],
    ['order_amount', 'Float64'],
    ['discount_amount', 'Float64'],
  ],
  { partitionBy: 'toYYYYMM(event_date)', orderBy: ['event_date', 'promo_code'] },
);

// The seed's `PromoCodeAppliedEvent`, as NestJS serialises it.
const promoCodeApplied = {
  promoCodeId: 'string',
  promoCode: 'string',
  userId: 'string',
  orderId: 'string',
  orderAmount: 'number',
  discountAmount: 'number',
  createdAt: 'string',
};

export const plugin = {
  name: 'promo-code-analytics-js',
  version: '0.1.0',
  subscriptions: ['PromoCodeAppliedEvent'],
  tables: [promoCodeUsages],

  handle(event, out) {
    const e = event.json(promoCodeApplied);
    const createdAt = Instant.parse(e.createdAt);
    out.row(promoCodeUsages, {
      event_date: createdAt.date(),
      created_at: createdAt,
      promo_code: e.promoCode,
      promo_code_id: e.promoCodeId,
      user_id: e.userId,
      order_id: e.orderId,
      order_amount: e.orderAmount,
      discount_amount: e.discountAmount,
    });
  },
};
