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

/// An answer that no retry can change: the server at that address is not what the setting says
/// (ClickHouse's native port given as its HTTP URL, an HTTP server as Redis), a password is
/// wrong, a certificate is not trusted. [`until_ok`] gives up on it after a few tries.
#[derive(Debug)]
pub struct NeverSucceeds(pub String);

impl std::fmt::Display for NeverSucceeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NeverSucceeds {}

/// How long, and how many tries in a row, an answer that [`NeverSucceeds`] must persist before
/// [`until_ok`] gives up: a server starting behind a proxy (a container's published port) may
/// answer oddly for a few seconds.
const NEVER_SUCCEEDS_TRIES: u32 = 3;
const NEVER_SUCCEEDS_FOR: Duration = Duration::from_secs(20);

/// Runs `f` until it succeeds, saying why it did not each time (`what` is not available yet;
/// also shown by `/ready` meanwhile) and waiting 200 ms doubling to 5 s in between. An error
/// that [`NeverSucceeds`] ends the wait after a few tries in a row.
pub async fn until_ok<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut hopeless = 0;
    let mut hopeless_since = std::time::Instant::now();
    for attempt in 1.. {
        match f().await {
            Ok(v) => {
                crate::status::arrived(what);
                return Ok(v);
            }
            Err(e) if e.downcast_ref::<NeverSucceeds>().is_some() => {
                if hopeless == 0 {
                    hopeless_since = std::time::Instant::now();
                }
                hopeless += 1;
                if hopeless >= NEVER_SUCCEEDS_TRIES && hopeless_since.elapsed() >= NEVER_SUCCEEDS_FOR {
                    crate::status::arrived(what);
                    let secs = hopeless_since.elapsed().as_secs();
                    return Err(anyhow::anyhow!(
                        "{what}: giving up after {hopeless} tries in {secs} s: {}",
                        one_line(&e)
                    ));
                }
                tracing::warn!("{what} is not available ({}); trying again in case it is restarting", one_line(&e));
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                hopeless = 0;
                let delay = backoff.next_delay();
                let error = one_line(&e);
                tracing::warn!("{what} is not available yet ({error}); retrying in {delay:?}");
                crate::status::waiting(
                    what,
                    format!("waiting for {what}: {error} (attempt {attempt}, next in {})", humantime(delay)),
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
    unreachable!("the attempts never run out")
}

/// An error on one line: each cause once (client libraries repeat theirs), the first line of
/// each, joined by `: `.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        for piece in text.split(": ") {
            let piece = piece.lines().next().unwrap_or("").trim().to_string();
            if !piece.is_empty() && !parts.contains(&piece) {
                parts.push(piece);
            }
        }
    }
    parts.join(": ")
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
    fn errors_on_one_line_each_cause_once() {
        let e = anyhow::anyhow!("Connection refused (os error 111): Connection refused (os error 111)")
            .context("cannot connect to Redis at redis://h:1");
        assert_eq!(one_line(&e), "cannot connect to Redis at redis://h:1: Connection refused (os error 111)");
        let e = anyhow::anyhow!("Incompatible type - Parse error at 1\nUnexpected `33`").context("the server answered");
        assert_eq!(one_line(&e), "the server answered: Incompatible type - Parse error at 1");
    }

    #[test]
    fn an_answer_that_never_succeeds_is_found_as_error_or_context_under_more_context() {
        let as_error = anyhow::Error::new(NeverSucceeds("a".into())).context("outer");
        let as_context = anyhow::anyhow!("io").context(NeverSucceeds("b".into())).context("outer");
        assert!(as_error.downcast_ref::<NeverSucceeds>().is_some());
        assert!(as_context.downcast_ref::<NeverSucceeds>().is_some());
        assert!(anyhow::anyhow!("plain").context("outer").downcast_ref::<NeverSucceeds>().is_none());
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
