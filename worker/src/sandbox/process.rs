//! What happens between the fork and the exec of a command's first process
//! (bubblewrap, or the command itself when the sandbox is off): joining the
//! command's cgroup, resource limits, dropping root, and dying with the
//! worker. Only async-signal-safe calls, on data prepared before the fork.
//! Also who commands run as ([`resolve_run_as`], at start).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

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

/// Serialises every process start of the worker. A launch clears the
/// close-on-exec flag of the descriptors its child must inherit for the
/// moment of the spawn; any other process started in that moment would
/// inherit them too (another command would get this one's secret files).
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `spawn` (a process start) while no launch has descriptors open to
/// inheritance. Every process the worker starts goes through here or
/// [`Launcher::spawn`], and so must every process started by anything that
/// shares a process with a worker (the tests run it in-process:
/// `rdev_tests::spawn`). A process started past it during a launch holds
/// that command's pipes open for its whole life: the command's output ends
/// only when it exits (or after the worker's drain limit), and the probe
/// reads its report late.
pub fn spawn_exclusive<T>(spawn: impl FnOnce() -> T) -> T {
    let _only = SPAWNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    spawn()
}

/// A command started through `rdev-sandbox-init --launch`, which applies a
/// [`ChildSetup`] and then executes the program (see that binary's
/// `launch.rs` for why: the worker starts it with `posix_spawn` instead of
/// forking itself).
pub struct Launcher {
    /// `LAUNCHER --launch … -- PROGRAM`; add the program's arguments,
    /// environment, directory and standard streams, but no `pre_exec`.
    pub cmd: tokio::process::Command,
    /// Descriptors the launched program inherits: their close-on-exec flag
    /// is cleared only while the child is created.
    inherit: Vec<RawFd>,
    /// Duplicates of the `cgroup.procs` descriptors (the originals stay
    /// with the cgroup, close-on-exec).
    _join: Vec<OwnedFd>,
}

impl ChildSetup {
    /// The command that starts `program` with this set-up applied by
    /// `launcher --launch`. `terminal_session` is not supported there (a
    /// terminal is the sandbox's business).
    /// `arg0`, when set, is the program's `argv[0]` (the name it was looked
    /// up by), else the program as named. `launcher` is the small init the
    /// worker carries (see `small`) or `rdev-sandbox-init`.
    pub fn launcher(
        self,
        launcher: &Path,
        program: &Path,
        arg0: Option<&std::ffi::OsStr>,
    ) -> io::Result<Launcher> {
        let join = self
            .join
            .iter()
            .map(|&fd| {
                let dup =
                    fcntl(borrow(fd), FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(io::Error::from)?;
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor we own.
                Ok(unsafe { OwnedFd::from_raw_fd(dup) })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut cmd = tokio::process::Command::new(launcher);
        cmd.arg("--launch");
        for fd in &join {
            cmd.arg("--join").arg(fd.as_raw_fd().to_string());
        }
        for &(resource, soft, hard) in &self.rlimits {
            cmd.arg("--rlimit")
                .arg(format!("{}:{soft}:{hard}", resource as u32));
        }
        if let Some(user) = &self.run_as {
            cmd.arg("--user").arg(format!("{}:{}", user.uid, user.gid));
        }
        if let Some(name) = arg0 {
            cmd.arg("--arg0").arg(name);
        }
        cmd.arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--")
            .arg(on_path(program));
        let mut inherit = self.keep;
        inherit.extend(join.iter().map(AsRawFd::as_raw_fd));
        Ok(Launcher {
            cmd,
            inherit,
            _join: join,
        })
    }
}

/// `program` as the launcher must name it: it executes without searching
/// `PATH` (and runs with an empty environment), so a bare name is looked
/// up here, in the worker's `PATH`. Unfound, it stays as it is (the
/// launcher then reports that it cannot run it).
fn on_path(program: &Path) -> PathBuf {
    search_path(program, std::env::var_os("PATH").as_deref()).unwrap_or_else(|| program.to_owned())
}

/// `program` as `execvp` would find it in `path`: a name with a `/` as it
/// is, a bare name in the first directory holding an executable file of
/// that name; `None` when there is none.
pub fn search_path(program: &Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.components().count() != 1 {
        return Some(program.to_owned());
    }
    path.into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

impl Launcher {
    /// Starts the launcher (by `posix_spawn`: nothing runs between fork
    /// and exec in the worker). The inherited descriptors are open to
    /// inheritance only inside the exclusive section.
    pub fn spawn(mut self) -> io::Result<tokio::process::Child> {
        spawn_exclusive(|| {
            let set = |flag: FdFlag| -> io::Result<()> {
                for &fd in &self.inherit {
                    fcntl(borrow(fd), FcntlArg::F_SETFD(flag)).map_err(io::Error::from)?;
                }
                Ok(())
            };
            let started = set(FdFlag::empty()).and_then(|()| self.cmd.spawn());
            // Back to close-on-exec whatever happened, before anyone else
            // may start a process.
            let restored = set(FdFlag::FD_CLOEXEC);
            let child = started?;
            restored?;
            Ok(child)
        })
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

    /// The launcher applies the set-up and runs the program with exactly
    /// the descriptors it was given; in the worker they are close-on-exec
    /// again as soon as the launch is done. Both launchers: the small one
    /// the worker carries and `rdev-sandbox-init --launch`.
    #[tokio::test]
    async fn a_launch_applies_the_setup_and_passes_only_its_descriptors() {
        let init = super::super::init::locate(None).expect("rdev-sandbox-init is built");
        let small = super::super::small::launcher().expect("the small launcher runs here");
        launch_applies_the_setup(small).await;
        launch_applies_the_setup(&init).await;
    }

    async fn launch_applies_the_setup(launcher: &Path) {
        use std::io::Read;
        use std::os::fd::AsFd;

        let (mut r, w) = std::io::pipe().expect("pipe");
        let (mut other_r, other_w) = std::io::pipe().expect("pipe");
        let root = nix::unistd::geteuid().is_root();
        let setup = ChildSetup {
            keep: vec![w.as_raw_fd()],
            rlimits: vec![(Resource::RLIMIT_NOFILE, 64, 64)],
            run_as: root.then(|| RunAs {
                uid: Uid::from_raw(65534),
                gid: Gid::from_raw(65534),
                name: "nobody".into(),
            }),
            ..ChildSetup::default()
        };
        let mut launch = setup
            // bash: dash takes only one-digit descriptors in `>&N`.
            .launcher(launcher, Path::new("/bin/bash"), None)
            .expect("launcher");
        let script = format!(
            "echo passed >&{w}; (echo leaked >&{o}) 2>/dev/null; ulimit -n; id -u",
            w = w.as_raw_fd(),
            o = other_w.as_raw_fd()
        );
        launch
            .cmd
            .arg("-c")
            .arg(script)
            .env_clear()
            .stdout(std::process::Stdio::piped());
        let child = launch.spawn().expect("spawn");
        let flags = fcntl(w.as_fd(), FcntlArg::F_GETFD).expect("flags");
        assert!(
            FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC),
            "close-on-exec again in the worker"
        );
        let out = child.wait_with_output().await.expect("wait");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        let uid = if root {
            "65534".to_owned()
        } else {
            nix::unistd::geteuid().to_string()
        };
        assert_eq!(
            lines,
            ["64", uid.as_str()],
            "{}: {stdout}",
            launcher.display()
        );
        drop(w);
        let mut got = String::new();
        r.read_to_string(&mut got).expect("read");
        assert_eq!(got, "passed\n");
        drop(other_w);
        let mut leaked = String::new();
        other_r.read_to_string(&mut leaked).expect("read");
        assert_eq!(leaked, "", "a descriptor it was not given reached it");
    }

    /// Both launchers fail the same way: one line naming what they could
    /// not run, exit 125.
    #[tokio::test]
    async fn a_launch_that_cannot_run_its_program_says_so() {
        let init = super::super::init::locate(None).expect("rdev-sandbox-init is built");
        let small = super::super::small::launcher().expect("the small launcher runs here");
        for launcher in [small, init.as_path()] {
            let mut launch = ChildSetup::default()
                .launcher(launcher, Path::new("/no/such/program"), None)
                .expect("launcher");
            launch.cmd.env_clear().stderr(std::process::Stdio::piped());
            let out = launch
                .spawn()
                .expect("spawn")
                .wait_with_output()
                .await
                .expect("wait");
            assert_eq!(out.status.code(), Some(125), "{}", launcher.display());
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                "rdev-sandbox-init --launch: cannot run /no/such/program: \
                 ENOENT: No such file or directory\n",
                "{}",
                launcher.display()
            );
        }
    }

    #[test]
    fn bare_program_names_are_found_on_the_path() {
        assert!(on_path(Path::new("sh")).is_absolute());
        assert_eq!(on_path(Path::new("./x")), Path::new("./x"));
        assert_eq!(
            on_path(Path::new("no-such-program-here")),
            Path::new("no-such-program-here")
        );
    }

    #[test]
    fn every_process_start_is_exclusive() {
        let held = SPAWNING.lock().expect("lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || spawn_exclusive(|| tx.send(()).expect("send")));
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "a start ran while a launch held its descriptors open"
        );
        drop(held);
        rx.recv().expect("runs once the launch is done");
        t.join().expect("thread");
    }
}
