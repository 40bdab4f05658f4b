// The benchmark's events: the payload of generated PromoCodeAppliedEvent number `i`, exactly as
// `sluice publish PromoCodeAppliedEvent --count N` makes it (runtime/src/sample.rs), and the
// row the seed's consumer writes for it (the columns of promo_code_usages_analytics).

export function payload(i) {
  const p2 = (n) => String(n).padStart(2, '0');
  return {
    promoCodeId: `promo-${i % 50}`,
    promoCode: `SUMMER${i % 50}`,
    userId: `user-${i % 1000}`,
    orderId: `order-PromoCodeAppliedEvent-${i}`,
    orderAmount: (i % 10000) / 100 + 10,
    discountAmount: (i % 500) / 100,
    createdAt: `2024-06-${p2(1 + (i % 28))}T${p2(i % 24)}:${p2(i % 60)}:${p2((i * 7) % 60)}.000Z`,
  };
}

export function row(e) {
  const at = new Date(e.createdAt).toISOString();
  return {
    event_date: at.slice(0, 10),
    created_at: `${at.slice(0, 10)} ${at.slice(11, 19)}`,
    promo_code: e.promoCode,
    promo_code_id: e.promoCodeId,
    user_id: e.userId,
    order_id: e.orderId,
    order_amount: e.orderAmount,
    discount_amount: e.discountAmount,
  };
}

export function args() {
  const out = {};
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 2) out[a[i].replace(/^--/, '')] = a[i + 1];
  return out;
}
