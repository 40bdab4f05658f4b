// What the replaced services write: the rows of promo-code-analytics, by ClickHouse's HTTP
// interface. Shared by the example Bull and BullMQ consumers (consumer.js).

// The table as promo-code-analytics declares it, so that Sluice takes it over as it is.
const DDL = `CREATE TABLE IF NOT EXISTS analytics.promo_code_usages_analytics (
  event_date Date, created_at DateTime, promo_code String, promo_code_id String, user_id String,
  order_id String, order_amount Float64, discount_amount Float64
) ENGINE = MergeTree PARTITION BY toYYYYMM(event_date) ORDER BY (event_date, promo_code)`;

export async function clickhouse(url, query, body = '') {
  const r = await fetch(`${url}/?query=${encodeURIComponent(query)}`, { method: 'POST', body });
  if (!r.ok) throw new Error(`ClickHouse: ${r.status} ${await r.text()}`);
  return r.text();
}

export async function prepare(url) {
  await clickhouse(url, 'CREATE DATABASE IF NOT EXISTS analytics');
  await clickhouse(url, DDL);
}

// A PromoCodeAppliedEvent as the NestJS services serialise it, as a row.
export function row(e) {
  const created = e.createdAt.slice(0, 19).replace('T', ' ');
  return {
    event_date: created.slice(0, 10),
    created_at: created,
    promo_code: e.promoCode,
    promo_code_id: e.promoCodeId,
    user_id: e.userId,
    order_id: e.orderId,
    order_amount: e.orderAmount,
    discount_amount: e.discountAmount,
  };
}
