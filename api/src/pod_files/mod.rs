//! Files of Kubernetes projects: every operation is an exec session into
//! one of the project's pods (chosen, cached and guarded by the breaker of
//! [`rdev_shared::kube`], like the worker's commands), running a small POSIX
//! `sh` script, as `kubectl cp` does with `tar`. Contents stream through the
//! exec's stdin/stdout in pieces of at most 64 KiB: never a whole file in
//! memory.
//!
//! No shell injection: the scripts are constants, and every value (the
//! workdir, the path, sizes) is a positional parameter of `sh -c` (`"$2"`),
//! never part of the script text. Paths are validated here
//! ([`crate::workspace::validate_path`]) before anything reaches the pod,
//! and used as `./<path>` (never an option) beneath the project's workdir.
//!
//! Confinement in the pod is checked by the script, component by
//! component: a symlink anywhere in a path, a missing or non-directory
//! parent, a directory or special file where a regular file is expected are
//! refused with a distinct exit code (mapped to the same errors as local
//! projects). Unlike local projects (`openat2`), this is a check then a use:
//! a command running in the same container at the same moment could swap a
//! directory for a symlink in between. That gives it nothing it does not
//! have already: the exec runs as the container's user, with exactly the
//! rights of the project's commands, and the container (not the workdir) is
//! the boundary of a Kubernetes project.
//!
//! The container needs `/bin/sh`, `head`, `tail`, `stat -c` (GNU coreutils
//! or busybox), `mkdir`, `mv`, `rm`, `rmdir`, `ls`, `wc`, `find` and `tar`.

use std::io::SeekFrom;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use kube::api::AttachedProcess;
use rdev_shared::domain::KubernetesSettings as KubeProject;
use rdev_shared::kube::{ExecStreams, KubeClient, KubeClientSettings, KubeError, Slot};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadHalf, SimplexStream,
};

use self::scripts::{DELETE, LIST, PRELUDE, READ, STAT, TAR_IN, TAR_OUT, WRITE};
use crate::workspace::{Entry, FilesError, Kind};

mod scripts;

/// Largest piece moved through an exec stream at once.
const PIECE: usize = 64 * 1024;
/// Standard error kept from a session (for error messages).
const STDERR_KEPT: u64 = 4096;
/// Largest stdout of a stat or delete.
const SMALL_OUTPUT: u64 = 64 * 1024;
/// Largest record of a listing (a name is at most 255 bytes on Linux).
const MAX_RECORD: usize = 8 * 1024;

/// Bytes streamed out of a pod.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Runs file operations in the pods of Kubernetes projects.
#[derive(Debug)]
pub struct PodFiles {
    kube: KubeClient,
    idle: Duration,
}

/// One open exec session; closed when dropped (the script then sees its
/// stdin end and removes what it started).
struct Session {
    proc: AttachedProcess,
    _slot: Slot,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // After the exit status the session has ended already: no-op then.
        self.proc.abort();
        self.stderr.abort();
    }
}

impl From<KubeError> for FilesError {
    fn from(e: KubeError) -> Self {
        match e {
            KubeError::Invalid(m) => FilesError::InvalidPath(m),
            other => FilesError::Unavailable(other.to_string()),
        }
    }
}

/// The error an exit code of a script stands for.
fn exit_error(code: i32, stderr: &[u8]) -> FilesError {
    match code {
        3 => FilesError::Unavailable("the project's workdir does not exist in the pod".into()),
        10 => FilesError::Escapes,
        11 => FilesError::NotFound,
        12 => FilesError::WrongType("a path component is not a directory".into()),
        13 => FilesError::WrongType("is a directory".into()),
        14 => FilesError::Special,
        15 => FilesError::NotEmpty,
        16 => FilesError::Unavailable("the upload ended before its announced size".into()),
        17 => FilesError::Unavailable(format!(
            "`tar` in the pod could not extract the archive: {}",
            String::from_utf8_lossy(stderr).trim()
        )),
        other => FilesError::Unavailable(format!(
            "the file operation failed in the pod (exit {other}): {}",
            String::from_utf8_lossy(stderr).trim()
        )),
    }
}

impl Session {
    fn stdin(&mut self) -> Result<tokio::io::WriteHalf<SimplexStream>, FilesError> {
        self.proc
            .stdin()
            .ok_or_else(|| FilesError::Unavailable("the exec session has no stdin".into()))
    }

    fn stdout(&mut self) -> Result<ReadHalf<SimplexStream>, FilesError> {
        self.proc
            .stdout()
            .ok_or_else(|| FilesError::Unavailable("the exec session has no stdout".into()))
    }

    /// Waits for the script's exit status.
    async fn finish(mut self) -> Result<(), FilesError> {
        let status = match self.proc.take_status() {
            Some(s) => s.await,
            None => None,
        };
        let stderr = match tokio::time::timeout(Duration::from_secs(2), &mut self.stderr).await {
            Ok(Ok(e)) => e,
            _ => Vec::new(),
        };
        let Some(status) = status else {
            return Err(FilesError::Unavailable(
                "the exec session ended without an exit status (connection to the Kubernetes API lost)"
                    .into(),
            ));
        };
        match rdev_shared::kube::exit_code(&status) {
            Some(0) => Ok(()),
            Some(code) => Err(exit_error(code, &stderr)),
            None => Err(FilesError::Unavailable(format!(
                "exec failed: {}",
                status
                    .message
                    .or(status.reason)
                    .unwrap_or_else(|| "unknown error".into())
            ))),
        }
    }
}

impl PodFiles {
    /// Operations through `kube`; a transfer that moves no byte for `idle`
    /// is ended.
    pub fn new(kube: KubeClient, idle: Duration) -> Self {
        Self { kube, idle }
    }

    /// Operations through a client created on first use (in-cluster, or
    /// `kubeconfig`, or the default kubeconfig).
    pub fn from_settings(settings: KubeClientSettings, idle: Duration) -> Self {
        Self::new(KubeClient::new(settings), idle)
    }

    async fn open(
        &self,
        project: &KubeProject,
        script: &str,
        args: &[&str],
        stdin: bool,
    ) -> Result<Session, FilesError> {
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!("{PRELUDE}{script}"),
            "rdev-files".to_owned(),
            project.workdir.clone().unwrap_or_default(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let streams = ExecStreams {
            stdin,
            stderr: true,
            tty: false,
            max_buf: PIECE,
        };
        let (mut proc, slot) = self.kube.exec(project, &argv, streams).await?;
        let stderr = match proc.stderr() {
            Some(mut err) => tokio::spawn(async move {
                let mut kept = Vec::new();
                let _ = (&mut err).take(STDERR_KEPT).read_to_end(&mut kept).await;
                let _ = tokio::io::copy(&mut err, &mut tokio::io::sink()).await;
                kept
            }),
            None => tokio::spawn(async { Vec::new() }),
        };
        Ok(Session {
            proc,
            _slot: slot,
            stderr,
        })
    }

    /// Runs a script whose stdout is small; returns it.
    async fn small(
        &self,
        project: &KubeProject,
        script: &str,
        args: &[&str],
    ) -> Result<Vec<u8>, FilesError> {
        let mut s = self.open(project, script, args, false).await?;
        let mut out = Vec::new();
        let mut stdout = s.stdout()?;
        tokio::time::timeout(
            self.idle,
            (&mut stdout).take(SMALL_OUTPUT).read_to_end(&mut out),
        )
        .await
        .map_err(|_| FilesError::Unavailable("the pod did not answer in time".into()))??;
        drop(stdout);
        s.finish().await?;
        Ok(out)
    }

    /// Stat of `rel` (`""`: the workdir itself).
    pub async fn stat(&self, project: &KubeProject, rel: &str) -> Result<Entry, FilesError> {
        let name = rel.rsplit('/').next().unwrap_or_default().to_owned();
        let out = self.small(project, STAT, &[rel]).await?;
        let line = std::str::from_utf8(&out)
            .map_err(|_| FilesError::Unavailable("unexpected stat output from the pod".into()))?;
        parse_stat(line.trim_end(), name)
    }

    /// Removes a file, a symlink or an empty directory.
    pub async fn remove(&self, project: &KubeProject, rel: &str) -> Result<(), FilesError> {
        self.small(project, DELETE, &[rel]).await.map(drop)
    }

    /// A page of the directory `rel` (`""`: the workdir): the `limit` first
    /// entries by name after `after`. The pod sends every entry; only
    /// `limit` are kept at once.
    pub async fn list(
        &self,
        project: &KubeProject,
        rel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, FilesError> {
        let mut s = self.open(project, LIST, &[rel], false).await?;
        let mut stdout = s.stdout()?;
        let mut kept: std::collections::BTreeMap<Vec<u8>, Entry> = Default::default();
        let mut buf: Vec<u8> = Vec::with_capacity(PIECE);
        let mut piece = vec![0u8; PIECE];
        loop {
            let n = tokio::time::timeout(self.idle, stdout.read(&mut piece))
                .await
                .map_err(|_| FilesError::Unavailable("the pod did not answer in time".into()))??;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&piece[..n]);
            while let Some(end) = buf.iter().position(|b| *b == 0) {
                let record: Vec<u8> = buf.drain(..=end).collect();
                let record = &record[..record.len() - 1];
                let Some((name, entry)) = parse_record(record) else {
                    continue;
                };
                if after.is_some_and(|a| name.as_slice() <= a.as_bytes()) {
                    continue;
                }
                kept.insert(name, entry);
                if kept.len() > limit {
                    kept.pop_last();
                }
            }
            if buf.len() > MAX_RECORD {
                return Err(FilesError::Unavailable(
                    "unexpected listing output from the pod".into(),
                ));
            }
        }
        drop(stdout);
        s.finish().await?;
        Ok(kept.into_values().collect())
    }

    /// `len` bytes of the regular file `rel` from `start`, streamed; the
    /// stream ends with an error if the script fails.
    pub async fn read(
        &self,
        project: &KubeProject,
        rel: &str,
        start: u64,
        len: u64,
    ) -> Result<ByteStream, FilesError> {
        let (start, len) = (start.to_string(), len.to_string());
        let mut s = self
            .open(project, READ, &[rel, &start, &len], false)
            .await?;
        let stdout = s.stdout()?;
        Ok(Box::pin(relay(stdout, s, self.idle)))
    }

    /// Writes exactly `len` bytes of `body` to `rel` (parents created),
    /// atomically replacing a file of that name; its stat.
    pub async fn write<S, E>(
        &self,
        project: &KubeProject,
        rel: &str,
        len: u64,
        mut body: S,
    ) -> Result<Entry, FilesError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<FilesError>,
    {
        let name = rel.rsplit('/').next().unwrap_or_default().to_owned();
        let size = len.to_string();
        let mut s = self.open(project, WRITE, &[rel, &size], true).await?;
        let mut stdin = s.stdin()?;
        let mut stdout = s.stdout()?;
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = (&mut stdout).take(SMALL_OUTPUT).read_to_end(&mut out).await;
            out
        });
        self.feed(&mut stdin, &mut body, len).await?;
        // The writer stays open until the session ends: on
        // `v4.channel.k8s.io` closing it would close the whole session.
        let finished = s.finish().await;
        drop(stdin);
        finished?;
        let out = reader.await.unwrap_or_default();
        let line = String::from_utf8_lossy(&out);
        parse_stat(line.trim_end(), name)
    }

    /// Sends exactly `len` bytes of `body` to a script's stdin (each piece
    /// within the idle timeout). Fails on a longer or shorter body: the
    /// caller then drops the session, so the script sees a short input and
    /// removes what it started.
    async fn feed<S, E>(
        &self,
        stdin: &mut (impl AsyncWrite + Unpin),
        body: &mut S,
        len: u64,
    ) -> Result<(), FilesError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<FilesError>,
    {
        let mut sent: u64 = 0;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(Into::into)?;
            sent += piece.len() as u64;
            if sent > len {
                return Err(FilesError::InvalidPath(
                    "the body is longer than its Content-Length".into(),
                ));
            }
            tokio::time::timeout(self.idle, stdin.write_all(&piece))
                .await
                .map_err(|_| FilesError::Unavailable("the pod stopped reading".into()))??;
        }
        if sent != len {
            return Err(FilesError::Unavailable(
                "the body ended before its Content-Length".into(),
            ));
        }
        let _ = stdin.flush().await;
        Ok(())
    }

    /// A plain tar of the directory `rel` (`""`: the workdir) as the pod's
    /// `tar` writes it, streamed.
    pub async fn tar_out(
        &self,
        project: &KubeProject,
        rel: &str,
    ) -> Result<ByteStream, FilesError> {
        let mut s = self.open(project, TAR_OUT, &[rel], false).await?;
        let stdout = s.stdout()?;
        Ok(Box::pin(relay(stdout, s, self.idle)))
    }

    /// Extracts `tar` (a checked, normalised plain tar of `len` bytes: see
    /// [`crate::archive::normalize`]) into the directory `target`.
    pub async fn tar_in(
        &self,
        project: &KubeProject,
        target: &str,
        tar: std::fs::File,
        len: u64,
    ) -> Result<(), FilesError> {
        let size = len.to_string();
        let mut s = self.open(project, TAR_IN, &[target, &size], true).await?;
        let mut stdin = s.stdin()?;
        let mut stdout = s.stdout()?;
        let drain = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        });
        let mut tar = tokio::fs::File::from_std(tar);
        tar.seek(SeekFrom::Start(0)).await?;
        let mut pieces = tokio_util::io::ReaderStream::with_capacity(tar, PIECE);
        self.feed(&mut stdin, &mut pieces, len).await?;
        let finished = s.finish().await;
        drop(stdin);
        drain.abort();
        finished
    }
}

/// Streams `stdout` in pieces, then the session's verdict: an error item
/// if the script failed (the client sees a cut transfer, never a silently
/// short file).
fn relay(
    stdout: impl AsyncRead + Unpin + Send + 'static,
    session: Session,
    idle: Duration,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    async_stream::stream! {
        let mut stdout = stdout;
        let mut piece = vec![0u8; PIECE];
        loop {
            match tokio::time::timeout(idle, stdout.read(&mut piece)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => yield Ok(Bytes::copy_from_slice(&piece[..n])),
                Ok(Err(e)) => {
                    yield Err(e);
                    return;
                }
                Err(_) => {
                    yield Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the pod sent nothing for too long",
                    ));
                    return;
                }
            }
        }
        drop(stdout);
        if let Err(e) = session.finish().await {
            tracing::warn!(error = %e, "a file transfer from a pod failed; the download is cut");
            yield Err(std::io::Error::other(e.to_string()));
        }
    }
}

/// `<hex mode> <size> <mtime>` (as `stat -c '%f %s %Y'` prints it).
fn parse_stat(line: &str, name: String) -> Result<Entry, FilesError> {
    let bad = || FilesError::Unavailable(format!("unexpected stat output from the pod: {line:?}"));
    let mut it = line.split(' ');
    let mode = u32::from_str_radix(it.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
    let size: u64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let mtime: i64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    Ok(Entry {
        name,
        kind: kind_of(mode),
        size,
        mode: format!("{:o}", mode & 0o7777),
        mtime: chrono::DateTime::from_timestamp(mtime, 0).unwrap_or_default(),
    })
}

fn kind_of(mode: u32) -> Kind {
    match mode & 0o170000 {
        0o100000 => Kind::File,
        0o040000 => Kind::Dir,
        0o120000 => Kind::Symlink,
        _ => Kind::Special,
    }
}

/// `<hex mode> <size> <mtime> <name>` of a listing.
fn parse_record(record: &[u8]) -> Option<(Vec<u8>, Entry)> {
    let mut parts = record.splitn(4, |b| *b == b' ');
    let (m, s, t, name) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let line = format!(
        "{} {} {}",
        std::str::from_utf8(m).ok()?,
        std::str::from_utf8(s).ok()?,
        std::str::from_utf8(t).ok()?
    );
    let entry = parse_stat(&line, String::from_utf8_lossy(name).into_owned()).ok()?;
    Some((name.to_vec(), entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_and_records_parse() {
        let e = parse_stat("81a4 5 1700000000", "a b".into()).expect("stat");
        assert_eq!((e.kind, e.size, e.mode.as_str()), (Kind::File, 5, "644"));
        let (name, e) = parse_record(b"41ed 4096 1700000000 dir with space").expect("record");
        assert_eq!(name, b"dir with space");
        assert_eq!(e.kind, Kind::Dir);
        assert_eq!(
            parse_record(b"a1ff 3 1 l").expect("link").1.kind,
            Kind::Symlink
        );
        assert!(parse_stat("zz 1 1", "x".into()).is_err());
    }
}
