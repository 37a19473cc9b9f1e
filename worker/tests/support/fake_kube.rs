//! A fake Kubernetes API server on a loopback port, for the tests of the
//! `kubernetes` executor (worker/tests/kube_exec.rs) and of the files API of
//! Kubernetes projects (tests/tests/e2e/kube_files.rs): pod lists over HTTP, and exec upgraded to a websocket that
//! speaks the real `v4.channel.k8s.io` / `v5.channel.k8s.io` framing (binary
//! frames whose first byte is the channel: 0 stdin, 1 stdout, 2 stderr,
//! 3 status JSON, 255 close on v5). The fake runs the requested command
//! locally, so output, exit codes and kills are real. Like a real container
//! runtime, it does not kill the process when the client closes the session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes as AxumBytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rdev_shared::interactive::TtySize;
use rdev_worker::executor::{KubeSettings, KubernetesExecutor};
use rdev_worker::sandbox::process::spawn_exclusive;
use rdev_worker::sandbox::pty::{self, PtyMaster};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

pub const NS: &str = "dev";
pub const SELECTOR: &str = "app=web";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Lists work, exec answers 403.
    ExecForbidden,
    /// Lists answer 403.
    ListForbidden,
    /// Everything answers 500.
    Broken,
}

#[derive(Clone, Debug)]
pub struct ExecRecord {
    pub pod: String,
    pub container: Option<String>,
    pub command: Vec<String>,
}

pub struct FakeState {
    /// Selector → pods.
    pub pods: Mutex<HashMap<String, Vec<Value>>>,
    pub mode: Mutex<Mode>,
    pub protocol: &'static str,
    pub lists: AtomicUsize,
    pub execs: Mutex<Vec<ExecRecord>>,
    pub active_sessions: AtomicUsize,
    /// Command sessions end this long after they start, without a status
    /// (a lost connection), leaving the process running.
    pub drop_after: Mutex<Option<Duration>>,
    /// Terminal sizes received on the resize channel, in order.
    pub resizes: Mutex<Vec<(u16, u16)>>,
}

pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
}

impl Fake {
    pub async fn start(protocol: &'static str) -> Self {
        let state = Arc::new(FakeState {
            pods: Mutex::new(HashMap::from([(
                SELECTOR.to_owned(),
                vec![pod("web-1", true), pod("web-0", true), pod("web-2", false)],
            )])),
            mode: Mutex::new(Mode::Normal),
            protocol,
            lists: AtomicUsize::new(0),
            execs: Mutex::new(Vec::new()),
            drop_after: Mutex::new(None),
            resizes: Mutex::new(Vec::new()),
            active_sessions: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/namespaces/{ns}/pods/{name}/exec", get(exec))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API");
        let addr = listener.local_addr().expect("fake address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("mode") = mode;
    }

    pub fn set_pods(&self, selector: &str, pods: Vec<Value>) {
        self.state
            .pods
            .lock()
            .expect("pods")
            .insert(selector.to_owned(), pods);
    }

    /// Exec sessions of commands (not of the stop script).
    pub fn command_execs(&self) -> Vec<ExecRecord> {
        self.state
            .execs
            .lock()
            .expect("execs")
            .iter()
            .filter(|e| !e.command.iter().any(|c| is_stop_script(c)))
            .cloned()
            .collect()
    }

    pub fn stop_execs(&self) -> usize {
        let all = self.state.execs.lock().expect("execs").len();
        all - self.command_execs().len()
    }

    pub async fn wait_sessions_closed(&self) -> bool {
        for _ in 0..100 {
            if self.state.active_sessions.load(Ordering::SeqCst) == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn executor(&self, settings: KubeSettings) -> KubernetesExecutor {
        KubernetesExecutor::with_client(client_for(self.addr), settings)
    }
}

/// Whether an exec runs the executor's stop script.
pub fn is_stop_script(arg: &str) -> bool {
    // The wrapper (`s=…`) carries the stop script too, for its watchdog.
    arg.contains("sig TERM") && !arg.starts_with("s=")
}

pub fn client_for(addr: SocketAddr) -> kube::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let url = format!("http://{addr}").parse().expect("url");
    kube::Client::try_from(kube::Config::new(url)).expect("kube client")
}

pub fn pod(name: &str, ready: bool) -> Value {
    json!({
        "metadata": { "name": name, "namespace": NS, "labels": { "app": "web" } },
        "spec": { "containers": [ { "name": "app" }, { "name": "sidecar" } ] },
        "status": {
            "phase": if ready { "Running" } else { "Pending" },
            "conditions": [ { "type": "Ready", "status": if ready { "True" } else { "False" } } ]
        }
    })
}

pub fn status_body(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    });
    (
        StatusCode::from_u16(code).expect("status code"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub fn query_pairs(raw: &str) -> Vec<(String, String)> {
    pub fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                    out.push(u8::from_str_radix(hex, 16).expect("hex digit"));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).expect("utf-8 query")
    }
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub async fn list_pods(
    State(st): State<Arc<FakeState>>,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    st.lists.fetch_add(1, Ordering::SeqCst);
    let mode = *st.mode.lock().expect("mode");
    match mode {
        Mode::Broken => return status_body(500, "InternalError", "etcd is sad"),
        Mode::ListForbidden => {
            return status_body(
                403,
                "Forbidden",
                &format!(
                    "pods is forbidden: User \"system:serviceaccount:rdev:rdev-worker\" cannot list resource \"pods\" in the namespace \"{ns}\""
                ),
            );
        }
        _ => {}
    }
    let selector = query_pairs(q.as_deref().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let items = st
        .pods
        .lock()
        .expect("pods")
        .get(&selector)
        .cloned()
        .unwrap_or_default();
    let body = json!({
        "apiVersion": "v1", "kind": "PodList",
        "metadata": { "resourceVersion": "1" },
        "items": items
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

pub async fn exec(
    State(st): State<Arc<FakeState>>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let mode = *st.mode.lock().expect("mode");
    match mode {
        Mode::Broken => return status_body(500, "InternalError", "etcd is sad"),
        Mode::ExecForbidden => {
            return status_body(
                403,
                "Forbidden",
                &format!(
                    "pods \"{name}\" is forbidden: User \"system:serviceaccount:rdev:rdev-worker\" cannot create resource \"pods/exec\" in the namespace \"{ns}\""
                ),
            );
        }
        _ => {}
    }
    let exists = st
        .pods
        .lock()
        .expect("pods")
        .values()
        .flatten()
        .any(|p| p["metadata"]["name"] == name.as_str());
    if !exists {
        return status_body(404, "NotFound", &format!("pods \"{name}\" not found"));
    }
    let pairs = query_pairs(q.as_deref().unwrap_or(""));
    let command: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let flag = |name: &str| pairs.iter().any(|(k, v)| k == name && v == "true");
    let container = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone());
    let stdin = flag("stdin");
    assert!(
        flag("stdout") || flag("stderr"),
        "at least one output stream"
    );
    let tty = flag("tty");
    assert!(
        !(tty && flag("stderr")),
        "the API server refuses stderr with a tty"
    );
    st.execs.lock().expect("execs").push(ExecRecord {
        pod: name,
        container,
        command: command.clone(),
    });
    let v5 = st.protocol.starts_with("v5");
    let state = st.clone();
    ws.protocols([st.protocol])
        .on_upgrade(move |socket| session(socket, command, stdin, tty, v5, state))
}

pub fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(AxumBytes::from(v))
}

/// How the fake's process is wired: pipes, or one pseudo-terminal for
/// stdin, stdout and stderr (`tty=true`: one output channel, resizes on
/// channel 4).
pub enum Wiring {
    Pipes(Option<tokio::process::ChildStdin>),
    Tty(PtyMaster),
}

/// Spawns `argv` on a new terminal (80x24, like a runtime before the
/// client's first resize), as its session's controlling terminal.
pub fn spawn_on_tty(
    program: &str,
    args: &[String],
) -> std::io::Result<(tokio::process::Child, PtyMaster)> {
    let (master, slave) = pty::open(TtySize { cols: 80, rows: 24 })?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok((spawn_exclusive(|| cmd.spawn())?, master))
}

/// One exec session: runs `argv` locally and relays it over the channels.
pub async fn session(
    mut socket: WebSocket,
    argv: Vec<String>,
    stdin: bool,
    tty: bool,
    v5: bool,
    st: Arc<FakeState>,
) {
    st.active_sessions.fetch_add(1, Ordering::SeqCst);
    struct Active(Arc<FakeState>);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.active_sessions.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let drop_after = if argv.iter().any(|a| is_stop_script(a)) {
        None
    } else {
        *st.drop_after.lock().expect("drop_after")
    };
    let st_resizes = st.clone();
    let st_resizes = &st_resizes.resizes;
    let _active = Active(st);
    let lost = async move {
        match drop_after {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lost);

    let spawned = argv.split_first().map(|(program, args)| {
        if tty {
            return spawn_on_tty(program, args).map(|(c, m)| (c, Some(m)));
        }
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        spawn_exclusive(|| cmd.spawn()).map(|c| (c, None))
    });
    let (mut child, master) = match spawned {
        Some(Ok(c)) => c,
        _ => {
            let status = json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": "OCI runtime exec failed: executable file not found"});
            let _ = socket.send(frame(3, status.to_string().as_bytes())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    // Like the API server: an empty frame on each output channel first.
    let _ = socket.send(frame(1, b"")).await;
    if !tty {
        let _ = socket.send(frame(2, b"")).await;
    }

    type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
    let (mut out, mut err, mut wiring): (Reader, Reader, Wiring) = match master {
        Some(m) => (
            Box::new(m.clone()),
            Box::new(tokio::io::empty()),
            Wiring::Tty(m),
        ),
        None => (
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
            Wiring::Pipes(child.stdin.take()),
        ),
    };
    let (mut out_open, mut err_open) = (true, !tty);
    let (mut obuf, mut ebuf) = (vec![0u8; 16384], vec![0u8; 16384]);
    loop {
        tokio::select! {
            // The connection breaks: no status, the process keeps running.
            () = &mut lost => return,
            r = out.read(&mut obuf), if out_open => match r {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => if socket.send(frame(1, &obuf[..n])).await.is_err() { return; },
            },
            r = err.read(&mut ebuf), if err_open => match r {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => if socket.send(frame(2, &ebuf[..n])).await.is_err() { return; },
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match (b[0], &mut wiring) {
                    (0, Wiring::Pipes(Some(w))) => {
                        let _ = w.write_all(&b[1..]).await;
                    }
                    (0, Wiring::Tty(m)) => {
                        let _ = m.write_all(&b[1..]).await;
                    }
                    (4, Wiring::Tty(m)) => {
                        let size: Value = serde_json::from_slice(&b[1..]).expect("resize JSON");
                        let dim = |k: &str| u16::try_from(size[k].as_u64().expect(k)).expect(k);
                        st_resizes.lock().expect("resizes").push((dim("Width"), dim("Height")));
                        m.resize(TtySize { cols: dim("Width"), rows: dim("Height") }).expect("resize");
                    }
                    (255, Wiring::Pipes(w)) if v5 && b.get(1) == Some(&0) => *w = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    // The client went away. A real runtime leaves the process
                    // running; so does the fake (the executor must kill it).
                    return;
                }
                Some(Ok(_)) => {}
            },
            status = child.wait(), if !out_open && !err_open => {
                let code = match status {
                    Ok(s) => s.code().unwrap_or_else(|| {
                        use std::os::unix::process::ExitStatusExt;
                        128 + s.signal().unwrap_or(0)
                    }),
                    Err(_) => 1,
                };
                let body = if code == 0 {
                    json!({"metadata": {}, "status": "Success"})
                } else {
                    json!({"metadata": {}, "status": "Failure",
                        "message": format!("command terminated with non-zero exit code: exit status {code}"),
                        "reason": "NonZeroExitCode",
                        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
                };
                let _ = socket.send(frame(3, body.to_string().as_bytes())).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}
