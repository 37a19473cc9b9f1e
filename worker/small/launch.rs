//! `--launch`: the step between the worker and bubblewrap, exactly as
//! `rdev-sandbox-init --launch` (that binary's `launch.rs` says why it
//! exists):
//!
//! `--launch [--join FD]… [--rlimit RES:SOFT:HARD]… [--user UID:GID] [--arg0 NAME] --parent PID -- PROGRAM ARGS…`
//!
//! joins the command's cgroups, sets the rlimits, drops root, dies with the
//! worker, then executes PROGRAM with every descriptor it was given. A
//! failure is one line on standard error and exit 125.

use crate::Args;
use crate::sys::{self, nr};

/// Exit code when the launch fails.
const FAILED: usize = 125;
/// At most this many `--join` and `--rlimit` options (the worker passes two
/// and at most eight).
const MAX_JOIN: usize = 8;
const MAX_RLIMITS: usize = 16;

const PR_SET_PDEATHSIG: usize = 1;

#[repr(C)]
struct Rlimit {
    soft: u64,
    hard: u64,
}

/// One line on standard error, `rdev-sandbox-init --launch: WHAT SUBJECT[:
/// ERROR]`, then exit 125.
fn fail(what: &[u8], subject: &[u8], result: isize) -> ! {
    sys::write_all(2, b"rdev-sandbox-init --launch: ");
    sys::write_all(2, what);
    sys::write_all(2, subject);
    if result < 0 {
        sys::write_all(2, b": ");
        sys::write_all(2, sys::error_text(-result));
    }
    sys::write_all(2, b"\n");
    sys::exit(FAILED)
}

/// A number no larger than `max`.
fn bounded(s: &[u8], what: &[u8], max: u32) -> usize {
    match sys::number(s) {
        Some(v) if v <= u64::from(max) => v as usize,
        Some(_) => fail(what, b": too large", 0),
        None => fail(what, b": not a number", 0),
    }
}

fn split(s: &[u8], at: u8) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&c| c == at) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

pub fn main(args: &Args) -> ! {
    let mut join = [0usize; MAX_JOIN];
    let mut joins = 0;
    let mut rlimits = [(0usize, 0u64, 0u64); MAX_RLIMITS];
    let mut nrlimits = 0;
    let mut user: Option<(usize, usize)> = None;
    let mut parent = 0usize;
    let mut arg0: Option<*const u8> = None;
    let mut program_at = 0usize;
    let value = |i: usize, what: &[u8]| -> &'static [u8] {
        if i >= args.argc {
            fail(what, b" needs a value", 0);
        }
        args.get(i)
    };
    let mut i = 2;
    while i < args.argc {
        match args.get(i) {
            b"--join" => {
                if joins == MAX_JOIN {
                    fail(b"--join: too many", b"", 0);
                }
                join[joins] = bounded(value(i + 1, b"--join"), b"--join", i32::MAX as u32);
                joins += 1;
            }
            b"--rlimit" => {
                if nrlimits == MAX_RLIMITS {
                    fail(b"--rlimit: too many", b"", 0);
                }
                let v = value(i + 1, b"--rlimit");
                let (res, rest) = split(v, b':');
                let Some((soft, Some(hard))) = rest.map(|r| split(r, b':')) else {
                    fail(b"--rlimit RES:SOFT:HARD, not ", v, 0);
                };
                let number =
                    |s| sys::number(s).unwrap_or_else(|| fail(b"--rlimit", b": not a number", 0));
                rlimits[nrlimits] = (
                    bounded(res, b"--rlimit", u32::MAX),
                    number(soft),
                    number(hard),
                );
                nrlimits += 1;
            }
            b"--user" => {
                let v = value(i + 1, b"--user");
                let (uid, gid) = split(v, b':');
                let Some(gid) = gid else {
                    fail(b"--user UID:GID, not ", v, 0);
                };
                user = Some((
                    bounded(uid, b"--user", u32::MAX),
                    bounded(gid, b"--user", u32::MAX),
                ));
            }
            b"--parent" => {
                parent = bounded(value(i + 1, b"--parent"), b"--parent", i32::MAX as u32);
            }
            b"--arg0" => {
                value(i + 1, b"--arg0");
                // SAFETY: i + 1 < argc.
                arg0 = Some(unsafe { *args.argv.add(i + 1) });
            }
            b"--" => {
                program_at = i + 1;
                break;
            }
            other => fail(b"unknown argument ", other, 0),
        }
        i += 2;
    }
    if program_at == 0 || program_at >= args.argc {
        fail(b"no program after --", b"", 0);
    }
    if parent <= 1 {
        fail(b"--parent PID is required", b"", 0);
    }

    for &fd in &join[..joins] {
        // SAFETY: a one-byte buffer we own.
        let n = unsafe { sys::call4(nr::WRITE, fd, b"0".as_ptr() as usize, 1, 0) };
        if n != 1 {
            fail(b"joining the command's cgroup", b"", n.min(0));
        }
        sys::close(fd);
    }
    for &(resource, soft, hard) in &rlimits[..nrlimits] {
        let limit = Rlimit { soft, hard };
        // SAFETY: prlimit64 on ourselves (pid 0) reads the struct we own
        // and writes nothing (old limit: null).
        let r = unsafe { sys::call4(nr::PRLIMIT64, 0, resource, &raw const limit as usize, 0) };
        if r != 0 {
            fail(b"setrlimit", b"", r);
        }
    }
    if let Some((uid, gid)) = user {
        let groups = [gid as u32];
        // SAFETY: one gid in a buffer we own; setgid and setuid take ids.
        // Raw calls are exact here: this process has one thread.
        let r = unsafe {
            let mut r = sys::call4(nr::SETGROUPS, 1, groups.as_ptr() as usize, 0, 0);
            if r == 0 {
                r = sys::call4(nr::SETGID, gid, 0, 0, 0);
            }
            if r == 0 {
                r = sys::call4(nr::SETUID, uid, 0, 0, 0);
            }
            r
        };
        if r != 0 {
            fail(b"dropping root", b"", r);
        }
    }
    // After setuid, which clears it.
    // SAFETY: sets a flag of this process.
    let r = unsafe { sys::call4(nr::PRCTL, PR_SET_PDEATHSIG, sys::SIGKILL, 0, 0) };
    if r != 0 {
        fail(b"PR_SET_PDEATHSIG", b"", r);
    }
    // The worker may have died before the flag was set: then nobody would
    // ever stop what we start.
    // SAFETY: no arguments.
    if unsafe { sys::call4(nr::GETPPID, 0, 0, 0, 0) } as usize != parent {
        fail(b"the worker is gone", b"", 0);
    }
    let program = args.get(program_at);
    // SAFETY: program_at < argc, so argv[program_at..] is the program and
    // its arguments, ending with the kernel's null; its first entry may be
    // replaced by another NUL-terminated string of the block.
    let r = unsafe {
        let exec_argv = args.argv.add(program_at);
        let path = *exec_argv;
        if let Some(name) = arg0 {
            *exec_argv = name;
        }
        sys::call4(
            nr::EXECVE,
            path as usize,
            exec_argv as usize,
            args.envp as usize,
            0,
        )
    };
    fail(b"cannot run ", program, r)
}
