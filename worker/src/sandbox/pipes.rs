//! The pipes between the worker and bubblewrap: memfds for its arguments,
//! its JSON status (the init's pid), and capped reads of its diagnostics.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::DIAGNOSTICS_MAX;

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

/// The init's host pid once it catches `signal`. The kernel drops a signal
/// sent to a PID namespace's init that has no handler for it, and bwrap names
/// the init as soon as it is forked, before it installed its handlers; so
/// this also waits (polling `SigCgt` in `/proc/PID/status`, a few ms at most)
/// for the handler. `None` when the init is gone.
pub(super) async fn init_catching(pid: &watch::Sender<i32>, signal: Signal) -> Option<i32> {
    let mut known = pid.subscribe();
    let pid = *known.wait_for(|p| *p > 0).await.ok()?;
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
