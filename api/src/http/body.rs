//! A deadline on reading a request body: a client that trickles its body
//! (one byte now and then) would otherwise hold a connection and a task
//! forever. The whole body must arrive within `RDEV_BODY_READ_TIMEOUT` of
//! the request's start; after that the body yields [`BodyTimeout`], which
//! the JSON extractor answers with 408 (problem+json).
//!
//! File uploads (`PUT /v1/projects/{name}/files/…`) may be gigabytes: they
//! get an idle deadline instead (`RDEV_FILES_IDLE_TIMEOUT` without a byte).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};

use super::AppState;

/// The body was not received in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A body that fails once its deadline passes.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    /// Restart the deadline at every frame.
    idle: bool,
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if self.idle {
                let next = tokio::time::Instant::now() + self.limit;
                self.sleep.as_mut().reset(next);
            }
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: gives every request body the configured deadline.
pub async fn deadline(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let idle = is_upload(&req);
    let limit = if idle {
        st.cfg.files_idle_timeout
    } else {
        st.cfg.body_read_timeout
    };
    let req = req.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            sleep: Box::pin(tokio::time::sleep(limit)),
            limit,
            idle,
        })
    });
    next.run(req).await
}

/// `PUT /v1/projects/{name}/files/…`.
fn is_upload(req: &Request) -> bool {
    let path = req.uri().path();
    let files = path.starts_with("/v1/projects/") && path.split('/').nth(4) == Some("files");
    let archive =
        path.starts_with("/v1/projects/") && path.split('/').nth(4) == Some("files:archive");
    (req.method() == axum::http::Method::PUT && files)
        || (req.method() == axum::http::Method::POST && archive)
}

/// Whether an error (or one of its causes) is a [`BodyTimeout`].
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        if let Some(ax) = err.downcast_ref::<axum::Error>()
            && ax
                .to_string()
                .starts_with("the request body was not received")
        {
            return true;
        }
        cur = err.source();
    }
    false
}
