// A BullMQ producer written the way the seed's NestJS services write jobs, used by Sluice's
// tests and as an example: job name = event type, data = the event, the seed's job options
//   { attempts: 3, backoff: { type: 'exponential', delay: 2000 }, removeOnComplete: 100, removeOnFail: 1000 }
//
//   node producer.js add --redis-url URL [--queue events] [--prefix bull] --count N [--from K]
//        [--delayed-every D] [--prioritized-every P] [--envelope-every E] [--attempts A] [--backoff-ms B]
//        [--event-id-prefix X]
//     Adds N PromoCodeAppliedEvent jobs (numbers K..K+N-1). Every D-th job is delayed (0.5-2.5 s),
//     every P-th prioritized (priority 1-10), every E-th wrapped as the NestJS adapter writes it:
//     queue.add(event, { event, payload }). With --event-id-prefix, job i's event carries
//     `eventId: X<i>` (the seed's idempotency key). Prints one JSON line: the jobs added and the
//     sums the rows must add up to.
//   node producer.js add ... --type T --data JSON --count N
//     Adds N jobs of type T with that data (e.g. flaky.event {"n":1,"permanent":true}); `__I__`
//     in the data is replaced by each job's number.
//   node producer.js counts --redis-url URL [--queue events]   prints queue.getJobCounts()
//   node producer.js pause|resume --redis-url URL [--queue events]   queue.pause() / resume()
//   node producer.js failed --redis-url URL [--queue events]   prints the failed jobs (id, name,
//     failedReason, attemptsMade)
import { Queue } from 'bullmq';
import IORedis from 'ioredis';

const [command, ...rest] = process.argv.slice(2);
const a = {};
for (let i = 0; i < rest.length; i += 2) a[rest[i].replace(/^--/, '')] = rest[i + 1];
const num = (k, d) => (a[k] === undefined ? d : Number(a[k]));

// The payload of generated PromoCodeAppliedEvent number `i`, as `sluice publish
// PromoCodeAppliedEvent --count N` makes it; amounts are multiples of 0.01 whose sums the
// test compares in cents.
export function promo(i) {
  const p2 = (n) => String(n).padStart(2, '0');
  return {
    promoCodeId: `promo-${i % 50}`,
    promoCode: `SUMMER${i % 50}`,
    userId: `user-${i % 1000}`,
    orderId: `order-bullmq-${i}`,
    orderAmount: (i % 10000) / 100 + 10,
    discountAmount: (i % 500) / 100,
    createdAt: `2024-06-${p2(1 + (i % 28))}T${p2(i % 24)}:${p2(i % 60)}:${p2((i * 7) % 60)}.000Z`,
  };
}

const connection = new IORedis(a['redis-url'] ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null });
const queue = new Queue(a.queue ?? 'events', { connection, prefix: a.prefix ?? 'bull' });
try {
  if (command === 'add') {
    const from = num('from', 0);
    const count = num('count', 1);
    const opts = {
      attempts: num('attempts', 3),
      backoff: { type: 'exponential', delay: num('backoff-ms', 2000) },
      removeOnComplete: 100,
      removeOnFail: 1000,
    };
    const [delayedEvery, prioritizedEvery, envelopeEvery] = [num('delayed-every', 0), num('prioritized-every', 0), num('envelope-every', 0)];
    const summary = { jobs: 0, delayed: 0, prioritized: 0, envelopes: 0, order_cents: 0, discount_cents: 0 };
    for (let start = from; start < from + count; start += 1000) {
      const bulk = [];
      for (let i = start; i < Math.min(start + 1000, from + count); i++) {
        const jobOpts = { ...opts };
        if (delayedEvery && i % delayedEvery === 0) {
          jobOpts.delay = 500 + (i % 2000);
          summary.delayed++;
        }
        if (prioritizedEvery && i % prioritizedEvery === 0) {
          jobOpts.priority = 1 + (i % 10);
          summary.prioritized++;
        }
        let name, data;
        if (a.type) {
          [name, data] = [a.type, JSON.parse((a.data ?? '{}').replaceAll('__I__', String(i)))];
        } else {
          [name, data] = ['PromoCodeAppliedEvent', promo(i)];
          summary.order_cents += Math.round(data.orderAmount * 100);
          summary.discount_cents += Math.round(data.discountAmount * 100);
        }
        if (a['event-id-prefix']) data = { eventId: `${a['event-id-prefix']}${i}`, ...data };
        if (envelopeEvery && i % envelopeEvery === 0) {
          data = { event: name, payload: data };
          summary.envelopes++;
        }
        bulk.push({ name, data, opts: jobOpts });
      }
      await queue.addBulk(bulk);
      summary.jobs += bulk.length;
    }
    console.log(JSON.stringify(summary));
  } else if (command === 'counts') {
    console.log(JSON.stringify(await queue.getJobCounts()));
  } else if (command === 'pause' || command === 'resume') {
    await queue[command]();
    console.log(JSON.stringify({ [command === 'pause' ? 'paused' : 'resumed']: queue.name }));
  } else if (command === 'failed') {
    const jobs = await queue.getFailed(0, -1);
    console.log(JSON.stringify(jobs.map((j) => ({ id: j.id, name: j.name, failedReason: j.failedReason, attemptsMade: j.attemptsMade }))));
  } else {
    console.error('usage: node producer.js add|counts|pause|resume|failed --redis-url URL [...] (see the top of this file)');
    process.exitCode = 2;
  }
} finally {
  await queue.close();
  await connection.quit();
}
