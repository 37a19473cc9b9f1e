//! How every consumer of rdev survives a broker restart: the same
//! [`Backoff`] between reconnection attempts everywhere, and [`follow`] for
//! the subscriptions whose deliveries need no acknowledgement (control
//! broadcasts, interactive input, live output).

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::{Connection, Consumer};
use tokio_util::sync::CancellationToken;

use super::{CONNECT_TIMEOUT, MqError};

/// Pauses between reconnection attempts of a consumer: [`Backoff::FIRST`]
/// after the first failure, doubling up to [`Backoff::MAX`], back to the
/// first once connected. Bounded, so a restarted broker is found again
/// within `MAX`; growing, so a broker that is down is not hammered.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// The first pause.
    pub const FIRST: Duration = Duration::from_millis(200);
    /// The longest pause.
    pub const MAX: Duration = Duration::from_secs(10);

    /// Starts at [`Backoff::FIRST`].
    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// Connected again: the next failure pauses [`Backoff::FIRST`].
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The pause the next [`Backoff::wait`] takes (for logs).
    pub fn current(&self) -> Duration {
        self.next
    }

    /// Sleeps the current pause and doubles the next one; false (at once)
    /// when `stop` is cancelled first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = stop.cancelled() => false,
        }
    }
}

/// Follows a subscription until `stop` is cancelled: opens it with `open`,
/// awaits `handle` for each delivery in order, and reopens it after a
/// [`Backoff`] pause when the connection or the consumer fails.
/// `connected(true)` is called each time the subscription is up,
/// `connected(false)` each time it goes down. `what` names it in logs.
pub async fn follow<O, OF, H, HF>(
    what: &str,
    stop: &CancellationToken,
    mut open: O,
    mut handle: H,
    mut connected: impl FnMut(bool),
) where
    O: FnMut() -> OF,
    OF: Future<Output = Result<(Connection, Consumer), MqError>>,
    H: FnMut(Delivery) -> HF,
    HF: Future<Output = ()>,
{
    let mut backoff = Backoff::new();
    while !stop.is_cancelled() {
        let opened = tokio::select! {
            r = open() => r,
            () = stop.cancelled() => return,
        };
        match opened {
            Ok((conn, mut consumer)) => {
                backoff.reset();
                connected(true);
                loop {
                    let next = tokio::select! {
                        n = consumer.next() => n,
                        () = stop.cancelled() => break,
                    };
                    match next {
                        Some(Ok(d)) => handle(d).await,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, what, "consumer failed; reconnecting");
                            break;
                        }
                        None => {
                            tracing::warn!(what, "consumer ended; reconnecting");
                            break;
                        }
                    }
                }
                connected(false);
                // Bounded: a broker behind a black hole never answers.
                let _ = tokio::time::timeout(CONNECT_TIMEOUT, conn.close(200, "bye".into())).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, what, retry_in = ?backoff.current(), "cannot subscribe");
            }
        }
        if !backoff.wait(stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pauses_double_up_to_the_cap_and_stop_at_once() {
        let stop = CancellationToken::new();
        let mut b = Backoff::new();
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(b.current());
            b.next = (b.next * 2).min(Backoff::MAX);
        }
        assert_eq!(seen[0], Backoff::FIRST);
        assert_eq!(*seen.last().expect("some"), Backoff::MAX);
        b.reset();
        assert_eq!(b.current(), Backoff::FIRST);
        stop.cancel();
        assert!(!b.wait(&stop).await);
    }
}
