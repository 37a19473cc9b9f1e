//! An event stream request served without hyper: the router answers it as
//! it answers any request, and this module writes the answer on the socket
//! itself, the body chunked, then closes the connection.
//!
//! Why: hyper keeps an 8 KiB read buffer and an 8 KiB head buffer for a
//! connection's whole life, and an SSE connection lives for hours writing a
//! few bytes a minute. Here a stream holds its socket, its state in the
//! router's body, and nothing else between writes.

use std::io::IoSlice;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::io::WriteTimeout;

/// How long the last bytes of a closing connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers `request` on `stream` and closes the connection. A client that
/// takes nothing for `write_timeout` while there is something to send is
/// dropped, as on hyper's connections.
pub(super) async fn serve(
    stream: TcpStream,
    request: Request<Body>,
    app: Router,
    write_timeout: Duration,
) {
    // Boxed: the router's future is large and done with before the stream
    // starts; the connection's task keeps only what streaming needs.
    let response = Box::pin(app.oneshot(request))
        .await
        .unwrap_or_else(|e| match e {});
    let (parts, body) = response.into_parts();
    let has_body = !(parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED);
    let mut io = WriteTimeout::new(stream, write_timeout);
    let head = encode_head(parts.status, &parts.headers, has_body);
    drop(parts);
    if io.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    if has_body && stream_body(&mut io, body).await.is_err() {
        // Closed without the last chunk: the client knows the answer is cut.
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
}

/// The status line and headers: the router's, minus what describes the
/// connection or the body's framing, which this loop decides.
fn encode_head(status: StatusCode, headers: &HeaderMap, has_body: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
        head.extend_from_slice(format!("date: {date}\r\n").as_bytes());
    }
    if has_body {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

/// Writes the body as chunks until it ends (then the last chunk) or the
/// client goes away (an error).
async fn stream_body(io: &mut WriteTimeout<TcpStream>, body: Body) -> std::io::Result<()> {
    let mut frames = body.into_data_stream();
    loop {
        let next = tokio::select! {
            next = frames.next() => next,
            closed = client_closed(io) => return Err(closed),
        };
        match next {
            Some(Ok(data)) if data.is_empty() => {}
            Some(Ok(data)) => {
                let size = format!("{:x}\r\n", data.len());
                write_all_vectored(
                    io,
                    &mut [
                        IoSlice::new(size.as_bytes()),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ],
                )
                .await?;
            }
            Some(Err(e)) => return Err(std::io::Error::other(e)),
            None => return io.write_all(b"0\r\n\r\n").await,
        }
    }
}

/// Resolves when the client has closed its side (or reset the connection).
/// Bytes it sends meanwhile are read and dropped: one request per
/// connection here, and the answer says `connection: close`.
async fn client_closed(io: &mut WriteTimeout<TcpStream>) -> std::io::Error {
    let mut scratch = [0u8; 64];
    loop {
        match io.read(&mut scratch).await {
            Ok(0) => return std::io::ErrorKind::UnexpectedEof.into(),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

/// Writes every slice, in as few writes as the socket allows (one packet
/// per chunk with `TCP_NODELAY`).
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_frames_the_body_itself_and_closes() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "text/event-stream".parse().expect("v"),
        );
        headers.insert(header::CONTENT_LENGTH, "12".parse().expect("v"));
        headers.insert(header::CONNECTION, "keep-alive".parse().expect("v"));
        let head = String::from_utf8(encode_head(StatusCode::OK, &headers, true)).expect("utf-8");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: text/event-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(
            head.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{head}"
        );
        assert!(
            !head.contains("content-length") && !head.contains("keep-alive"),
            "{head}"
        );

        let none = String::from_utf8(encode_head(
            StatusCode::NOT_MODIFIED,
            &HeaderMap::new(),
            false,
        ))
        .expect("utf-8");
        assert!(!none.contains("transfer-encoding"), "{none}");
    }
}
