// A classic Bull producer (the `bull` package 3/4, what `@nestjs/bull` uses) written the way the
// seed's NestJS services write jobs, used by Sluice's tests and as an example: one queue `events`,
// job name = event class, data = the event, the seed's job options
//   { attempts: 3, backoff: { type: 'exponential', delay: 2000 }, removeOnComplete: 100, removeOnFail: 1000 }
//
//   node producer.js add --redis-url URL [--queue events] [--prefix bull] --count N [--from K]
//        [--delayed-every D] [--prioritized-every P] [--envelope-every E] [--attempts A]
//        [--backoff-ms B] [--job-id-prefix J] [--event-id-prefix X] [--await-global]
//     Adds N PromoCodeAppliedEvent jobs (numbers K..K+N-1). Every D-th job is delayed (0.5-2.5 s),
//     every P-th prioritized (priority 1-10), every E-th wrapped as the NestJS adapter writes it:
//     queue.add(event, { event, payload }). With --job-id-prefix, job i gets the id J<i> (bull
//     ignores an add whose id exists), with --event-id-prefix its event carries `eventId: X<i>`.
//     With --await-global, waits until bull's global events
//     (`global:completed` / `global:failed`, what NestJS's @OnGlobalQueueCompleted hears) were
//     heard for every job added (at most 120 s). Prints one JSON line: the jobs added, the sums the
//     rows must add up to, and the global events heard.
//   node producer.js add ... --type T --data JSON --count N
//     Adds N jobs of type T with that data (e.g. flaky.event {"n":1,"permanent":true}); `__I__`
//     in the data is replaced by each job's number.
//   node producer.js repeat --redis-url URL --every-ms M     adds a repeatable job
//   node producer.js counts --redis-url URL       prints queue.getJobCounts() and the size of
//                                                 bull's `priority` set
//   node producer.js failed --redis-url URL       prints the failed jobs (id, name, failedReason,
//                                                 attemptsMade)
//   node producer.js jobs --redis-url URL --state completed|failed   the jobs in that state as
//                                                 Bull Board shows them (id, attemptsMade, finishedOn)
//   node producer.js latency --redis-url URL --clickhouse-url URL [--count 30] [--idle-ms 700] [--delay-ms D]
//     Adds one job at a time to an idle queue and times `queue.add` to its row in ClickHouse
//     (analytics.promo_code_usages_analytics); prints the p50, p99 and max in milliseconds. With
//     --delay-ms, each job is delayed by D ms and the figures are the time past its delay.
import Queue from 'bull';

const [command, ...rest] = process.argv.slice(2);
const a = {};
for (let i = 0; i < rest.length; i++) {
  const k = rest[i].replace(/^--/, '');
  if (rest[i + 1] === undefined || rest[i + 1].startsWith('--')) a[k] = true;
  else a[k] = rest[++i];
}
const num = (k, d) => (a[k] === undefined ? d : Number(a[k]));

// The payload of generated PromoCodeAppliedEvent number `i`, as `sluice publish
// PromoCodeAppliedEvent --count N` makes it; amounts are multiples of 0.01 whose sums the
// test compares in cents.
export function promo(i, source = 'bull') {
  const p2 = (n) => String(n).padStart(2, '0');
  return {
    promoCodeId: `promo-${i % 50}`,
    promoCode: `SUMMER${i % 50}`,
    userId: `user-${i % 1000}`,
    orderId: `order-${source}-${i}`,
    orderAmount: (i % 10000) / 100 + 10,
    discountAmount: (i % 500) / 100,
    createdAt: `2024-06-${p2(1 + (i % 28))}T${p2(i % 24)}:${p2(i % 60)}:${p2((i * 7) % 60)}.000Z`,
  };
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const queue = new Queue(a.queue ?? 'events', a['redis-url'] ?? 'redis://127.0.0.1:6379', { prefix: a.prefix ?? 'bull' });
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
    const heard = { completed: 0, failed: 0 };
    if (a['await-global']) {
      // Subscribed before the first add, so that no event is missed.
      queue.on('global:completed', () => heard.completed++);
      queue.on('global:failed', () => heard.failed++);
      await queue._registerEvent('global:completed');
      await queue._registerEvent('global:failed');
    }
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
        if (a['job-id-prefix']) jobOpts.jobId = `${a['job-id-prefix']}${i}`;
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
    if (a['await-global']) {
      const until = Date.now() + 120_000;
      while (heard.completed + heard.failed < summary.jobs && Date.now() < until) await sleep(50);
      summary.global = heard;
    }
    console.log(JSON.stringify(summary));
  } else if (command === 'repeat') {
    const job = await queue.add('PromoCodeAppliedEvent', promo(0), { repeat: { every: num('every-ms', 1000) } });
    console.log(JSON.stringify({ id: job.id }));
  } else if (command === 'counts') {
    const counts = await queue.getJobCounts();
    counts.priority = await queue.client.zcard(queue.toKey('priority'));
    console.log(JSON.stringify(counts));
  } else if (command === 'failed') {
    const jobs = await queue.getFailed(0, -1);
    console.log(JSON.stringify(jobs.map((j) => ({ id: j.id, name: j.name, failedReason: j.failedReason, attemptsMade: j.attemptsMade }))));
  } else if (command === 'jobs') {
    const jobs = await queue.getJobs([a.state ?? 'completed'], 0, -1);
    console.log(JSON.stringify(jobs.map((j) => ({ id: j.id, name: j.name, attemptsMade: j.attemptsMade, finishedOn: j.finishedOn }))));
  } else if (command === 'latency') {
    const ch = a['clickhouse-url'] ?? 'http://127.0.0.1:8123';
    const rows = async (orderId) => {
      const q = `SELECT count() FROM analytics.promo_code_usages_analytics WHERE order_id = '${orderId}'`;
      const r = await fetch(`${ch}/?query=${encodeURIComponent(q)}`);
      return Number((await r.text()).trim());
    };
    const took = [];
    for (let n = 0; n < num('count', 30); n++) {
      // Idle first: the host has found the queue empty and waits.
      await sleep(num('idle-ms', 700));
      const data = promo(n, `latency-${Date.now()}`);
      const t0 = performance.now();
      const delay = num('delay-ms', 0);
      await queue.add('PromoCodeAppliedEvent', data, delay ? { delay } : {});
      while ((await rows(data.orderId)) < 1) {
        if (performance.now() - t0 > 30_000) throw new Error(`no row for ${data.orderId} after 30 s`);
        await sleep(5);
      }
      took.push(performance.now() - t0 - delay);
    }
    took.sort((x, y) => x - y);
    const ms = (x) => Math.round(x);
    console.log(JSON.stringify({ jobs: took.length, p50_ms: ms(percentile(took, 50)), p99_ms: ms(percentile(took, 99)), max_ms: ms(took.at(-1)) }));
  } else {
    console.error('usage: node producer.js add|repeat|counts|failed|jobs|latency --redis-url URL [...] (see the top of this file)');
    process.exitCode = 2;
  }
} finally {
  await queue.close();
}
