//! rdev-api's accept loop: HTTP/1.1 connections served by hyper, event
//! streams served by this module, with a graceful shutdown. It replaces
//! `axum::serve` for one reason, memory per open connection, which is what
//! 10,000 SSE watchers cost.
//!
//! `axum::serve` accepts HTTP/1.1 and HTTP/2 on the same port. To tell them
//! apart it reads the first 24 bytes of each connection on its own, so hyper
//! then reads a request in two parts, and its 8 KiB read buffer doubles to
//! 16 KiB on the second read and stays that size for the connection's life
//! (a heap profile of 10,000 idle SSE connections: half of the API's memory).
//! Clients of rdev speak HTTP/1.1 (a TLS-terminating proxy in front speaks
//! HTTP/1.1 to us too), so this loop serves HTTP/1.1 only.
//!
//! Even at 8 KiB, hyper's buffers (one to read heads, one to write them) are
//! most of an idle event stream's memory. So the loop reads each
//! connection's first request head itself (`head.rs`): a request for an
//! event stream is answered by the router as usual and written out by
//! `events.rs`, one request per connection; anything else goes to hyper,
//! which reads the bytes already read first.

mod events;
mod head;
mod io;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use rdev_shared::lifecycle::CancellationToken;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tower::ServiceExt;

/// A client that sends nothing for this long after connecting (or between
/// requests' headers) is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused connection (over the cap) may take to receive its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The answer to a connection over `RDEV_MAX_CONNECTIONS`: written without
/// reading the request, then the connection is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 163\r\n\r\n\
{\"type\":\"urn:rdev:problem:unavailable\",\"title\":\"Service Unavailable\",\"status\":503,\
\"detail\":\"this instance serves its maximum number of connections; retry shortly\"}";

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops
/// accepting and waits for open connections to finish (SSE streams end on
/// their own: they watch the same shutdown signal). At most
/// `max_connections` connections are served at once; one more is answered
/// 503 and closed at once (an idle client cannot hold the accept loop).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    write_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let http = Arc::new(http);
    // Connection slots double as the shutdown's wait: when every slot is
    // back, every connection has finished.
    let max_connections = max_connections.clamp(
        1,
        tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize),
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather
                    // than spin; the listener itself stays good.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let conn = Connection { stream, peer, slot };
                conn.spawn(&http, &app, write_timeout, shutdown.clone());
            }
            Err(_) => refuse(stream),
        }
    }
    drop(listener);
    let _ = slots.acquire_many(max_connections as u32).await;
}

/// One accepted connection, holding its slot.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves the connection in a task of its own, until it ends or, once
    /// `stopping` is cancelled, its request in flight is answered.
    fn spawn(
        self,
        http: &Arc<http1::Builder>,
        app: &Router,
        write_timeout: Duration,
        stopping: CancellationToken,
    ) {
        let Self { stream, peer, slot } = self;
        let http = http.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // Held for the connection's life.
            let _slot = slot;
            // Each way of serving is boxed: the task keeps only the one it
            // takes (an idle event stream stays small).
            match head::read_opening(&stream, peer, HEADER_READ_TIMEOUT, &stopping).await {
                head::Opening::Gone => {}
                head::Opening::EventStream(request) => {
                    Box::pin(events::serve(stream, *request, app, write_timeout)).await;
                }
                head::Opening::Other(read) => {
                    let stream = io::Rewind::new(read, stream);
                    Box::pin(serve_hyper(
                        &http,
                        stream,
                        peer,
                        app,
                        write_timeout,
                        stopping,
                    ))
                    .await;
                }
            }
        });
    }
}

/// Serves a connection with hyper until it ends or, once `stopping` is
/// cancelled, its request in flight is answered.
async fn serve_hyper(
    http: &http1::Builder,
    stream: io::Rewind<TcpStream>,
    peer: SocketAddr,
    app: Router,
    write_timeout: Duration,
    stopping: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
        let app = app.clone();
        async move {
            Ok::<_, Infallible>(
                app.oneshot(req.map(axum::body::Body::new))
                    .await
                    .unwrap_or_else(|e| match e {}),
            )
        }
    });
    // Upgrades for the attach WebSocket: once upgraded, the socket leaves
    // this connection (and its slot); attach sessions count against the
    // SSE watcher limit instead. The write timeout goes with the socket.
    let stream = io::WriteTimeout::new(stream, write_timeout);
    let conn = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stopping.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Answers a connection over the cap [`OVER_CAPACITY`] without reading it,
/// and closes it.
fn refuse(mut stream: TcpStream) {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            let _ = stream.write_all(OVER_CAPACITY).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_is_a_complete_problem_answer() {
        let text = std::str::from_utf8(super::OVER_CAPACITY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("content-length");
        assert_eq!(body.len(), len);
        let p: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(p["status"], 503);
    }
}
