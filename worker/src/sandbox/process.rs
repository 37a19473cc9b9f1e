//! What happens between the fork and the exec of a command's first process
//! (bubblewrap, or the command itself when the sandbox is off): joining the
//! command's cgroup, resource limits, dropping root, and dying with the
//! worker. Only async-signal-safe calls, on data prepared before the fork.
//! Also who commands run as ([`resolve_run_as`], at start).

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};
use rdev_shared::containment::ResourceLimits;

/// The unprivileged user commands run as when the worker is root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: Uid,
    /// Primary group id (the only group kept).
    pub gid: Gid,
    /// Name, for logs (`uid` when the user has no name).
    pub name: String,
}

/// The user commands run as: `None` when the worker is not root (it runs
/// them as itself); never root.
pub(super) fn resolve_run_as(configured: Option<&str>) -> Result<Option<RunAs>, String> {
    if !Uid::effective().is_root() {
        if let Some(u) = configured {
            tracing::warn!(
                user = u,
                "RDEV_SANDBOX_USER is ignored: the worker is not root and runs commands as itself"
            );
        }
        return Ok(None);
    }
    let by_name = |name: &str| -> Result<Option<RunAs>, String> {
        Ok(User::from_name(name)
            .map_err(|e| format!("cannot look up user `{name}`: {e}"))?
            .map(|u| RunAs {
                uid: u.uid,
                gid: u.gid,
                name: u.name,
            }))
    };
    let run_as = match configured.map(str::trim).filter(|s| !s.is_empty()) {
        Some(spec) if spec.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            let (uid, gid) = spec.split_once(':').unwrap_or((spec, spec));
            let uid: u32 = uid
                .parse()
                .map_err(|_| format!("RDEV_SANDBOX_USER: bad uid in `{spec}`"))?;
            let gid: u32 = gid
                .parse()
                .map_err(|_| format!("RDEV_SANDBOX_USER: bad gid in `{spec}`"))?;
            RunAs {
                uid: Uid::from_raw(uid),
                gid: Gid::from_raw(gid),
                name: uid.to_string(),
            }
        }
        Some(name) => {
            by_name(name)?.ok_or_else(|| format!("RDEV_SANDBOX_USER: no user `{name}`"))?
        }
        None => match by_name("rdev-run")? {
            Some(u) => u,
            None => by_name("nobody")?
                .ok_or("neither `rdev-run` nor `nobody` exists; set RDEV_SANDBOX_USER")?,
        },
    };
    if run_as.uid.is_root() || run_as.gid.as_raw() == 0 {
        return Err(format!(
            "commands never run as root (RDEV_SANDBOX_USER resolves to {}:{})",
            run_as.uid, run_as.gid
        ));
    }
    Ok(Some(run_as))
}

/// Set-up of the child process, applied by [`ChildSetup::install`].
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// Descriptors the child keeps across exec (their close-on-exec flag is
    /// cleared in the child only, so no other child inherits them).
    pub keep: Vec<RawFd>,
    /// `cgroup.procs` descriptors: the child joins by writing `0`.
    pub join: Vec<RawFd>,
    /// Resource limits (soft, hard).
    pub rlimits: Vec<(Resource, u64, u64)>,
    /// Drop root to this user.
    pub run_as: Option<RunAs>,
    /// Start a new session whose controlling terminal is standard input
    /// (a command with a tty and no sandbox).
    pub terminal_session: bool,
}

impl ChildSetup {
    /// Makes `cmd` apply this set-up in its child before exec.
    pub fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: `apply` only makes async-signal-safe system calls (fcntl,
        // write, setrlimit, setgroups, setgid, setuid, prctl) on values
        // owned by the closure; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || self.apply());
        }
    }

    fn apply(&self) -> io::Result<()> {
        if self.terminal_session {
            nix::unistd::setsid().map_err(io::Error::from)?;
            // SAFETY: TIOCSCTTY on standard input (the terminal's slave) of
            // a session leader without a controlling terminal.
            if unsafe { nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for &fd in &self.keep {
            fcntl(borrow(fd), FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
        }
        for &fd in &self.join {
            nix::unistd::write(borrow(fd), b"0").map_err(io::Error::from)?;
        }
        for &(resource, soft, hard) in &self.rlimits {
            setrlimit(resource, soft, hard).map_err(io::Error::from)?;
        }
        if let Some(user) = &self.run_as {
            setgroups(&[user.gid]).map_err(io::Error::from)?;
            setgid(user.gid).map_err(io::Error::from)?;
            setuid(user.uid).map_err(io::Error::from)?;
        }
        // After setuid, which clears it: the child dies with the worker's
        // thread that started it (the sandbox's processes die with bwrap).
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
        if unsafe { nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The rlimits of a command: CPU time, file size and open files always; no
/// core dumps (the host's core handler runs outside the sandbox); memory
/// (address space) and process count only where no cgroup enforces them
/// for the whole tree. `RLIMIT_NPROC` counts every process of the user on
/// the host, so as a fallback it bounds the commands of one user together.
pub fn rlimits(
    limits: &ResourceLimits,
    cgroup_memory: bool,
    cgroup_pids: bool,
) -> Vec<(Resource, u64, u64)> {
    let value = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    let mut out = vec![(Resource::RLIMIT_CORE, 0, 0)];
    if let Some(s) = value(limits.cpu_s) {
        // SIGXCPU at the soft limit (so the reason is clear), SIGKILL a few
        // seconds later if the process catches it.
        out.push((Resource::RLIMIT_CPU, s, s + 5));
    }
    if let Some(b) = value(limits.file_size_bytes) {
        out.push((Resource::RLIMIT_FSIZE, b, b));
    }
    if let Some(n) = value(limits.open_files) {
        out.push((Resource::RLIMIT_NOFILE, n, n));
    }
    if !cgroup_memory && let Some(b) = value(limits.memory_bytes) {
        out.push((Resource::RLIMIT_AS, b, b));
    }
    if !cgroup_pids && let Some(n) = value(limits.pids) {
        out.push((Resource::RLIMIT_NPROC, n, n));
    }
    out
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the descriptors are owned by the spawning code and stay open
    // until the child has exec'ed.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_cover_what_cgroups_do_not() {
        let limits = ResourceLimits {
            memory_bytes: Some(1 << 30),
            pids: Some(100),
            cpu_s: Some(10),
            file_size_bytes: Some(1 << 20),
            open_files: Some(64),
        };
        let with = rlimits(&limits, true, true);
        let resources: Vec<Resource> = with.iter().map(|r| r.0).collect();
        assert_eq!(
            resources,
            [
                Resource::RLIMIT_CORE,
                Resource::RLIMIT_CPU,
                Resource::RLIMIT_FSIZE,
                Resource::RLIMIT_NOFILE
            ]
        );
        assert_eq!(with[1], (Resource::RLIMIT_CPU, 10, 15));
        let without = rlimits(&limits, false, false);
        assert!(without.contains(&(Resource::RLIMIT_AS, 1 << 30, 1 << 30)));
        assert!(without.contains(&(Resource::RLIMIT_NPROC, 100, 100)));
        assert_eq!(rlimits(&ResourceLimits::default(), false, false).len(), 1);
    }
}
