//! PostgreSQL notifications (`LISTEN`), on a connection of their own: a
//! pooled connection's task drops them.
//!
//! A notification is only a wake-up: whoever listens still reads the
//! table, and also looks on a timer, so one lost while the listener
//! reconnects delays work by at most that timer. After each (re)connect
//! the listener wakes its waiter once, for what it may have missed.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use super::{connection_config, tls};
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
