//! An interactive command's input (bytes, end-of-file, terminal sizes,
//! signals), and the second exec sessions that signal or stop a command.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use kube::{Api, Client};
use rdev_shared::interactive::{Input, InputSignal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::script::{PIDFILE_WAIT_S, kill_script, signal_script};
use super::{InputRx, KubernetesExecutor};

impl KubernetesExecutor {
    /// Applies an interactive command's input in order: bytes to the exec
    /// stream's stdin, end-of-file (a close of the stdin channel, which
    /// needs `v5.channel.k8s.io`; on a terminal, Ctrl-D), terminal sizes on
    /// the resize channel, signals (`INT`/`QUIT` on a terminal as their
    /// control characters, like a key press; others through a second exec
    /// to the command's process group and marked processes).
    pub(super) async fn apply_input(
        &self,
        mut input: InputRx,
        mut writer: Option<tokio::io::WriteHalf<tokio::io::SimplexStream>>,
        mut resize: Option<futures::channel::mpsc::Sender<kube::api::TerminalSize>>,
        tty: bool,
        remote: Remote<'_>,
    ) {
        use futures::SinkExt;
        while let Some(event) = input.recv().await {
            match event {
                Input::Data { data } => {
                    if let Some(w) = writer.as_mut()
                        && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                    {
                        writer = None;
                    }
                }
                Input::Eof if tty => {
                    if let Some(w) = writer.as_mut() {
                        let _ = w.write_all(&[0x04]).await;
                    }
                }
                // The stream sees end-of-file only once its writer shuts
                // down; kube then closes the stdin channel (v5) or, on
                // v4, which cannot, the whole session.
                Input::Eof => {
                    if let Some(mut w) = writer.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Input::Resize { size } => {
                    if let Some(r) = resize.as_mut() {
                        let _ = r
                            .send(kube::api::TerminalSize {
                                width: size.cols,
                                height: size.rows,
                            })
                            .await;
                    }
                }
                Input::Signal { signal } => {
                    let key = match signal {
                        InputSignal::Int if tty => Some(0x03),
                        InputSignal::Quit if tty => Some(0x1c),
                        _ => None,
                    };
                    match (key, writer.as_mut()) {
                        (Some(k), Some(w)) => {
                            let _ = w.write_all(&[k]).await;
                        }
                        _ => {
                            let script = signal_script(remote.run_id, signal.as_str());
                            if let Err(e) = self
                                .exec_script(&remote, &script, self.settings.api_timeout)
                                .await
                            {
                                tracing::warn!(run_id = remote.run_id, %signal, error = %e, "could not signal the remote command");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Runs [`kill_script`] in the pod: SIGTERM to the command's process
    /// group, SIGKILL after the grace period. Bypasses the breaker.
    pub(super) async fn stop_remote(&self, remote: Remote<'_>) {
        let (pod, run_id) = (remote.pod, remote.run_id);
        let script = kill_script(run_id, self.settings.kill_grace);
        let budget = self.settings.api_timeout
            + self.settings.kill_grace
            + Duration::from_secs(u64::from(PIDFILE_WAIT_S) + 5);
        match self.exec_script(&remote, &script, budget).await {
            Ok(()) => tracing::debug!(pod, run_id, "remote command stopped"),
            Err(e) => {
                tracing::warn!(pod, run_id, error = %e, "could not stop the remote command")
            }
        }
    }

    /// Runs a shell script in the command's container (a second exec;
    /// bypasses the breaker) and waits up to `budget` for it to succeed.
    async fn exec_script(
        &self,
        r: &Remote<'_>,
        script: &str,
        budget: Duration,
    ) -> Result<(), String> {
        let api: Api<Pod> = Api::namespaced(r.client.clone(), r.namespace);
        let mut params = AttachParams::default()
            .stdin(false)
            .stdout(false)
            .stderr(true);
        if let Some(c) = r.container {
            params = params.container(c);
        }
        let pod = r.pod;
        let stop = async {
            let mut attached = api
                .exec(pod, ["/bin/sh", "-c", script], &params)
                .await
                .map_err(|e| e.to_string())?;
            let mut errors = Vec::new();
            if let Some(mut err) = attached.stderr() {
                let _ = (&mut err).take(4096).read_to_end(&mut errors).await;
                let _ = tokio::io::copy(&mut err, &mut tokio::io::sink()).await;
            }
            let status = match attached.take_status() {
                Some(s) => s.await,
                None => None,
            };
            match status {
                Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
                other => Err(format!(
                    "{}{}",
                    other.and_then(|s| s.message).unwrap_or_default(),
                    String::from_utf8_lossy(&errors)
                )),
            }
        };
        tokio::time::timeout(budget, stop)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

/// Where a command runs, for the scripts that stop or signal it.
#[derive(Clone, Copy)]
pub(super) struct Remote<'a> {
    pub(super) client: &'a Client,
    pub(super) namespace: &'a str,
    pub(super) pod: &'a str,
    pub(super) container: Option<&'a str>,
    pub(super) run_id: &'a str,
}
