//! The pipes between the worker and bubblewrap: memfds for its arguments,
//! its JSON status (the init's pid), and capped reads of its diagnostics.

use std::io::{Seek, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::pipe2;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::DIAGNOSTICS_MAX;

/// One end of each pipe between the worker and a sandbox: the worker keeps
/// the read ends, bwrap and the init get the write ends.
pub(super) struct SandboxPipes {
    /// The command's standard output.
    pub(super) out: OwnedFd,
    /// The command's standard error.
    pub(super) err: OwnedFd,
    /// The init's report.
    pub(super) status: OwnedFd,
    /// bwrap's JSON status (the init's host pid).
    pub(super) json: OwnedFd,
    /// bwrap's own diagnostics.
    pub(super) diag: OwnedFd,
}

impl SandboxPipes {
    /// The read ends, then the write ends (close-on-exec: the child set-up
    /// keeps the ones bwrap needs).
    pub(super) fn new() -> nix::Result<(Self, Self)> {
        let pipe = || pipe2(OFlag::O_CLOEXEC);
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (status_r, status_w) = pipe()?;
        let (json_r, json_w) = pipe()?;
        let (diag_r, diag_w) = pipe()?;
        let read = Self {
            out: out_r,
            err: err_r,
            status: status_r,
            json: json_r,
            diag: diag_r,
        };
        let write = Self {
            out: out_w,
            err: err_w,
            status: status_w,
            json: json_w,
            diag: diag_w,
        };
        Ok((read, write))
    }
}

/// A memfd holding `bytes`, rewound for its reader.
pub(super) fn filled_memfd(name: &str, bytes: &[u8]) -> std::io::Result<std::fs::File> {
    let mut fd = memfd(name)?;
    fd.write_all(bytes)?;
    fd.rewind()?;
    Ok(fd)
}

pub(super) fn memfd(name: &str) -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(name, nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    Ok(std::fs::File::from(fd))
}

pub(super) fn receiver(fd: OwnedFd) -> Option<pipe::Receiver> {
    match pipe::Receiver::from_owned_fd(fd) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a pipe");
            None
        }
    }
}

/// Reads up to [`DIAGNOSTICS_MAX`] bytes as text, draining the rest.
pub(super) async fn read_capped(mut r: pipe::Receiver) -> String {
    let mut buf = Vec::new();
    let _ = (&mut r)
        .take(DIAGNOSTICS_MAX as u64)
        .read_to_end(&mut buf)
        .await;
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Like [`read_capped`], but for at most `limit`: what arrived by then,
/// even without an end of file. A write end still open somewhere (a
/// process that inherited it) must not turn a report that was written into
/// no report at all.
pub(super) async fn read_capped_within(mut r: pipe::Receiver, limit: Duration) -> String {
    let mut buf = Vec::new();
    {
        let mut capped = (&mut r).take(DIAGNOSTICS_MAX as u64);
        let _ = tokio::time::timeout(limit, capped.read_to_end(&mut buf)).await;
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The init's host pid once bwrap has named it (read from bwrap's status
/// by [`follow_json`]); `None` if it never will.
pub(super) async fn init_named(pid: &watch::Sender<i32>) -> Option<i32> {
    let mut known = pid.subscribe();
    known.wait_for(|p| *p > 0).await.ok().map(|p| *p)
}

/// The init's host pid once it catches `signal`. The kernel drops a signal
/// sent to a PID namespace's init that has no handler for it, and bwrap names
/// the init as soon as it is forked, before it installed its handlers; so
/// this also waits (polling `SigCgt` in `/proc/PID/status`, a few ms at most)
/// for the handler. `None` when the init is gone.
pub(super) async fn init_catching(pid: &watch::Sender<i32>, signal: Signal) -> Option<i32> {
    let pid = init_named(pid).await?;
    let bit = 1_u64 << (signal as i32 - 1);
    loop {
        let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
            .await
            .ok()?;
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        if caught & bit != 0 {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads bwrap's JSON status until it names the sandbox's init (written as
/// soon as the init is forked; the pipe stays open until bwrap exits).
pub(super) async fn follow_json(mut r: pipe::Receiver, pid: Arc<watch::Sender<i32>>) {
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    while text.len() < DIAGNOSTICS_MAX {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => text.extend_from_slice(&buf[..n]),
        }
        if let Some(n) = child_pid(&String::from_utf8_lossy(&text)) {
            pid.send_replace(n);
            break;
        }
    }
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
}

/// The `"child-pid": N` of bwrap's JSON status.
pub(super) fn child_pid(text: &str) -> Option<i32> {
    let rest = &text[text.find("\"child-pid\"")? + "\"child-pid\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report that was written is read even while another process (here:
    /// our own write end) keeps the pipe open.
    #[tokio::test]
    async fn a_written_report_is_read_without_an_end_of_file() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&w, b"exit 0\n").expect("write");
        let r = receiver(r).expect("receiver");
        let got = read_capped_within(r, Duration::from_millis(200)).await;
        assert_eq!(got, "exit 0\n");
        drop(w);
    }
}
