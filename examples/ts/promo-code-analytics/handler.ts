// `promo-code-analytics-ts`: the TypeScript twin of the Rust `promo-code-analytics` plugin (and
// of the JavaScript one, `examples/js/`, line for line).
//
// One row per applied promo code into `promo_code_usages_analytics`, the same rows the Rust
// plugin writes for the same events: `make test` runs the Rust plugin's fixtures against this
// build and compares the plugins' tables in ClickHouse row by row (tests/tests/languages.rs).
// The table's column declarations type its rows: a misspelled or missing column, or a value
// its ClickHouse type does not take, is a compile error.
//
// Build: `make examples` from the repository's top (tsc, then componentize-js).

import { Instant, Table, type Event, type Output, type Plugin } from '../../../sdk/js/sluice_sdk.js';

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

// The seed's `PromoCodeAppliedEvent`, as NestJS serialises it: required fields and kinds.
const promoCodeApplied = {
  promoCodeId: 'string',
  promoCode: 'string',
  userId: 'string',
  orderId: 'string',
  orderAmount: 'number',
  discountAmount: 'number',
  createdAt: 'string',
} as const;

export const plugin: Plugin = {
  name: 'promo-code-analytics-ts',
  version: '0.1.0',
  subscriptions: ['PromoCodeAppliedEvent'],
  tables: [promoCodeUsages],

  handle(event: Event, out: Output) {
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
