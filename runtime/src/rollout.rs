//! Canary rollouts: a new version of a plugin runs beside the one in service on a share of the
//! events, and is promoted or rolled back by what it does to them.
//!
//! A plugin file whose settings have a `[rollout]` section, bound to the name of a plugin that
//! already runs from another file, is a **candidate**: the running version (the **stable**
//! one) keeps its pipelines, and each of its batches is split by a hash of the event id —
//! the candidate's share goes to the candidate, the rest to the stable version (the same event
//! always goes to the same side, on every host). An event the candidate fails is handed, in
//! the same batch, to the stable version: it is neither lost, nor retried on the candidate,
//! nor dead-lettered by it; and since a failed event's rows are dropped, its rows land once,
//! from the stable version.
//!
//! Both sides' events and failures are counted, per host, and added every second to the
//! rollout's record in Redis (`sluice:rollout:<plugin>`), which every host reads: the verdict
//! is the same everywhere and survives restarts. A candidate that fails more than the stable
//! version by `max_failure_increase` (once it has had `min_events`) is rolled back: its share
//! returns to the stable version at the next batch, which never stopped. One that has had
//! `promote_after_events` events and run for `promote_after` without that is promoted: it
//! replaces the stable version as a hot reload does (the old version finishes what it holds).
//! A failure the stable version shares (it fails the same event) is the event's fault, and is
//! not held against the candidate.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;

use crate::contract::wit;
use crate::plugin::config::RolloutSettings;
use crate::plugin::{BatchOutcome, LoadedPlugin, Sandbox};
use crate::redis_conn::RedisConn;

/// How often each host adds its counts to the rollout's record and reads the verdict.
const TICK: Duration = Duration::from_secs(1);

/// Which side an event id goes to: the same on every host and every delivery (FNV-1a, not
/// the standard library's hasher, whose output may change between Rust releases).
pub fn bucket(event_id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in event_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // The top 53 bits as a fraction in [0, 1).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A version's identity in a rollout.
#[derive(Debug, Clone, Serialize)]
pub struct VersionRef {
    pub file: String,
    pub version: String,
    pub hash: String,
}

impl VersionRef {
    pub fn of(p: &LoadedPlugin) -> VersionRef {
        VersionRef { file: p.path.display().to_string(), version: p.manifest.version.clone(), hash: p.hash.clone() }
    }
}

/// Events and failures of each side.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Counts {
    pub stable_events: u64,
    pub stable_failed: u64,
    pub candidate_events: u64,
    pub candidate_failed: u64,
    /// Candidate failures handed to the stable version (those it failed too included).
    pub sent_back: u64,
}

const FIELDS: [&str; 5] = ["stable_events", "stable_failed", "candidate_events", "candidate_failed", "sent_back"];

impl Counts {
    fn values(&self) -> [u64; 5] {
        [self.stable_events, self.stable_failed, self.candidate_events, self.candidate_failed, self.sent_back]
    }
    fn from_values(v: [u64; 5]) -> Counts {
        Counts {
            stable_events: v[0],
            stable_failed: v[1],
            candidate_events: v[2],
            candidate_failed: v[3],
            sent_back: v[4],
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Promoted,
    RolledBack,
    /// Its file was removed or replaced before a verdict.
    Withdrawn,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Promoted => "promoted",
            State::RolledBack => "rolled_back",
            State::Withdrawn => "withdrawn",
        }
    }
    fn parse(s: &str) -> Option<State> {
        [State::Running, State::Promoted, State::RolledBack, State::Withdrawn].into_iter().find(|x| x.name() == s)
    }
}

/// The verdict on a candidate, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Promote(String),
    RollBack(String),
}

/// The rule: worse by more than the allowed increase once judged → rolled back; enough events
/// and time without that → promoted. "Worse" is meant with 95% confidence: the lower bound of
/// the candidate's failure rate (Wilson score interval) is above the stable rate plus the
/// increase — a candidate as good as the stable version is not rolled back by a few unlucky
/// events, while one failing everything is after `min_events` (20 of 20: lower bound 84%).
pub fn judge(c: &Counts, s: &RolloutSettings, running_for: Duration) -> Option<Verdict> {
    let rate = |failed: u64, events: u64| if events == 0 { 0.0 } else { failed as f64 / events as f64 };
    let (cr, sr) = (rate(c.candidate_failed, c.candidate_events), rate(c.stable_failed, c.stable_events));
    let pct = |r: f64| format!("{:.1}%", r * 100.0);
    if c.candidate_events >= s.min_events
        && wilson_lower(c.candidate_failed, c.candidate_events) > sr + s.max_failure_increase
    {
        return Some(Verdict::RollBack(format!(
            "the candidate failed {} of its {} events ({}), the running version {} of {} ({}): more than {} points worse (at 95% confidence)",
            c.candidate_failed,
            c.candidate_events,
            pct(cr),
            c.stable_failed,
            c.stable_events,
            pct(sr),
            s.max_failure_increase * 100.0
        )));
    }
    if c.candidate_events >= s.promote_after_events && running_for >= s.promote_after {
        return Some(Verdict::Promote(format!(
            "the candidate handled {} events over {}s failing {} ({}), the running version {} of {} ({})",
            c.candidate_events,
            running_for.as_secs(),
            c.candidate_failed,
            pct(cr),
            c.stable_failed,
            c.stable_events,
            pct(sr)
        )));
    }
    None
}

/// The lower bound of the 95% Wilson score interval of a rate of `k` in `n`.
fn wilson_lower(k: u64, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (n, p, z) = (n as f64, k as f64 / n as f64, 1.96_f64);
    let z2 = z * z;
    (p + z2 / (2.0 * n) - z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt()) / (1.0 + z2 / n)
}

/// A candidate running beside the stable version.
pub struct Rollout {
    pub plugin: String,
    pub stable: VersionRef,
    pub candidate: Arc<LoadedPlugin>,
    /// The candidate's identity in the record: its file's hash and its settings.
    id: String,
    pub settings: RolloutSettings,
    /// The event types the candidate consumes: other events all go to the stable version.
    types: HashSet<String>,
    /// Off once a verdict is in: every event goes to the stable version again.
    active: AtomicBool,
    /// Idle instances of the candidate.
    pool: Mutex<Vec<Sandbox>>,
    /// Counted here since the last tick.
    pending: [AtomicU64; 5],
    /// What the admin API shows: the record in Redis as last read.
    view: Mutex<View>,
}

#[derive(Debug, Clone)]
struct View {
    state: State,
    counts: Counts,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    decided_at: Option<chrono::DateTime<chrono::Utc>>,
    reason: Option<String>,
}

impl Rollout {
    pub fn new(stable: &LoadedPlugin, candidate: Arc<LoadedPlugin>, settings: RolloutSettings) -> Rollout {
        Rollout {
            plugin: stable.name().to_string(),
            stable: VersionRef::of(stable),
            types: candidate.consumed_event_types().into_iter().collect(),
            // Other rules make another rollout: a rolled-back candidate may be tried again
            // with, say, a smaller share.
            id: {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(format!("{}{settings:?}", candidate.identity()));
                hex::encode(digest)[..24].to_string()
            },
            candidate,
            settings,
            active: AtomicBool::new(true),
            pool: Mutex::new(Vec::new()),
            pending: Default::default(),
            view: Mutex::new(View {
                state: State::Running,
                counts: Counts::default(),
                started_at: None,
                decided_at: None,
                reason: None,
            }),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether the candidate takes part in `event_type`'s batches.
    pub fn splits(&self, event_type: &str) -> bool {
        self.is_active() && self.types.contains(event_type)
    }

    fn add(&self, c: Counts) {
        for (p, v) in self.pending.iter().zip(c.values()) {
            p.fetch_add(v, Ordering::Relaxed);
        }
    }

    fn take_pending(&self) -> Counts {
        Counts::from_values(std::array::from_fn(|i| self.pending[i].swap(0, Ordering::Relaxed)))
    }

    /// Runs a batch split between the two versions (see the module comment): the stable
    /// version's sandbox is `stable`. Returns the merged outcome, numbered like `events`, and
    /// which of them (by index) the candidate's rows came from.
    pub async fn run(&self, stable: &mut Sandbox, events: &[wit::Event], entries: &[u64]) -> (BatchOutcome, Vec<u32>) {
        // A redelivery (a retry, a recovery after a crash) goes to the stable version: whatever
        // went wrong the first time is not the candidate's to repeat.
        let to_candidate: Vec<bool> =
            events.iter().map(|e| e.attempt <= 1 && bucket(&e.id) < self.settings.share).collect();
        let pick = |want: bool, among: &[usize]| -> (Vec<wit::Event>, Vec<u64>) {
            let evs = among.iter().filter(|&&i| to_candidate[i] == want).map(|&i| events[i].clone()).collect();
            let ent = match entries.is_empty() {
                true => Vec::new(),
                false => among.iter().filter(|&&i| to_candidate[i] == want).map(|&i| entries[i]).collect(),
            };
            (evs, ent)
        };
        let all: Vec<usize> = (0..events.len()).collect();
        let cand_idx: Vec<usize> = all.iter().copied().filter(|&i| to_candidate[i]).collect();
        let mut merged =
            BatchOutcome { tables: vec![Default::default(); stable.plugin.tables.len()], ..Default::default() };
        // The candidate first: the events it fails join the stable version's call.
        let mut sent_back: Vec<usize> = Vec::new();
        let mut by_candidate: Vec<u32> = Vec::new();
        if !cand_idx.is_empty() {
            let (evs, ent) = pick(true, &cand_idx);
            let mut sb = self.pool.lock().unwrap().pop().unwrap_or_else(|| Sandbox::new(self.candidate.clone()));
            let out = sb.run(&evs, &ent).await;
            self.pool.lock().unwrap().push(sb);
            merged.calls += out.calls;
            let failed: HashSet<u32> = out.failures.iter().map(|f| f.event).collect();
            sent_back = out.failures.iter().map(|f| cand_idx[f.event as usize]).collect();
            for (dst, src) in merged.tables.iter_mut().zip(out.tables) {
                append_renumbered(dst, src, |e| cand_idx[e as usize] as u32);
            }
            by_candidate = (0..cand_idx.len() as u32)
                .filter(|j| !failed.contains(j))
                .map(|j| cand_idx[j as usize] as u32)
                .collect();
        }
        let mut stable_idx: Vec<usize> = all.iter().copied().filter(|&i| !to_candidate[i]).collect();
        stable_idx.extend(&sent_back);
        stable_idx.sort_unstable();
        let mut stable_failed: HashSet<usize> = HashSet::new();
        if !stable_idx.is_empty() {
            let evs: Vec<wit::Event> = stable_idx.iter().map(|&i| events[i].clone()).collect();
            let ent: Vec<u64> =
                if entries.is_empty() { Vec::new() } else { stable_idx.iter().map(|&i| entries[i]).collect() };
            let out = stable.run(&evs, &ent).await;
            merged.calls += out.calls;
            for (dst, src) in merged.tables.iter_mut().zip(out.tables) {
                append_renumbered(dst, src, |e| stable_idx[e as usize] as u32);
            }
            for mut f in out.failures {
                let i = stable_idx[f.event as usize];
                stable_failed.insert(i);
                f.event = i as u32;
                merged.failures.push(f);
            }
        }
        merged.failures.sort_by_key(|f| f.event);
        // A failure both versions share is the event's, not the candidate's.
        let shared = sent_back.iter().filter(|i| stable_failed.contains(i)).count() as u64;
        let own_stable = stable_idx.len() - sent_back.len();
        let own_stable_failed = (stable_failed.len() as u64).saturating_sub(shared);
        let counts = Counts {
            stable_events: own_stable as u64,
            stable_failed: own_stable_failed,
            candidate_events: (cand_idx.len() as u64).saturating_sub(shared),
            candidate_failed: (sent_back.len() as u64).saturating_sub(shared),
            sent_back: sent_back.len() as u64,
        };
        self.add(counts);
        let labels = |role: &'static str, outcome: &'static str| {
            [("plugin", self.plugin.clone()), ("role", role.to_string()), ("outcome", outcome.to_string())]
        };
        metrics::counter!("sluice_rollout_events_total", &labels("stable", "ok"))
            .increment(counts.stable_events.saturating_sub(counts.stable_failed));
        metrics::counter!("sluice_rollout_events_total", &labels("stable", "failed")).increment(counts.stable_failed);
        metrics::counter!("sluice_rollout_events_total", &labels("candidate", "ok"))
            .increment(counts.candidate_events.saturating_sub(counts.candidate_failed));
        metrics::counter!("sluice_rollout_events_total", &labels("candidate", "failed"))
            .increment(counts.candidate_failed);
        if !sent_back.is_empty() {
            tracing::debug!(plugin = %self.plugin, candidate = self.candidate.short_hash(), events = sent_back.len(), "events the candidate failed handed to the running version");
        }
        (merged, by_candidate)
    }

    /// What the admin API shows.
    pub fn to_json(&self) -> serde_json::Value {
        let v = self.view.lock().unwrap().clone();
        let ts =
            |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        serde_json::json!({
            "plugin": self.plugin,
            "mode": "canary",
            "stable": self.stable,
            "candidate": VersionRef::of(&self.candidate),
            "share": self.settings.share,
            "state": v.state,
            "reason": v.reason,
            "started_at": ts(v.started_at),
            "decided_at": ts(v.decided_at),
            "counts": {
                "stable": {"events": v.counts.stable_events, "failed": v.counts.stable_failed},
                "candidate": {"events": v.counts.candidate_events, "failed": v.counts.candidate_failed, "sent_back": v.counts.sent_back},
            },
            "promote_after_events": self.settings.promote_after_events,
            "promote_after_s": self.settings.promote_after.as_secs(),
            "min_events": self.settings.min_events,
            "max_failure_increase": self.settings.max_failure_increase,
        })
    }

    fn set_view(&self, r: &Record) {
        let mut v = self.view.lock().unwrap();
        v.state = r.state;
        v.counts = r.counts;
        v.started_at = r.started_at;
        v.decided_at = r.decided_at;
        v.reason = r.reason.clone();
        if r.state != State::Running {
            self.active.store(false, Ordering::Relaxed);
        }
    }

    /// The rollout ended here without a verdict (its file went away).
    pub fn withdraw(&self, why: &str) {
        self.active.store(false, Ordering::Relaxed);
        let mut v = self.view.lock().unwrap();
        if v.state == State::Running {
            v.state = State::Withdrawn;
            v.reason = Some(why.to_string());
            v.decided_at = Some(chrono::Utc::now());
        }
    }
}

/// `rows` of a call on a subset of the batch, appended to `dst` with each event's index in the
/// batch.
fn append_renumbered(dst: &mut crate::plugin::TableRows, src: crate::plugin::TableRows, index: impl Fn(u32) -> u32) {
    let base = dst.data.len();
    dst.data.extend_from_slice(&src.data);
    dst.rows += src.rows;
    dst.events.extend(src.events.into_iter().map(|(e, end, n)| (index(e), base + end, n)));
}

/// A plugin's current rollout, shared by all its pipelines: set when a candidate starts,
/// cleared when it ends, read once per batch.
#[derive(Clone, Default)]
pub struct RolloutSlot(Arc<RwLock<Option<Arc<Rollout>>>>);

impl RolloutSlot {
    pub fn current(&self) -> Option<Arc<Rollout>> {
        self.0.read().unwrap().as_ref().filter(|r| r.is_active()).cloned()
    }
    pub fn set(&self, r: Option<Arc<Rollout>>) {
        *self.0.write().unwrap() = r;
    }
}

/// The rollout's record in Redis.
#[derive(Debug, Clone)]
pub struct Record {
    pub candidate: String,
    pub state: State,
    pub counts: Counts,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub decided_at: Option<chrono::DateTime<chrono::Utc>>,
    pub reason: Option<String>,
}

fn key(plugin: &str) -> String {
    crate::keys::rollout(plugin)
}

fn parse_record(map: &std::collections::HashMap<String, String>) -> Option<Record> {
    let time = |k: &str| {
        map.get(k).and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&chrono::Utc))
    };
    let n = |k: &str| map.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(Record {
        candidate: map.get("candidate")?.clone(),
        state: State::parse(map.get("state")?)?,
        counts: Counts::from_values(FIELDS.map(n)),
        started_at: time("started_at"),
        decided_at: time("decided_at"),
        reason: map.get("reason").cloned(),
    })
}

/// What the record says when a candidate starts.
pub enum Begun {
    /// Its rollout, new or resumed (same candidate: counts and start time go on).
    Record(Record),
    /// Another candidate's rollout runs (its id), updated within [`STALE_AFTER`]: one at a time.
    Busy(String),
}

/// A running record no host has updated for this long is abandoned (every host running it is
/// gone): a new candidate may take its place.
const STALE_AFTER: Duration = Duration::from_secs(30);

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Starts (or, for the same candidate, resumes) the rollout's record. A verdict reached on
/// this candidate before (kept in the same hash as `verdict:<id>`, so that another candidate's
/// rollout does not erase it) is answered as its record; another candidate's running rollout
/// is [`Begun::Busy`].
pub async fn begin(conn: &mut RedisConn, rollout: &Rollout) -> anyhow::Result<Begun> {
    const BEGIN: &str = r"
        local verdict = redis.call('HGET', KEYS[1], 'verdict:' .. ARGV[1])
        if verdict then
            return {'verdict', verdict, redis.call('HGET', KEYS[1], 'verdict:' .. ARGV[1] .. ':reason') or '',
                redis.call('HGET', KEYS[1], 'verdict:' .. ARGV[1] .. ':at') or ''}
        end
        local current = redis.call('HGET', KEYS[1], 'candidate')
        local state = redis.call('HGET', KEYS[1], 'state')
        local updated = tonumber(redis.call('HGET', KEYS[1], 'updated_ms') or '0')
        if current and current ~= ARGV[1] and state == 'running' and updated > tonumber(ARGV[7]) then
            return {'busy', current}
        end
        if current ~= ARGV[1] or state ~= 'running' then
            redis.call('HDEL', KEYS[1], 'reason', 'decided_at')
            redis.call('HSET', KEYS[1], 'candidate', ARGV[1], 'stable', ARGV[2], 'state', 'running',
                'started_at', ARGV[3], 'candidate_version', ARGV[4], 'stable_version', ARGV[5], 'updated_ms', ARGV[6],
                'stable_events', 0, 'stable_failed', 0, 'candidate_events', 0, 'candidate_failed', 0, 'sent_back', 0)
        end
        local out = redis.call('HGETALL', KEYS[1])
        table.insert(out, 1, 'record')
        return out";
    let now_ms = chrono::Utc::now().timestamp_millis();
    let reply: Vec<String> = redis::Script::new(BEGIN)
        .key(key(&rollout.plugin))
        .arg(&rollout.id)
        .arg(&rollout.stable.hash)
        .arg(now_text())
        .arg(&rollout.candidate.manifest.version)
        .arg(&rollout.stable.version)
        .arg(now_ms)
        .arg(now_ms - STALE_AFTER.as_millis() as i64)
        .invoke_async(conn)
        .await?;
    let record = match reply.first().map(String::as_str) {
        Some("busy") => return Ok(Begun::Busy(reply.get(1).cloned().unwrap_or_default())),
        Some("verdict") => {
            let state = reply.get(1).and_then(|s| State::parse(s)).unwrap_or(State::RolledBack);
            let time = |s: Option<&String>| {
                s.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&chrono::Utc))
            };
            Record {
                candidate: rollout.id.clone(),
                state,
                counts: Counts::default(),
                started_at: None,
                decided_at: time(reply.get(3)),
                reason: reply.get(2).cloned().filter(|r| !r.is_empty()),
            }
        }
        _ => {
            let map: std::collections::HashMap<String, String> =
                reply[1..].chunks(2).filter(|kv| kv.len() == 2).map(|kv| (kv[0].clone(), kv[1].clone())).collect();
            parse_record(&map).ok_or_else(|| anyhow::anyhow!("{} holds no rollout record", key(&rollout.plugin)))?
        }
    };
    rollout.set_view(&record);
    Ok(Begun::Record(record))
}

/// Adds this host's counts to the record — only if it is still this candidate's — and reads it
/// back; None when the record is gone (deleted by hand).
async fn flush(conn: &mut RedisConn, rollout: &Rollout, c: Counts) -> anyhow::Result<Option<Record>> {
    const FLUSH: &str = r"
        if redis.call('HGET', KEYS[1], 'candidate') == ARGV[1] then
            for i = 3, #ARGV, 2 do
                redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
            end
            redis.call('HSET', KEYS[1], 'updated_ms', ARGV[2])
        end
        return redis.call('HGETALL', KEYS[1])";
    let script = redis::Script::new(FLUSH);
    let mut inv = script.prepare_invoke();
    inv.key(key(&rollout.plugin)).arg(&rollout.id).arg(chrono::Utc::now().timestamp_millis());
    for (f, v) in FIELDS.iter().zip(c.values()) {
        if v > 0 {
            inv.arg(*f).arg(v);
        }
    }
    let map: std::collections::HashMap<String, String> = inv.invoke_async(conn).await?;
    Ok(parse_record(&map))
}

/// Sets the verdict, unless another host set one first (or the record is another candidate's).
async fn decide(conn: &mut RedisConn, rollout: &Rollout, state: State, reason: &str) -> anyhow::Result<bool> {
    const DECIDE: &str = r"
        if redis.call('HGET', KEYS[1], 'candidate') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'running' then
            redis.call('HSET', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3], 'decided_at', ARGV[4])
            if ARGV[2] ~= 'withdrawn' then
                redis.call('HSET', KEYS[1], 'verdict:' .. ARGV[1], ARGV[2], 'verdict:' .. ARGV[1] .. ':reason', ARGV[3],
                    'verdict:' .. ARGV[1] .. ':at', ARGV[4])
            end
            return 1
        end
        return 0";
    let now = now_text();
    let set: i64 = redis::Script::new(DECIDE)
        .key(key(&rollout.plugin))
        .arg(&rollout.id)
        .arg(state.name())
        .arg(reason)
        .arg(now)
        .invoke_async(conn)
        .await?;
    Ok(set == 1)
}

/// Marks the record withdrawn (the candidate's file went away before a verdict).
pub async fn withdraw(conn: &mut RedisConn, rollout: &Rollout, why: &str) {
    rollout.withdraw(why);
    if let Err(e) = decide(conn, rollout, State::Withdrawn, why).await {
        tracing::warn!(plugin = %rollout.plugin, error = format!("{e:#}"), "cannot record the rollout as withdrawn");
    }
}

/// A verdict reached: the deployer promotes the candidate or drops it.
pub struct Decided {
    pub rollout: Arc<Rollout>,
    pub state: State,
    pub reason: String,
}

/// Each second: this host's counts into the record, the verdict out of it (set by this host
/// when the rule says so, or by another). Ends with the verdict, sent to the deployer.
pub async fn control(rollout: Arc<Rollout>, mut conn: RedisConn, decided: tokio::sync::mpsc::UnboundedSender<Decided>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let counts = rollout.take_pending();
        let record = match flush(&mut conn, &rollout, counts).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                // The record was deleted (by hand): it starts again, with this tick's counts.
                rollout.add(counts);
                tracing::warn!(plugin = %rollout.plugin, "the rollout's record is gone from Redis; starting it again");
                match begin(&mut conn, &rollout).await {
                    Ok(Begun::Record(_)) => {}
                    Ok(Begun::Busy(_)) => {}
                    Err(e) => {
                        tracing::warn!(plugin = %rollout.plugin, error = format!("{e:#}"), "cannot start the rollout's record again")
                    }
                }
                continue;
            }
            Err(e) => {
                // Kept for the next tick: a count is never lost to a Redis outage.
                rollout.add(counts);
                tracing::warn!(plugin = %rollout.plugin, error = format!("{e:#}"), "cannot update the rollout's record; trying again");
                continue;
            }
        };
        if record.candidate != rollout.id {
            // Another candidate's rollout took the record (another host's, this one's having
            // gone quiet): this one ends here too.
            let why = "another candidate's rollout replaced this one";
            rollout.withdraw(why);
            let _ = decided.send(Decided { rollout, state: State::Withdrawn, reason: why.to_string() });
            return;
        }
        rollout.set_view(&record);
        let (state, reason) = match record.state {
            State::Running => {
                let running_for = record
                    .started_at
                    .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
                    .unwrap_or_default();
                let Some(verdict) = judge(&record.counts, &rollout.settings, running_for) else { continue };
                let (state, reason) = match verdict {
                    Verdict::Promote(r) => (State::Promoted, r),
                    Verdict::RollBack(r) => (State::RolledBack, r),
                };
                match decide(&mut conn, &rollout, state, &reason).await {
                    Ok(true) => {}
                    // Another host decided first: its verdict is read at the next tick.
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(plugin = %rollout.plugin, error = format!("{e:#}"), "cannot record the rollout's verdict; trying again");
                        continue;
                    }
                }
                (state, reason)
            }
            s => (s, record.reason.clone().unwrap_or_default()),
        };
        // The candidate's share goes back to the stable version from the next batch on.
        rollout.active.store(false, Ordering::Relaxed);
        if let Ok(Some(r)) = flush(&mut conn, &rollout, rollout.take_pending()).await {
            rollout.set_view(&r);
        }
        let _ = decided.send(Decided { rollout, state, reason });
        return;
    }
}

impl crate::status::ShownRollout for Rollout {
    fn plugin(&self) -> &str {
        &self.plugin
    }
    fn to_json(&self) -> serde_json::Value {
        Rollout::to_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::config::RolloutConfig;

    fn rules() -> RolloutSettings {
        RolloutConfig { min_events: Some(10), promote_after_events: Some(100), ..Default::default() }
            .settings()
            .unwrap()
    }

    #[test]
    fn the_bucket_is_stable_and_spread() {
        assert_eq!(bucket("order-1"), bucket("order-1"));
        let n = 10_000;
        let under = (0..n).filter(|i| bucket(&format!("evt-{i}")) < 0.2).count();
        assert!((1800..2200).contains(&under), "{under} of {n} under 0.2");
    }

    #[test]
    fn a_failing_candidate_is_rolled_back_once_judged() {
        let r = rules();
        let c = Counts { stable_events: 80, stable_failed: 0, candidate_events: 9, candidate_failed: 9, sent_back: 9 };
        assert_eq!(judge(&c, &r, Duration::from_secs(1)), None, "not judged before min_events");
        let c = Counts { candidate_events: 10, candidate_failed: 10, ..c };
        assert!(matches!(judge(&c, &r, Duration::from_secs(1)), Some(Verdict::RollBack(_))));
    }

    #[test]
    fn a_candidate_failing_like_the_stable_one_is_promoted_after_events_and_time() {
        let r = RolloutSettings { promote_after: Duration::from_secs(60), ..rules() };
        let c = Counts {
            stable_events: 400,
            stable_failed: 40,
            candidate_events: 100,
            candidate_failed: 12,
            sent_back: 12,
        };
        assert_eq!(judge(&c, &r, Duration::from_secs(30)), None, "too early");
        assert!(matches!(judge(&c, &r, Duration::from_secs(60)), Some(Verdict::Promote(_))));
        let worse = Counts { candidate_failed: 35, ..c };
        assert!(matches!(judge(&worse, &r, Duration::from_secs(60)), Some(Verdict::RollBack(_))));
        // 20% observed against 10%: maybe bad luck on 100 events, not yet proof.
        let unsure = Counts { candidate_failed: 20, ..c };
        assert!(matches!(judge(&unsure, &r, Duration::from_secs(60)), Some(Verdict::Promote(_))));
    }

    #[test]
    fn the_confidence_bound_is_the_wilson_interval() {
        assert!((wilson_lower(20, 20) - 0.839).abs() < 0.001, "{}", wilson_lower(20, 20));
        assert!((wilson_lower(10, 100) - 0.0552).abs() < 0.001, "{}", wilson_lower(10, 100));
        assert_eq!(wilson_lower(0, 0), 0.0);
    }
}
