//! Waiting before trying again: one doubling backoff for every retry loop of the host
//! (connecting, reading, recording a batch, inserting, acknowledging).

use std::future::Future;
use std::time::Duration;

/// A delay that doubles after each failure, up to a cap, and starts over after a success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, next: first, max }
    }

    /// 100 ms doubling to 5 s: Redis or ClickHouse briefly away.
    pub const fn brief() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay before the next try (then doubled, up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Sleeps the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Runs `f` until it succeeds, saying why it did not each time (`what` is not available yet;
/// also shown by `/ready` meanwhile) and waiting 200 ms doubling to 5 s in between.
pub async fn until_ok<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    for attempt in 1.. {
        match f().await {
            Ok(v) => {
                crate::status::arrived(what);
                return v;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("{what} is not available yet ({e:#}); retrying in {delay:?}");
                crate::status::waiting(
                    what,
                    format!("waiting for {what}: {e:#} (attempt {attempt}, next in {})", humantime(delay)),
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
    unreachable!("the attempts never run out")
}

/// A duration for people: `200ms`, `1.6s`, `5s`, `90m`, `7d`.
pub fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if s < 60 {
        format!("{:.1}s", d.as_secs_f64()).replace(".0s", "s")
    } else if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn durations_for_people() {
        let h = |s: f64| humantime(Duration::from_secs_f64(s));
        assert_eq!(
            [h(0.2), h(1.6), h(5.0), h(90.0), h(5400.0), h(7.0 * 86400.0), h(61.0)],
            ["200ms", "1.6s", "5s", "90s", "90m", "7d", "61s"]
        );
    }
}
