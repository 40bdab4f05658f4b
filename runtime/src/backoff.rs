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

/// Runs `f` until it succeeds, saying why it did not each time (`what` is not available yet)
/// and waiting 200 ms doubling to 5 s in between.
pub async fn until_ok<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!("{what} is not available yet ({e:#}); retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
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
}
