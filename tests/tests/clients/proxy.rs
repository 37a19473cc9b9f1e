//! A TCP proxy in front of the API that cuts event streams: every
//! connection is closed in the middle of its `after`-th SSE `output` event
//! (both sides, no clean end), and the next connection after a cut is
//! refused (the API "down" for a moment). Requests that carry no event
//! stream pass untouched. Clients must resume with `Last-Event-ID`, lose
//! nothing and repeat nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct CuttingProxy {
    pub url: String,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(target: SocketAddr, after: usize) -> Self {
        assert!(after > 0);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let cuts = Arc::new(AtomicUsize::new(0));
        let refuse = Arc::new(AtomicUsize::new(0));
        let counted = cuts.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                // One refusal owed per cut: drop the connection unanswered.
                if refuse
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    drop(inbound);
                    continue;
                }
                let (cuts, refuse) = (counted.clone(), refuse.clone());
                tokio::spawn(async move {
                    if relay(inbound, target, after).await {
                        cuts.fetch_add(1, Ordering::SeqCst);
                        refuse.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Self { url, cuts, task }
    }

    /// Streams cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection; true when it was cut.
async fn relay(inbound: TcpStream, target: SocketAddr, after: usize) -> bool {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return false;
    };
    let (mut client_rx, mut client_tx) = inbound.into_split();
    let (mut server_rx, mut server_tx) = outbound.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
        let _ = server_tx.shutdown().await;
    });
    const MARKER: &[u8] = b"event: output";
    // Output events seen on this connection, and the tail of the previous
    // read (a marker may straddle two reads).
    let mut seen = 0;
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let cut = loop {
        let n = match server_rx.read(&mut buf).await {
            Ok(0) | Err(_) => break false,
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut carry);
        let offset = window.len();
        window.extend_from_slice(&buf[..n]);
        let mut cut_at = None;
        for (i, w) in window.windows(MARKER.len()).enumerate() {
            if w == MARKER {
                seen += 1;
                if seen == after {
                    // A few bytes into the event: the client holds half of it.
                    cut_at = Some((i + MARKER.len() + 8).min(window.len()));
                    break;
                }
            }
        }
        if let Some(at) = cut_at {
            let from = offset.min(at);
            let _ = client_tx.write_all(&window[from..at]).await;
            break true;
        }
        if client_tx.write_all(&buf[..n]).await.is_err() {
            break false;
        }
        carry = window[window.len().saturating_sub(MARKER.len() - 1)..].to_vec();
    };
    up.abort();
    let _ = client_tx.shutdown().await;
    cut
}
