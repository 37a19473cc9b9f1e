//! The webhook receiver: it records every delivery by `webhook-id` and fails
//! every fifth request so that the dispatcher has to retry.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};

#[derive(Default)]
pub struct Received {
    /// webhook-id → (bodies seen, times).
    pub by_id: HashMap<String, (HashSet<Vec<u8>>, u32)>,
    pub requests: u64,
}

async fn receive(
    State(st): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut st = st.lock().expect("received");
    st.requests += 1;
    // Every fifth request fails: the dispatcher retries.
    if st.requests % 5 == 0 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let e = st.by_id.entry(id).or_default();
    e.0.insert(body.to_vec());
    e.1 += 1;
    StatusCode::OK
}

/// Serves the receiver on a free local port; returns what it records and
/// its address.
pub async fn start() -> (Arc<Mutex<Received>>, SocketAddr) {
    let received: Arc<Mutex<Received>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver");
    let hook_addr: SocketAddr = listener.local_addr().expect("addr");
    let app = Router::new().fallback(receive).with_state(received.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (received, hook_addr)
}
