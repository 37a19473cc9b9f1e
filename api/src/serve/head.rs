//! A connection's first request head, read by the accept loop to decide who
//! serves the connection: an event stream request is served without hyper
//! (`events.rs`), anything else is handed to hyper with the bytes read so
//! far.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, Version};
use bytes::Bytes;
use rdev_shared::lifecycle::CancellationToken;
use tokio::net::TcpStream;

/// The first read's buffer: an event stream request (path, host, key,
/// `Last-Event-ID`, a browser's usual headers) fits.
const FIRST_READ: usize = 1024;
/// A longer head than this is left to hyper (which has its own limit).
const HEAD_LIMIT: usize = 16 * 1024;
/// Headers an event stream request may have; more, and hyper serves it.
const MAX_HEADERS: usize = 48;

/// What a connection opened with.
pub(super) enum Opening {
    /// A complete `GET /v1/commands/{id}/events` head and nothing after it.
    EventStream(Box<Request<Body>>),
    /// Anything else: hyper serves the connection, reading these bytes
    /// first.
    Other(Bytes),
    /// The client closed, failed, or sent no complete head in time, or the
    /// server is stopping: the connection is dropped.
    Gone,
}

/// Reads until the connection's first request is known to be an event
/// stream request (its head complete) or anything else (often after its
/// first line), within `timeout`.
pub(super) async fn read_opening(
    stream: &TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    stopping: &CancellationToken,
) -> Opening {
    let mut buf = Vec::with_capacity(FIRST_READ);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            ready = tokio::time::timeout_at(deadline, stream.readable()) => match ready {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Opening::Gone,
            },
            () = stopping.cancelled() => return Opening::Gone,
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return Opening::Gone,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Opening::Gone,
        }
        match classify(&buf, peer) {
            Head::EventStream(request) => return Opening::EventStream(request),
            Head::Other => return Opening::Other(Bytes::from(buf)),
            Head::Partial if buf.len() >= HEAD_LIMIT => return Opening::Other(Bytes::from(buf)),
            Head::Partial => {}
        }
    }
}

/// What the bytes read so far are.
enum Head {
    /// A whole event stream request, and nothing after it.
    EventStream(Box<Request<Body>>),
    /// Anything else.
    Other,
    /// An incomplete head that could still be an event stream request.
    Partial,
}

fn classify(buf: &[u8], peer: SocketAddr) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let parsed = head.parse(buf);
    // The request line is filled in as soon as it is read, so most requests
    // are told apart before their head is complete.
    if head.method.is_some_and(|m| m != "GET")
        || head.path.is_some_and(|p| !is_event_stream_path(p))
        || head.version.is_some_and(|v| v != 1)
    {
        return Head::Other;
    }
    match parsed {
        Ok(httparse::Status::Partial) => Head::Partial,
        Ok(httparse::Status::Complete(len)) if len == buf.len() => {
            event_request(&head, peer).map_or(Head::Other, |r| Head::EventStream(Box::new(r)))
        }
        // Pipelined bytes after the head, or a head hyper must judge.
        Ok(httparse::Status::Complete(_)) | Err(_) => Head::Other,
    }
}

/// `/v1/commands/{id}/events`, with or without a query.
fn is_event_stream_path(path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    path.strip_prefix("/v1/commands/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// The request for the router, or `None` when the head asks for anything
/// this loop does not do (a body, an upgrade, `Expect`): hyper serves those.
fn event_request(head: &httparse::Request<'_, '_>, peer: SocketAddr) -> Option<Request<Body>> {
    let uri: Uri = head.path?.parse().ok()?;
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    for h in head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let has_body = (name == axum::http::header::CONTENT_LENGTH && h.value != b"0")
            || name == axum::http::header::TRANSFER_ENCODING;
        if has_body || name == axum::http::header::UPGRADE || name == axum::http::header::EXPECT {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    request.extensions_mut().insert(ConnectInfo(peer));
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().expect("addr")
    }

    fn kind(head: &str) -> &'static str {
        match classify(head.as_bytes(), peer()) {
            Head::EventStream(_) => "events",
            Head::Other => "other",
            Head::Partial => "partial",
        }
    }

    const ID: &str = "0190f3c2-0000-7000-8000-000000000001";

    #[test]
    fn an_event_stream_request_is_known_once_its_head_is_complete() {
        let head = format!(
            "GET /v1/commands/{ID}/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\nlast-event-id: 7\r\n\r\n"
        );
        assert_eq!(kind(&head[..head.len() - 2]), "partial");
        let Head::EventStream(req) = classify(head.as_bytes(), peer()) else {
            panic!("not an event stream request");
        };
        assert_eq!(req.uri().path(), format!("/v1/commands/{ID}/events"));
        assert_eq!(req.headers()["last-event-id"], "7");
        assert_eq!(req.headers()["authorization"], "Bearer k");
        assert!(req.extensions().get::<ConnectInfo<SocketAddr>>().is_some());
        let query = format!("GET /v1/commands/{ID}/events?x=1 HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(kind(&query), "events");
    }

    #[test]
    fn everything_else_goes_to_hyper_often_after_the_first_line() {
        assert_eq!(kind("POST /v1/commands/x/events HTTP/1.1\r\n"), "other");
        assert_eq!(kind("GET /v1/commands/x HTTP/1.1\r\n"), "other");
        assert_eq!(kind("GET /v1/commands/a/b/events HTTP/1.1\r\n"), "other");
        assert_eq!(kind("GET /v1/commands//events HTTP/1.1\r\n"), "other");
        assert_eq!(kind("GET /v1/commands/x/events HTTP/1.0\r\n\r\n"), "other");
        assert_eq!(kind("HEAD /v1/commands/x/events HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind("garbage\r\n\r\n"), "other");
        assert_eq!(kind("GE"), "partial");
        // A body, an upgrade, `Expect` or pipelined bytes: hyper's business.
        for extra in [
            "content-length: 3\r\n\r\nabc",
            "transfer-encoding: chunked\r\n\r\n",
            "upgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "expect: 100-continue\r\n\r\n",
            "\r\nGET /health HTTP/1.1\r\n\r\n",
        ] {
            let head = format!("GET /v1/commands/x/events HTTP/1.1\r\nhost: x\r\n{extra}");
            assert_eq!(kind(&head), "other", "{extra:?}");
        }
        let zero = "GET /v1/commands/x/events HTTP/1.1\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(kind(zero), "events");
    }

    #[test]
    fn a_head_with_too_many_headers_goes_to_hyper() {
        let mut head = String::from("GET /v1/commands/x/events HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            head.push_str(&format!("x-{i}: y\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(kind(&head), "other");
    }
}
