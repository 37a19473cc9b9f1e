//! Local commands without bubblewrap (`RDEV_LOCAL_SANDBOX=off`).

use std::os::fd::OwnedFd;
use std::process::Stdio;

use nix::unistd::Pid;
use tokio::process::Command;

use super::process::ChildSetup;
use super::pty::PtyMaster;
use super::spawned::{Target, boxed};
use super::{Launch, LaunchError, Spawned};

/// Starts a command without bubblewrap (`RDEV_LOCAL_SANDBOX=off`): its own
/// process group, limits and user still apply.
pub(super) fn spawn_plain(
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
            cmd.process_group(0)
                .stdin(if l.stdin {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    setup.install(&mut cmd);
    let mut child = super::process::spawn_exclusive(|| cmd.spawn())
        .map_err(|e| LaunchError::Failed(format!("cannot start the command: {e}")))?;
    let Some(pgid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return Err(LaunchError::Failed(
            "the command exited before it was tracked".into(),
        ));
    };
    // Our copies of the terminal's slave close with the command.
    drop(cmd);
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
        diagnostics: None,
        json: None,
        child,
        cgroup: None,
        program: program.clone(),
    })
}
