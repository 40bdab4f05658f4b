// The seed's BullMQ consumer: a worker on the queue `events` that turns each
// PromoCodeAppliedEvent job into a row of promo_code_usages_analytics.
//   --batch 1     one INSERT per job, concurrency 1: what the seed's consumer does
//   --batch 1000  jobs wait (concurrency 1000) until 1,000 rows (or 100 ms) go in one INSERT:
//                 the batched variant; a job completes only after its row is committed
import { createClient } from '@clickhouse/client';
import { Worker } from 'bullmq';
import IORedis from 'ioredis';
import { args, row } from './events.js';

const a = args();
const batch = Number(a.batch ?? 1);
const table = 'analytics.promo_code_usages_analytics';
const clickhouse = createClient({ url: a['clickhouse-url'] });

let pending = [];
let timer = null;
async function flush() {
  clearTimeout(timer);
  timer = null;
  const rows = pending;
  pending = [];
  try {
    await clickhouse.insert({ table, values: rows.map((r) => r.row), format: 'JSONEachRow' });
    rows.forEach((r) => r.done());
  } catch (e) {
    rows.forEach((r) => r.fail(e));
  }
}

const processor =
  batch === 1
    ? async (job) => clickhouse.insert({ table, values: [row(job.data)], format: 'JSONEachRow' })
    : (job) =>
        new Promise((done, fail) => {
          pending.push({ row: row(job.data), done, fail });
          if (pending.length >= batch) flush();
          else if (!timer) timer = setTimeout(flush, 100);
        });

const worker = new Worker('events', processor, {
  connection: new IORedis({ host: '127.0.0.1', port: Number(a['redis-port']), maxRetriesPerRequest: null }),
  concurrency: batch,
});
worker.on('failed', (job, err) => console.error(`job ${job?.id} failed: ${err.message}`));
process.on('SIGTERM', async () => {
  await worker.close();
  await clickhouse.close();
  process.exit(0);
});
