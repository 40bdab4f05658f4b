// The service Sluice replaces, in the shape of a NestJS `@nestjs/bull` consumer
// (`@Processor('events')` with `@Process('PromoCodeAppliedEvent')`): bull's own worker, one
// INSERT per job, writing the rows promo-code-analytics writes into
// analytics.promo_code_usages_analytics. docs/migrating-from-nestjs-bull.md switches from it to
// Sluice; the migration test runs it.
//
//   node consumer.js --redis-url URL --clickhouse-url URL [--queue events] [--prefix bull]
//   SIGTERM: finishes the jobs in hand (queue.close() waits for them) and exits 0.
import Queue from 'bull';
import { clickhouse, prepare, row } from './rows.js';

const a = {};
const rest = process.argv.slice(2);
for (let i = 0; i < rest.length; i += 2) a[rest[i].replace(/^--/, '')] = rest[i + 1];
const ch = a['clickhouse-url'] ?? 'http://127.0.0.1:8123';

await prepare(ch);
const queue = new Queue(a.queue ?? 'events', a['redis-url'] ?? 'redis://127.0.0.1:6379', { prefix: a.prefix ?? 'bull' });
queue.process('PromoCodeAppliedEvent', 20, async (job) => {
  // The NestJS adapter's { event, payload } or the event itself.
  const event = job.data.payload && job.data.event ? job.data.payload : job.data;
  await clickhouse(ch, 'INSERT INTO analytics.promo_code_usages_analytics FORMAT JSONEachRow', JSON.stringify(row(event)));
});
console.log('consuming');
const stop = async () => {
  await queue.close();
  console.log('stopped');
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
