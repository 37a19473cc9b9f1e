//! A TCP proxy that can be cut: every relayed connection is dropped at once
//! and new ones are refused until it is restored. Put in front of RabbitMQ
//! (or PostgreSQL) it simulates an outage seen by one process only, without
//! touching the shared server other tests use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct CutProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    /// Black hole: connections stay open but no byte moves either way.
    frozen: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let down = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (d, l, f) = (down.clone(), live.clone(), frozen.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let f = f.clone();
                let relay = tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ci, co) = inbound.into_split();
                    let (si, so) = outbound.into_split();
                    tokio::join!(pump(ci, so, f.clone()), pump(si, co, f));
                });
                let mut live = l.lock().expect("lock");
                live.retain(|h| !h.is_finished());
                live.push(relay.abort_handle());
            }
        });
        Self {
            addr,
            down,
            frozen,
            live,
            task,
        }
    }

    /// An AMQP URL (guest/guest, vhost `/`) through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for h in self.live.lock().expect("lock").drain(..) {
            h.abort();
        }
    }

    /// Accepts connections again (and thaws a black hole).
    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Turns the proxy into a black hole: connections stay open (new ones
    /// are accepted) but no byte moves until [`CutProxy::restore`].
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Copies one direction, holding bytes while the proxy is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
