//! The delivery policy: how a pipeline reads, how long it holds events, how often an event is
//! tried and how urgent its type is. Resolved once from the host's settings and the plugin's
//! sidecar (`[delivery]`), then handed to each pipeline — the only settings a pipeline sees.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How one (plugin, event type) pipeline delivers events.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryPolicy {
    /// Events per read and per plugin call.
    pub batch_size: usize,
    /// How long one blocking read waits for new entries.
    pub block: Duration,
    /// Events read but not yet settled, per pipeline: the backpressure bound.
    pub max_inflight_events: usize,
    /// Deliveries of an event before it is dead-lettered (Redis Streams; a BullMQ job counts
    /// its own `attempts`).
    pub max_attempts: u64,
    /// Backoff before the second delivery; doubled for each further one, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long an entry pending on another consumer stays untouched before this one claims it.
    pub visibility_timeout: Duration,
    /// How long a stopping pipeline waits for the events it holds.
    pub stop_grace: Duration,
    /// The event type's priority at the plugin-call gate.
    pub priority: Priority,
    /// Repeated events dropped by the producer's event id (`pipeline::dedup`); `None`: off.
    pub idempotency: Option<Idempotency>,
}

impl DeliveryPolicy {
    /// The backoff before delivery `deliveries + 1`: base * 2^(deliveries-1), capped, with up to
    /// 20% jitter so that retries of many events spread out.
    pub fn retry_delay(&self, deliveries: u64) -> Duration {
        let exp = deliveries.saturating_sub(1).min(20) as u32;
        let d = self.retry_base.saturating_mul(1u32 << exp).min(self.retry_max);
        let jitter = rand::random::<f64>() * 0.2;
        d.mul_f64(1.0 + jitter)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    High = 0,
    Default = 1,
    Low = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Default, Priority::Low];
    /// Share of freed slots when every class waits.
    pub fn weight(self) -> u32 {
        match self {
            Priority::High => 4,
            Priority::Default => 2,
            Priority::Low => 1,
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "high" => Ok(Priority::High),
            "default" => Ok(Priority::Default),
            "low" => Ok(Priority::Low),
            other => Err(format!("unknown priority `{other}` (use high, default or low)")),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::High => "high",
            Priority::Default => "default",
            Priority::Low => "low",
        })
    }
}

/// How much of a stream is kept once every consumer group is done with it. An entry goes once
/// it is outside either limit (the tighter wins) — and never while a group has not acknowledged
/// it or not read it yet. `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Retention {
    pub max_len: Option<u64>,
    pub max_age: Option<Duration>,
}

impl Retention {
    pub fn is_unbounded(&self) -> bool {
        self.max_len.is_none() && self.max_age.is_none()
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.max_len, self.max_age) {
            (None, None) => f.write_str("keep everything"),
            (Some(n), None) => write!(f, "keep {n} entries"),
            (None, Some(a)) => write!(f, "keep {}", crate::backoff::humantime(a)),
            (Some(n), Some(a)) => write!(f, "keep {n} entries and at most {}", crate::backoff::humantime(a)),
        }
    }
}

/// Retention of every stream the host keeps tidy: event streams (with per-type overrides),
/// the dead-letter stream, and BullMQ's completed and failed sets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetentionPolicy {
    pub streams: Retention,
    /// `[retention.<event type>]` of the config file.
    pub per_type: std::collections::HashMap<String, Retention>,
    pub dead_letters: Retention,
    /// Finished jobs kept per queue where the producer set no `removeOnComplete` /
    /// `removeOnFail`: the newest N of each set; `None` keeps them all.
    pub bullmq_keep_completed: Option<u64>,
    pub bullmq_keep_failed: Option<u64>,
}

impl RetentionPolicy {
    /// The retention of event type `t`'s stream.
    pub fn of_type(&self, t: &str) -> Retention {
        self.per_type.get(t).copied().unwrap_or(self.streams)
    }
}

/// Where an event's id is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdKey {
    /// The producer's event id on a stream (`id`): the field `id`, or the envelope's `event_id`
    /// or `id` (what a plugin sees as `event.id`, unless that is the `<stream>/<entry id>`
    /// stand-in for an event without one).
    EventId,
    /// A stream field (`field:<name>`).
    Field(String),
    /// A path of object keys in the JSON payload (`payload:eventId`, `payload:meta.eventId`).
    Payload(Vec<String>),
    /// A BullMQ job's id (`job-id`): the producer's own when it gives one (`jobId`).
    JobId,
}

impl FromStr for IdKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "job-id" => return Ok(IdKey::JobId),
            "id" => return Ok(IdKey::EventId),
            _ => {}
        }
        match s.split_once(':') {
            Some(("field", f)) if !f.is_empty() => Ok(IdKey::Field(f.to_string())),
            Some(("payload", p)) if !p.is_empty() && p.split('.').all(|k| !k.is_empty()) => {
                Ok(IdKey::Payload(p.split('.').map(str::to_string).collect()))
            }
            _ => Err(format!(
                "unknown idempotency key `{s}`: use `id` (the producer's event id on a stream), `field:<stream field>`, `payload:<path>` (e.g. `payload:eventId`, `payload:meta.eventId`), `job-id` (BullMQ), or `off`"
            )),
        }
    }
}

impl std::fmt::Display for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdKey::EventId => f.write_str("id"),
            IdKey::Field(x) => write!(f, "field:{x}"),
            IdKey::Payload(p) => write!(f, "payload:{}", p.join(".")),
            IdKey::JobId => f.write_str("job-id"),
        }
    }
}

/// How a pipeline drops repeated events: by which ids, within which window.
#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    pub keys: Vec<IdKey>,
    pub window: Duration,
}

impl Idempotency {
    /// From the settings' text: keys separated by commas (or `off`), a window (or `off`).
    pub fn parse(keys: &str, window: Option<Duration>) -> Result<Option<Idempotency>, String> {
        let keys = keys.trim();
        if keys == "off" {
            return Ok(None);
        }
        if keys.is_empty() {
            return Err("no key given: name one (`id`, `payload:eventId`...) or say `off`".into());
        }
        let keys = keys.split(',').map(IdKey::from_str).collect::<Result<Vec<_>, _>>()?;
        Ok(window.filter(|w| !w.is_zero()).map(|window| Idempotency { keys, window }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap_with_some_jitter() {
        let p = DeliveryPolicy {
            batch_size: 1,
            block: Duration::ZERO,
            max_inflight_events: 1,
            max_attempts: 5,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(5),
            visibility_timeout: Duration::from_secs(60),
            stop_grace: Duration::ZERO,
            priority: Priority::Default,
            idempotency: None,
        };
        let within = |d: Duration, base: f64| d.as_secs_f64() >= base && d.as_secs_f64() <= base * 1.2;
        assert!(within(p.retry_delay(1), 1.0));
        assert!(within(p.retry_delay(2), 2.0));
        assert!(within(p.retry_delay(3), 4.0));
        assert!(within(p.retry_delay(4), 5.0));
        assert!(within(p.retry_delay(100), 5.0));
        assert_eq!("low".parse::<Priority>(), Ok(Priority::Low));
        assert!("urgent".parse::<Priority>().unwrap_err().contains("high, default or low"));
    }
}
