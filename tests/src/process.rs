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
