//! PostgreSQL notifications: [`listen`] on a connection of its own (a
//! pooled connection's task drops them), and [`Notifier`], which sends them
//! after the changes they announce have committed.
//!
//! A notification is only a wake-up: whoever listens still reads the
//! table, and also looks on a timer, so one lost (while the listener
//! reconnects, or because its sender stopped between a commit and the
//! `NOTIFY`) delays work by at most that timer. After each (re)connect the
//! listener wakes its waiter once, for what it may have missed.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use super::{Pool, connection_config, tls};
use crate::config::DbConfig;
use crate::lifecycle::CancellationToken;
use crate::mq::Backoff;

/// Wakes `wake` for every notification on `channel` (a plain identifier)
/// until `stop` is cancelled, reconnecting after a [`Backoff`] pause when
/// the connection fails.
pub async fn listen(
    cfg: DbConfig,
    channel: &'static str,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    while !stop.is_cancelled() {
        let ended = match connection_config(&cfg)
            .and_then(|(pg, settings)| Ok((pg, tls::connector(&settings)?)))
        {
            Ok((pg, Some(tls))) => session(&pg, tls, channel, &wake, &stop, &mut backoff).await,
            Ok((pg, None)) => session(&pg, NoTls, channel, &wake, &stop, &mut backoff).await,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, channel, retry_in = ?backoff.current(), "not listening for notifications");
            if !backoff.wait(&stop).await {
                break;
            }
        }
    }
}

/// One connection: `LISTEN`, then wake on each notification; `Ok` once
/// `stop` is cancelled.
async fn session<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    channel: &str,
    wake: &Notify,
    stop: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), String>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + Unpin,
{
    let (client, mut connection) = tokio::select! {
        c = pg.connect(tls) => c.map_err(|e| e.to_string())?,
        () = stop.cancelled() => return Ok(()),
    };
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The LISTEN is answered while the connection is polled below.
    let statement = format!("LISTEN {channel}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                done.map_err(|e| e.to_string())?;
                listening = true;
                backoff.reset();
                wake.notify_one();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the connection closed".into()),
            },
            () = stop.cancelled() => return Ok(()),
        }
    }
}

/// Sends `NOTIFY <channel>` for changes this process has committed, after
/// their commit and apart from their transaction.
///
/// PostgreSQL lets one notifying transaction at a time commit: the one
/// that notifies takes a cluster-wide lock at its commit and holds it until
/// the commit is flushed, so notifying in the transaction of a change made
/// such commits flush one after the other instead of sharing flushes
/// (`pgbench` here, 8 clients, one-row insert: 98 transactions/s with the
/// `NOTIFY` inside, 310–330 with it sent after the commit, 350–380 with
/// none). The `NOTIFY` sent alone writes nothing, so its commit does not
/// wait for a flush and holds the lock for a moment.
///
/// [`Notifier::wake`] does not wait: a task sends the notifications, one
/// at a time, and the wake-ups asked for while one is being sent become a
/// single one after it. Every wake-up is followed by a `NOTIFY` that
/// starts after it, so a listener that hears it sees the change that asked
/// for it. One that cannot be sent (no connection) is logged and dropped:
/// the listeners' timer finds the change.
#[derive(Clone, Debug)]
pub struct Notifier {
    due: mpsc::Sender<()>,
}

impl Notifier {
    /// Starts the task that notifies `channel` (a plain identifier) over
    /// connections of `pool`. It ends when the last clone is dropped.
    pub fn spawn(pool: Pool, channel: &'static str) -> Self {
        // One slot: a wake-up waiting there stands for every later one
        // until the task takes it.
        let (due, mut asked) = mpsc::channel::<()>(1);
        let statement = format!("NOTIFY {channel}");
        tokio::spawn(async move {
            while asked.recv().await.is_some() {
                let sent = match pool.get().await {
                    Ok(client) => client
                        .batch_execute(&statement)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = sent {
                    tracing::warn!(error = %e, channel, "cannot notify; the listeners' timer will find the change");
                }
            }
        });
        Self { due }
    }

    /// Asks for a `NOTIFY` after a commit that needs one; returns at once.
    pub fn wake(&self) {
        // Full: a wake-up the task has not taken yet covers this one.
        let _ = self.due.try_send(());
    }
}
