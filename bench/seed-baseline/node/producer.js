// Adds PromoCodeAppliedEvent jobs to the BullMQ queue `events` exactly as the seed's NestJS
// services do (job name = event type, data = the event, the seed's job options).
//   node producer.js --redis-port P --from K --count N            as fast as it can (addBulk)
//   node producer.js --redis-port P --from K --count N --rate R   R jobs/s on a fixed schedule;
//                                                                 prints `start <epoch ms>` first
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import { args, payload } from './events.js';

const a = args();
const from = Number(a.from ?? 0), count = Number(a.count), rate = a.rate ? Number(a.rate) : 0;
const connection = new IORedis({ host: '127.0.0.1', port: Number(a['redis-port']), maxRetriesPerRequest: null });
const queue = new Queue('events', { connection });
const opts = { attempts: 3, backoff: { type: 'exponential', delay: 2000 }, removeOnComplete: 100, removeOnFail: 1000 };
const job = (i) => ({ name: 'PromoCodeAppliedEvent', data: payload(i), opts });

if (!rate) {
  for (let i = from; i < from + count; i += 1000) {
    const n = Math.min(1000, from + count - i);
    await queue.addBulk(Array.from({ length: n }, (_, k) => job(i + k)));
  }
} else {
  const start = Date.now();
  console.log(`start ${start}`);
  let sent = 0;
  while (sent < count) {
    const due = Math.min(count, Math.floor(((Date.now() - start) * rate) / 1000) + 1);
    if (due > sent) {
      await queue.addBulk(Array.from({ length: due - sent }, (_, k) => job(from + sent + k)));
      sent = due;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}
await queue.close();
await connection.quit();
