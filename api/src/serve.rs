//! rdev-api's accept loop: HTTP/1.1 connections served by hyper, with a
//! graceful shutdown. It replaces `axum::serve` for one reason, memory per
//! open connection, which is what 10,000 SSE watchers cost.
//!
//! `axum::serve` accepts HTTP/1.1 and HTTP/2 on the same port. To tell them
//! apart it reads the first 24 bytes of each connection on its own, so hyper
//! then reads a request in two parts, and its 8 KiB read buffer doubles to
//! 16 KiB on the second read and stays that size for the connection's life
//! (a heap profile of 10,000 idle SSE connections: half of the API's memory).
//! Clients of rdev speak HTTP/1.1 (a TLS-terminating proxy in front speaks
//! HTTP/1.1 to us too), so this loop serves HTTP/1.1 only and the buffer
//! stays 8 KiB.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// A client that sends nothing for this long after connecting (or between
/// requests' headers) is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for open connections to finish (SSE streams end on
/// their own: they watch the same shutdown signal).
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
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
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
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
        // No upgrades: rdev has no WebSocket or CONNECT routes.
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
