// The service Sluice replaces, in the shape of the seed's NestJS BullMQ event bus
// (`EventBusService.subscribe('PromoCodeAppliedEvent', handler)` over a BullMQ `Worker` per
// queue): jobs `{ event, payload }`, one INSERT per job, writing the rows promo-code-analytics
// writes into analytics.promo_code_usages_analytics. docs/migrating-from-nestjs-bullmq.md
// switches from it to Sluice; the migration test runs it.
//
//   node consumer.js --redis-url URL --clickhouse-url URL [--queue events] [--prefix bull]
//   SIGTERM: finishes the jobs in hand (worker.close() waits for them) and exits 0.
import { Worker } from 'bullmq';
import IORedis from 'ioredis';
import { clickhouse, prepare, row } from '../bull/rows.js';

const a = {};
const rest = process.argv.slice(2);
for (let i = 0; i < rest.length; i += 2) a[rest[i].replace(/^--/, '')] = rest[i + 1];
const ch = a['clickhouse-url'] ?? 'http://127.0.0.1:8123';

await prepare(ch);
const connection = new IORedis(a['redis-url'] ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null });
const handlers = {
  PromoCodeAppliedEvent: async (event) =>
    clickhouse(ch, 'INSERT INTO analytics.promo_code_usages_analytics FORMAT JSONEachRow', JSON.stringify(row(event))),
};
const worker = new Worker(
  a.queue ?? 'events',
  async (job) => {
    const event = job.data.payload && job.data.event ? job.data.payload : job.data;
    const handle = handlers[job.name];
    if (!handle) throw new Error(`no handler for ${job.name}`);
    await handle(event);
  },
  { connection, prefix: a.prefix ?? 'bull', concurrency: 20 },
);
await worker.waitUntilReady();
console.log('consuming');
const stop = async () => {
  await worker.close();
  await connection.quit();
  console.log('stopped');
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
