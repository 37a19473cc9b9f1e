//! Local commands without bubblewrap (`RDEV_LOCAL_SANDBOX=off`).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::unistd::Pid;
use tokio::process::Command;

use super::process::ChildSetup;
use super::pty::PtyMaster;
use super::spawned::{Target, boxed};
use super::{Launch, LaunchError, Spawned};

/// Starts a command without bubblewrap (`RDEV_LOCAL_SANDBOX=off`): its own
/// process group, limits and user still apply. Without a terminal, and
/// with the launcher (`rdev-sandbox-init --launch`) at hand, the launcher
/// applies them and executes the program, and the worker starts it with
/// `posix_spawn`; otherwise (a terminal needs `setsid` and `TIOCSCTTY`)
/// the worker forks itself and applies them in the child.
pub(super) fn spawn_plain(
    l: &Launch<'_>,
    setup: ChildSetup,
    terminal: Option<(PtyMaster, OwnedFd)>,
    launcher: Option<&Path>,
) -> Result<Spawned, LaunchError> {
    match (terminal, launcher) {
        (None, Some(launcher)) => spawn_launched(l, setup, launcher),
        (terminal, _) => spawn_forked(l, setup, terminal),
    }
}

/// `program` as the command's `PATH` finds it, the way the standard
/// library would have for a forked child; the launcher does not search.
fn resolve(program: &OsString, path: Option<&String>) -> Result<PathBuf, LaunchError> {
    let program = Path::new(program);
    super::process::search_path(program, path.map(std::ffi::OsStr::new)).ok_or_else(|| {
        let missing = std::io::Error::from_raw_os_error(nix::libc::ENOENT);
        LaunchError::Failed(format!(
            "cannot start the command: {}: {missing}",
            program.display()
        ))
    })
}

/// Through the launcher, without a terminal.
fn spawn_launched(
    l: &Launch<'_>,
    setup: ChildSetup,
    launcher: &Path,
) -> Result<Spawned, LaunchError> {
    let Some((program, args)) = l.argv.split_first() else {
        return Err(LaunchError::Failed("empty argv".into()));
    };
    let resolved = resolve(program, l.env.get("PATH"))?;
    let mut start = setup
        .launcher(launcher, &resolved, Some(program))
        .map_err(|e| LaunchError::Failed(format!("cannot prepare the command's start: {e}")))?;
    start
        .cmd
        .args(args)
        .env_clear()
        .envs(&l.env)
        .current_dir(l.workdir)
        .kill_on_drop(true);
    piped(&mut start.cmd, l.stdin);
    let child = start
        .spawn()
        .map_err(|e| LaunchError::Failed(format!("cannot start the command: {e}")))?;
    tracked(child, None, program)
}

/// By forking the worker (a terminal, or no launcher).
fn spawn_forked(
    l: &Launch<'_>,
    mut setup: ChildSetup,
    terminal: Option<(PtyMaster, OwnedFd)>,
) -> Result<Spawned, LaunchError> {
    let Some((program, args)) = l.argv.split_first() else {
        return Err(LaunchError::Failed("empty argv".into()));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&l.env)
        .current_dir(l.workdir)
        .kill_on_drop(true);
    let master = match terminal {
        Some((master, slave)) => {
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| LaunchError::Failed(format!("cannot pass the terminal: {e}")))
            };
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            // Its own session, the terminal as its controlling terminal.
            setup.terminal_session = true;
            Some(master)
        }
        None => {
            piped(&mut cmd, l.stdin);
            None
        }
    };
    setup.install(&mut cmd);
    let child = super::process::spawn_exclusive(|| cmd.spawn())
        .map_err(|e| LaunchError::Failed(format!("cannot start the command: {e}")))?;
    // Our copies of the terminal's slave close with the command.
    drop(cmd);
    tracked(child, master, program)
}

/// A command without a terminal: its own process group (the target of
/// signals), output on pipes, input on a pipe only when it has some.
fn piped(cmd: &mut Command, stdin: bool) {
    cmd.process_group(0)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// The started command, its process group the target of signals; a
/// terminal's master carries its output.
fn tracked(
    mut child: tokio::process::Child,
    master: Option<PtyMaster>,
    program: &OsString,
) -> Result<Spawned, LaunchError> {
    let Some(pgid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return Err(LaunchError::Failed(
            "the command exited before it was tracked".into(),
        ));
    };
    let (stdout, stderr) = match &master {
        Some(m) => (Some(boxed(m.clone())), None),
        None => (
            child.stdout.take().map(boxed),
            child.stderr.take().map(boxed),
        ),
    };
    Ok(Spawned {
        stdin: child.stdin.take(),
        stdout,
        stderr,
        target: Target::Group(Pid::from_raw(pgid)),
        pty: master,
        report: None,
        reported: Vec::new(),
        diagnostics: None,
        json: None,
        child,
        cgroup: None,
        program: program.clone(),
        serving: None,
    })
}
