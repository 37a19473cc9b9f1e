//! Interactive commands from the terminal: `rdev run -i`/`-it` and
//! `rdev attach`.
//!
//! Both directions go over the API's WebSocket (`GET /v1/commands/{id}/attach`):
//! output frames are written to stdout/stderr as they arrive (`seq` order,
//! resumed with `from_seq` after a dropped connection, skipping anything at or
//! below the last `seq` written), local input goes up as binary frames. With
//! a terminal (`-t`), the local terminal is put in raw mode for the whole
//! session (so Ctrl-C, Ctrl-D and arrow keys reach the remote program) and
//! restored on every way out — the end, an error, a signal, a panic; window
//! size changes (SIGWINCH) become `resize` frames.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::client::{Client, ClientError};
use crate::output::note;

/// How long to keep trying to reconnect after the connection drops.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// How the local side takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only watch (no input is sent).
    Watch,
    /// Send local standard input as it comes, then end-of-file.
    Pipe,
    /// The local terminal, raw: every key press goes up.
    Terminal,
}

/// The local terminal's size (columns, rows), if stdout is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    let mut ws: nix::libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into a valid pointer.
    let ok = unsafe { nix::libc::ioctl(1, nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The local terminal in raw mode until dropped (its settings are put back
/// then, and by a panic hook, so no exit path leaves it raw).
pub struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// Puts standard input's terminal in raw mode.
    pub fn enter() -> std::io::Result<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).map_err(std::io::Error::from)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(std::io::Error::from)?;
        let restore = std::sync::Mutex::new(saved.clone());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(t) = restore.lock() {
                let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t);
            }
            previous(info);
        }));
        Ok(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Follows command `id` over the WebSocket until it ends, sending local
/// input as `mode` says; returns the final command object.
pub async fn attach(client: &Client, id: &str, mode: Mode) -> Result<Value, ClientError> {
    let _raw = match mode {
        Mode::Terminal if std::io::stdin().is_terminal() => {
            Some(RawTerminal::enter().map_err(|e| {
                ClientError::Local(format!("cannot put the terminal in raw mode: {e}"))
            })?)
        }
        _ => None,
    };
    let (input_tx, mut input_rx) = tokio::sync::mpsc::channel::<Up>(64);
    if mode != Mode::Watch {
        read_local_input(input_tx.clone());
    }
    match mode {
        Mode::Terminal => drop(tokio::spawn(watch_window_size(input_tx.clone()))),
        // Not raw: Ctrl-C reaches us, and goes on as the command's INT.
        Mode::Pipe => drop(tokio::spawn(forward_interrupts(input_tx.clone()))),
        Mode::Watch => {}
    }
    drop(input_tx);
    let mut last = 0_i64;
    let mut gave_up_at = tokio::time::Instant::now() + RECONNECT_FOR;
    // Input read while disconnected waits here, in order.
    let mut pending: Option<Up> = None;
    let mut input_open = mode != Mode::Watch;
    loop {
        let socket = match connect(client, id, last).await {
            Ok(s) => s,
            Err(e) if e.is_transient() && tokio::time::Instant::now() < gave_up_at => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        gave_up_at = tokio::time::Instant::now() + RECONNECT_FOR;
        let (mut up, mut down) = socket.split();
        if let Some(p) = pending.take()
            && up.send(p.message()).await.is_err()
        {
            pending = Some(p);
            continue;
        }
        loop {
            tokio::select! {
                frame = down.next() => match frame {
                    Some(Ok(Message::Binary(b))) => write_output(&b, &mut last)?,
                    Some(Ok(Message::Text(t))) => match control(t.as_str(), &mut input_open) {
                        Control::End(cmd) => return Ok(cmd),
                        Control::Reconnect => break,
                        Control::Continue => {}
                    },
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                event = input_rx.recv(), if input_open => match event {
                    Some(e) => {
                        if up.send(e.message()).await.is_err() {
                            pending = Some(e);
                            break;
                        }
                    }
                    None => input_open = false,
                },
            }
        }
    }
}

/// Writes an output frame (`[stream][seq u64][bytes]`) not written yet
/// (its seq above `last`) to stdout or stderr.
fn write_output(frame: &[u8], last: &mut i64) -> Result<(), ClientError> {
    let Some((head, data)) = frame.split_at_checked(9) else {
        return Ok(());
    };
    let seq =
        i64::try_from(u64::from_be_bytes(head[1..9].try_into().unwrap_or([0; 8]))).unwrap_or(0);
    if seq <= *last {
        return Ok(());
    }
    let written = if head[0] == 2 {
        let mut err = std::io::stderr();
        err.write_all(data).and_then(|()| err.flush())
    } else {
        let mut out = std::io::stdout();
        out.write_all(data).and_then(|()| out.flush())
    };
    written.map_err(|_| ClientError::Local("cannot write the command's output".into()))?;
    *last = seq;
    Ok(())
}

/// What a JSON control frame from the server asks of the loop.
enum Control {
    /// The command ended: its final object.
    End(Value),
    /// The server ends this socket: connect again from the last seq.
    Reconnect,
    Continue,
}

/// Reads a control frame; an input refusal with 409 closes `input_open`.
fn control(text: &str, input_open: &mut bool) -> Control {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    match v.get("type").and_then(Value::as_str) {
        Some("end") => return Control::End(v.get("command").cloned().unwrap_or(Value::Null)),
        Some("error") => {
            let detail = v.get("detail").and_then(Value::as_str).unwrap_or("");
            if v.get("status").and_then(Value::as_i64) == Some(409) {
                // The command ended, or takes no more input.
                *input_open = false;
            }
            note(&format!("input refused: {detail}"));
        }
        Some("gap") => note(&format!(
            "output truncated: chunks {}-{} were not kept",
            v["from_seq"], v["to_seq"]
        )),
        Some("reconnect") => return Control::Reconnect,
        _ => {}
    }
    Control::Continue
}

/// What goes up.
#[derive(Debug)]
enum Up {
    Data(Vec<u8>),
    Eof,
    Resize(u16, u16),
    Interrupt,
}

impl Up {
    fn message(&self) -> Message {
        match self {
            Up::Data(d) => Message::Binary(d.clone().into()),
            Up::Eof => Message::Text(json!({"type": "eof"}).to_string().into()),
            Up::Resize(cols, rows) => Message::Text(
                json!({"type": "resize", "cols": cols, "rows": rows})
                    .to_string()
                    .into(),
            ),
            Up::Interrupt => Message::Text(
                json!({"type": "signal", "signal": "INT"})
                    .to_string()
                    .into(),
            ),
        }
    }
}

/// Reads local standard input in pieces as they come; end-of-file (of a
/// pipe: a terminal in raw mode sends Ctrl-D as a byte) closes the remote
/// one.
fn read_local_input(tx: tokio::sync::mpsc::Sender<Up>) {
    // A plain thread, not `tokio::io::stdin()`: that reads on the runtime's
    // blocking pool, which the runtime waits for at exit, so `rdev` would
    // hang after the command ended until the next key press. A thread that
    // is still blocked in read(2) simply ends with the process.
    let spawned = std::thread::Builder::new()
        .name("rdev-stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = tx.blocking_send(Up::Eof);
                        return;
                    }
                    Ok(n) => {
                        if tx.blocking_send(Up::Data(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        note(&format!("cannot read standard input: {e}"));
    }
}

/// Sends the command an INT on every local Ctrl-C.
async fn forward_interrupts(tx: tokio::sync::mpsc::Sender<Up>) {
    let Ok(mut int) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    else {
        return;
    };
    while int.recv().await.is_some() {
        if tx.send(Up::Interrupt).await.is_err() {
            return;
        }
    }
}

/// Sends the terminal's size on every SIGWINCH.
async fn watch_window_size(tx: tokio::sync::mpsc::Sender<Up>) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some((cols, rows)) = terminal_size()
            && tx.send(Up::Resize(cols, rows)).await.is_err()
        {
            return;
        }
    }
}

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

/// A byte stream the WebSocket runs over (TCP, or TLS over TCP).
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Opens `…/attach?from_seq=<last>` with the key in `Authorization`.
pub(crate) async fn connect(client: &Client, id: &str, last: i64) -> Result<Socket, ClientError> {
    let base = client.base_url().trim_end_matches('/');
    let (tls, rest) = if let Some(r) = base.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = base.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(ClientError::Local(format!("unsupported URL `{base}`")));
    };
    let url = format!(
        "{}://{rest}/v1/commands/{}/attach?from_seq={last}",
        if tls { "wss" } else { "ws" },
        crate::units::seg(id)
    );
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Local(format!("bad URL {url}: {e}")))?;
    if let Some(key) = client.api_key() {
        let value = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| ClientError::Local("the API key is not a valid header value".into()))?;
        req.headers_mut().insert("authorization", value);
    }
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("rdev.v1"),
    );
    let host = req.uri().host().unwrap_or("localhost").to_owned();
    let port = req.uri().port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| ClientError::Unreachable {
            url: base.to_owned(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = if tls {
        use rustls_platform_verifier::ConfigVerifierExt;
        let config = rustls::ClientConfig::with_platform_verifier()
            .map_err(|e| ClientError::Local(format!("cannot set up TLS: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| ClientError::Local(format!("bad host `{host}`: {e}")))?;
        Box::new(
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    reason: e.to_string(),
                })?,
        )
    } else {
        Box::new(tcp)
    };
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.body().clone().unwrap_or_default();
            Err(ClientError::from_problem(status, "attach", &body))
        }
        Err(e) => Err(ClientError::Transport {
            url,
            reason: e.to_string(),
        }),
    }
}
