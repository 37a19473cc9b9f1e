//! Processes commands leave behind, seen from the host (`/proc`).

use std::time::Duration;

use crate::app::TestApp;

/// Whether a process no longer runs (absent, or a zombie awaiting its reaper).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Waits until a command has printed its first line, and returns it.
pub async fn first_line(app: &TestApp, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = app.output(id, None).await;
        let text = String::from_utf8_lossy(&out);
        if let Some(line) = text
            .split_inclusive('\n')
            .next()
            .filter(|l| l.ends_with('\n'))
        {
            return line.trim_end().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing printed by {id}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `sleep` duration unique to one test (`300.123456`): commands run in a
/// PID namespace of their own, so the pids they print mean nothing on the
/// host, but a process whose command line has this marker can be found.
pub fn sleep_marker() -> String {
    format!("300.{:06}", uuid::Uuid::now_v7().as_u128() % 1_000_000)
}

/// Host pids of live (not zombie) processes with `marker` as an argument.
pub fn marked_processes(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !process_gone(pid) && cmdline.split(|&b| b == 0).any(|a| a == marker.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Waits (up to 5 s) until no process carries `marker`.
pub async fn wait_no_marked(marker: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = marked_processes(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes with `{marker}` still run: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a process from a test (a CLI, a browser, a test suite). Tests run
/// the worker in their own process, and each sandbox launch makes the
/// descriptors of one command (its output and report pipes, its secret
/// files) inheritable for the moment of its spawn. A process started in
/// that moment would inherit them and hold that command's pipes open for
/// its whole life: the command's output would not end, and its sandbox's
/// report would come late. So every start goes through the worker's
/// [`spawn_exclusive`](rdev_worker::sandbox::process::spawn_exclusive), as
/// each start in the worker binary does.
pub fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    rdev_worker::sandbox::process::spawn_exclusive(|| cmd.spawn())
}

/// [`spawn`] for a `std` command.
pub fn spawn_std(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    rdev_worker::sandbox::process::spawn_exclusive(|| cmd.spawn())
}

/// `cmd.output()` started through [`spawn_std`] (standard output and error
/// captured, no standard input).
pub fn output_std(cmd: &mut std::process::Command) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    spawn_std(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?
    .wait_with_output()
}

/// A worker process a test kills: an id and a `TMPDIR` of its own, so what
/// a killed worker cannot remove (the sandbox init it installed, its
/// commands' cgroups) is removed when this drops, as a worker restarted
/// with that id would (`rdev_worker::sandbox::cgroup::Cgroups::detect`
/// sweeps them). Declare it before the child, so it drops after it.
#[derive(Debug)]
pub struct KilledWorker {
    id: String,
    tmp: std::path::PathBuf,
}

impl KilledWorker {
    pub fn new() -> Self {
        let id = format!("killed-{}", uuid::Uuid::now_v7().simple());
        let tmp = std::env::temp_dir().join(format!("rdev-{id}"));
        std::fs::create_dir_all(&tmp).expect("the killed worker's TMPDIR");
        Self { id, tmp }
    }

    /// `RDEV_WORKER_ID` and `TMPDIR` for the worker's process.
    pub fn env(&self) -> [(&str, &std::ffi::OsStr); 2] {
        [
            ("RDEV_WORKER_ID", self.id.as_ref()),
            ("TMPDIR", self.tmp.as_os_str()),
        ]
    }
}

impl Default for KilledWorker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KilledWorker {
    fn drop(&mut self) {
        drop(rdev_worker::sandbox::cgroup::Cgroups::detect(&self.id));
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}
