//! `rdev-sandbox-init --launch`: the step between the worker and bubblewrap.
//!
//! The worker used to prepare bubblewrap's process in a `pre_exec` hook,
//! which makes the standard library `fork()` the whole worker: copying its
//! page tables, then faulting and unmapping them again at exec, cost about
//! 4 ms of CPU per command (docs/BENCHMARKS.md, "Where a command's
//! milliseconds go"). Without a hook the worker starts this small program
//! with `posix_spawn` (no copy of the worker's memory), and this program
//! does what the hook did, in the same order, then executes bubblewrap:
//!
//! `--launch [--join FD]… [--rlimit RES:SOFT:HARD]… [--user UID:GID] --parent PID -- PROGRAM ARGS…`
//!
//! - `--join FD`: writes `0` to a `cgroup.procs` descriptor (joins the
//!   command's cgroup, so every process of the sandbox is in it), then
//!   closes it;
//! - `--rlimit`: `setrlimit(RES, SOFT, HARD)` (RES is the C constant);
//! - `--user`: drops root for good (`setgroups`, `setgid`, `setuid`);
//! - `--parent PID`: dies with the worker (`PR_SET_PDEATHSIG`), and exits
//!   at once if the worker is already gone;
//! - `--arg0 NAME`: the name PROGRAM is given as its `argv[0]` (default:
//!   PROGRAM as written), as a shell or `execvp` would pass the name a
//!   command was looked up by.
//!
//! Every other descriptor it inherited passes on to PROGRAM unchanged (the
//! worker opened them for bubblewrap). A failure is one line on standard
//! error (the worker reads it as the sandbox's diagnostics) and exit 125.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::process::exit;

use nix::unistd::{Gid, Uid, execv, getppid, setgid, setgroups, setuid};

/// Exit code when the launch fails.
const FAILED: i32 = 125;

/// What `--launch` was asked to do.
#[derive(Debug, Default, PartialEq, Eq)]
struct Launch {
    join: Vec<RawFd>,
    rlimits: Vec<(u32, u64, u64)>,
    user: Option<(u32, u32)>,
    parent: i32,
    arg0: Option<CString>,
    argv: Vec<CString>,
}

/// Runs the launch described by `args` (everything after `--launch`).
pub fn main(args: &[std::ffi::OsString]) -> ! {
    let launch = parse(args).unwrap_or_else(|e| fail(&e));
    for &fd in &launch.join {
        nix::unistd::write(crate::borrow(fd), b"0")
            .unwrap_or_else(|e| fail(&format!("joining the command's cgroup: {e}")));
        let _ = nix::unistd::close(fd);
    }
    for &(resource, soft, hard) in &launch.rlimits {
        let limit = nix::libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct we own; the resource number
        // came from the worker, which took it from the C library's names.
        if unsafe { nix::libc::setrlimit(resource as _, &limit) } != 0 {
            fail(&format!(
                "setrlimit({resource}): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some((uid, gid)) = launch.user {
        let gid = Gid::from_raw(gid);
        setgroups(&[gid])
            .and_then(|()| setgid(gid))
            .and_then(|()| setuid(Uid::from_raw(uid)))
            .unwrap_or_else(|e| fail(&format!("dropping root to {uid}:{gid}: {e}")));
    }
    // After setuid, which clears it.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of this process.
    if unsafe { nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) } != 0 {
        fail(&format!(
            "PR_SET_PDEATHSIG: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The worker may have died before the flag was set: then nobody
    // would ever stop what we start.
    if getppid().as_raw() != launch.parent {
        fail("the worker is gone");
    }
    let program = launch.argv[0].clone();
    let mut argv = launch.argv;
    if let Some(name) = launch.arg0 {
        argv[0] = name;
    }
    let Err(e) = execv(&program, &argv);
    fail(&format!("cannot run {}: {e}", program.to_string_lossy()))
}

fn parse(args: &[std::ffi::OsString]) -> Result<Launch, String> {
    let mut launch = Launch::default();
    let mut it = args.iter();
    let value = |a: Option<&std::ffi::OsString>, what: &str| -> Result<String, String> {
        a.and_then(|a| a.to_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("{what} needs a value"))
    };
    let number = |s: &str, what: &str| -> Result<u64, String> {
        s.parse::<u64>()
            .map_err(|_| format!("{what}: not a number: {s}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_bytes() {
            b"--join" => {
                let fd = number(&value(it.next(), "--join")?, "--join")?;
                launch
                    .join
                    .push(RawFd::try_from(fd).map_err(|_| "--join: too large".to_owned())?);
            }
            b"--rlimit" => {
                let v = value(it.next(), "--rlimit")?;
                let parts: Vec<&str> = v.split(':').collect();
                let [res, soft, hard] = parts[..] else {
                    return Err(format!("--rlimit RES:SOFT:HARD, not {v}"));
                };
                let res = u32::try_from(number(res, "--rlimit")?)
                    .map_err(|_| "--rlimit: resource too large".to_owned())?;
                launch
                    .rlimits
                    .push((res, number(soft, "--rlimit")?, number(hard, "--rlimit")?));
            }
            b"--user" => {
                let v = value(it.next(), "--user")?;
                let (uid, gid) = v
                    .split_once(':')
                    .ok_or_else(|| format!("--user UID:GID, not {v}"))?;
                let id = |s: &str| {
                    u32::try_from(number(s, "--user")?).map_err(|_| "--user: too large".to_owned())
                };
                launch.user = Some((id(uid)?, id(gid)?));
            }
            b"--parent" => {
                let pid = number(&value(it.next(), "--parent")?, "--parent")?;
                launch.parent = i32::try_from(pid).map_err(|_| "--parent: too large".to_owned())?;
            }
            b"--arg0" => {
                let name = value(it.next(), "--arg0")?;
                launch.arg0 =
                    Some(CString::new(name).map_err(|_| "a NUL byte in --arg0".to_owned())?);
            }
            b"--" => {
                launch.argv = it
                    .by_ref()
                    .map(|a| {
                        CString::new(a.as_bytes())
                            .map_err(|_| "a NUL byte in an argument".to_owned())
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => {
                return Err(format!(
                    "unknown argument {}",
                    String::from_utf8_lossy(other)
                ));
            }
        }
    }
    if launch.argv.is_empty() {
        return Err("no program after --".into());
    }
    if launch.parent <= 1 {
        return Err("--parent PID is required".into());
    }
    Ok(launch)
}

fn fail(what: &str) -> ! {
    eprintln!("rdev-sandbox-init --launch: {what}");
    exit(FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<std::ffi::OsString> {
        s.iter().map(Into::into).collect()
    }

    #[test]
    fn parses_what_the_worker_passes() {
        let l = parse(&args(&[
            "--join",
            "7",
            "--rlimit",
            "4:0:0",
            "--rlimit",
            "1:10:15",
            "--user",
            "65534:65534",
            "--parent",
            "4242",
            "--arg0",
            "bwrap",
            "--",
            "/usr/bin/bwrap",
            "--args",
            "5",
        ]))
        .expect("parse");
        assert_eq!(l.arg0.as_deref(), Some(c"bwrap"));
        assert_eq!(l.join, vec![7]);
        assert_eq!(l.rlimits, vec![(4, 0, 0), (1, 10, 15)]);
        assert_eq!(l.user, Some((65534, 65534)));
        assert_eq!(l.parent, 4242);
        assert_eq!(l.argv.len(), 3);
    }

    #[test]
    fn refuses_what_it_cannot_do_exactly() {
        for bad in [
            &["--parent", "10"][..],
            &["--", "x"],
            &["--parent", "1", "--", "x"],
            &["--rlimit", "4:0", "--parent", "10", "--", "x"],
            &["--user", "1", "--parent", "10", "--", "x"],
            &["--join", "x", "--parent", "10", "--", "x"],
            &["--bogus", "--parent", "10", "--", "x"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
