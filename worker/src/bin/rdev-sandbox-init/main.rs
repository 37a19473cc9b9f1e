//! `rdev-sandbox-init`: process 1 of a command's sandbox.
//!
//! The worker starts every local command as
//! `bwrap … --as-pid-1 -- rdev-sandbox-init STATUS_FD STDERR_FD [--tty FD] -- PROGRAM ARGS…`.
//! bubblewrap's own init reports only an exit code (a signal becomes
//! `128 + n`, indistinguishable from `exit 137`) and waits for every process
//! of the sandbox before it ends. This one:
//!
//! - runs the command as its only direct child, in a session and process
//!   group of its own, with `STDERR_FD` as its standard error (bubblewrap's
//!   own diagnostics stay on the init's standard error, which the worker
//!   reads separately);
//! - reaps every orphan of the sandbox;
//! - when the command's main process ends, writes one line to `STATUS_FD`
//!   (`exited N`, `signaled N`) and exits: the kernel then kills every
//!   process left in the PID namespace, so nothing a command started
//!   (`setsid`, double forks) outlives it;
//! - forwards signals: `SIGTERM` to every process of the sandbox (the
//!   worker's timeout and cancel), other forwarded signals to the command's
//!   process group, and `SIGPWR` as a request to SIGKILL that group (a
//!   client's `KILL`: the init itself cannot catch SIGKILL);
//! - with `--tty FD`, makes that terminal (the slave of a pseudo-terminal
//!   the worker opened) the command's controlling terminal and its
//!   standard input, output and error;
//! - writes `exec-failed ERRNO` when the program cannot be started.
//!
//! `… rdev-sandbox-init STATUS_FD STDERR_FD --wait GO_FD COMMAND_FD` is a
//! sandbox made ready before its command is known (the worker's warm
//! sandboxes): the init sets itself up, writes `waiting` to `STATUS_FD`
//! (bubblewrap has made every mount by then: the worker counts the sandbox
//! as ready only after this line), then blocks reading `GO_FD`. One
//! byte there means the command is in `COMMAND_FD` (a memfd: NUL-terminated
//! fields, the argument count, the arguments, then the environment as
//! `NAME=value`), and it runs as above with exactly that environment;
//! end-of-file without a byte means the sandbox is not needed and the init
//! exits 0 without running anything. Each sandbox runs one command.
//!
//! The command gets its standard streams and no other descriptor: every
//! descriptor from 3 up is close-on-exec before it runs (`close_range`),
//! so none that the worker, the launcher or bubblewrap inherited from
//! their parents reaches it.
//!
//! It makes itself non-dumpable, so the command (same user) cannot open its
//! `/proc/1/fd` to write a status line of its own or read its environment.
//! It uses nothing but the C library: it has to run in any sandbox.
//!
//! `rdev-sandbox-init --launch …` is its other job, outside the sandbox:
//! the step between the worker and bubblewrap (`launch.rs`).

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::process::exit;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, kill, sigaction, sigprocmask,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, dup2_stderr, execvp, fork, setsid};

/// Signals the init handles; everything else keeps its default.
const HANDLED: [Signal; 10] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGPWR,
];

/// Exit code when the init itself is misused.
const USAGE: i32 = 125;

extern "C" fn ignore(_: nix::libc::c_int) {}

/// What the worker asked for on the command line.
struct Invocation {
    /// Where the one status line goes.
    status_fd: RawFd,
    /// The command's standard error.
    stderr_fd: RawFd,
    /// The command's terminal (`--tty FD`).
    tty: Option<RawFd>,
    /// The program and its arguments, or where they will come from.
    command: Command,
}

/// Where the command comes from.
enum Command {
    /// The command line (`-- PROGRAM ARGS…`).
    Now(Vec<CString>),
    /// `--wait GO_FD COMMAND_FD`.
    Wait { go: RawFd, command: RawFd },
}

mod launch;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a.as_bytes()) == Some(b"--launch") {
        launch::main(&args[2..]);
    }
    let Invocation {
        status_fd,
        stderr_fd,
        tty,
        command,
    } = parse_args();
    let waits = match command {
        Command::Now(_) => None,
        Command::Wait { go, command } => Some([go, command]),
    };

    // The command gets its standard streams and nothing else: every other
    // descriptor this process has (its own, and any the worker, the
    // launcher or bubblewrap inherited from their parents) closes at the
    // command's exec.
    close_on_exec_from(3);
    // Nothing of ours is inherited by the command: the status and stderr fds
    // are closed on exec (stderr is dup'ed onto 2 first).
    for fd in [status_fd, stderr_fd]
        .into_iter()
        .chain(tty)
        .chain(waits.into_iter().flatten())
    {
        if fcntl(borrow(fd), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).is_err() {
            usage();
        }
    }
    // SAFETY: prctl(PR_SET_DUMPABLE) only changes this process's flags.
    unsafe { nix::libc::prctl(nix::libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };

    // Blocked before a warm sandbox waits: a signal the worker sends once
    // it has handed over the command stays pending until the command runs.
    let (set, previous) = block_handled_signals();
    let argv = match command {
        Command::Now(argv) => argv,
        Command::Wait { go, command } => {
            report(status_fd, "waiting");
            receive(go, command)
        }
    };

    // SAFETY: this process is single-threaded; the child only calls
    // async-signal-safe functions before exec.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => run_command(&argv, stderr_fd, status_fd, tty, &previous),
        Ok(ForkResult::Parent { child }) => {
            // Only the command holds the terminal: when its last process
            // ends, the worker reads end-of-file from the other side.
            if let Some(fd) = tty {
                let _ = nix::unistd::close(fd);
            }
            child
        }
        Err(e) => {
            report(status_fd, &format!("exec-failed {}", e as i32));
            exit(USAGE);
        }
    };
    supervise(child, status_fd, &set)
}

/// Marks every descriptor from `first` up close-on-exec: one
/// `close_range` call, or on a kernel without its `CLOSE_RANGE_CLOEXEC`
/// (before 5.11), each descriptor listed in `/proc/self/fd`. Exits
/// ([`usage`]) when neither works: the command must not run with
/// descriptors it was not given.
fn close_on_exec_from(first: RawFd) {
    let first = nix::libc::c_uint::try_from(first).unwrap_or_else(|_| usage());
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on this
    // process's descriptors.
    let done = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first,
            nix::libc::c_uint::MAX,
            nix::libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        usage();
    };
    let open: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if u32::try_from(fd).is_ok_and(|fd| fd >= first) {
            // The listing's own descriptor is closed by now (EBADF).
            let _ = fcntl(borrow(fd), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        }
    }
}

/// `STATUS_FD STDERR_FD [--tty FD] -- PROGRAM ARGS…` or
/// `STATUS_FD STDERR_FD --wait GO_FD COMMAND_FD`, or [`usage`].
fn parse_args() -> Invocation {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let parse_fd = |i: usize| -> RawFd {
        args.get(i)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse().ok())
            .filter(|fd: &RawFd| *fd > 2)
            .unwrap_or_else(|| usage())
    };
    let status_fd = parse_fd(1);
    let stderr_fd = parse_fd(2);
    if args.get(3).map(|a| a.as_bytes()) == Some(b"--wait") {
        if args.len() != 6 {
            usage();
        }
        return Invocation {
            status_fd,
            stderr_fd,
            tty: None,
            command: Command::Wait {
                go: parse_fd(4),
                command: parse_fd(5),
            },
        };
    }
    let (tty, rest) = if args.get(3).map(|a| a.as_bytes()) == Some(b"--tty") {
        (Some(parse_fd(4)), 5)
    } else {
        (None, 3)
    };
    if args.get(rest).map(|a| a.as_bytes()) != Some(b"--") || args.len() < rest + 2 {
        usage();
    }
    let argv: Vec<CString> = args[rest + 1..]
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_else(|_| usage()))
        .collect();
    Invocation {
        status_fd,
        stderr_fd,
        tty,
        command: Command::Now(argv),
    }
}

/// A warm sandbox's wait: blocks until the worker writes the go byte (or
/// exits 0 at end-of-file: the sandbox was discarded), then reads the
/// command from the memfd, makes its environment this process's (the only
/// one: bwrap cleared it), and returns its arguments.
fn receive(go: RawFd, command: RawFd) -> Vec<CString> {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(borrow(go), &mut byte) {
            Ok(1) => break,
            Ok(_) => exit(0),
            Err(Errno::EINTR) => {}
            Err(_) => usage(),
        }
    }
    // SAFETY: COMMAND_FD was handed to this process for this read only;
    // the File closes it.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(command) };
    let mut message = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let offset = u64::try_from(message.len()).unwrap_or_else(|_| usage());
        match std::os::unix::fs::FileExt::read_at(&file, &mut chunk, offset) {
            Ok(0) => break,
            Ok(n) => message.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => usage(),
        }
    }
    drop(file);
    let _ = nix::unistd::close(go);
    let mut fields = message
        .split(|b| *b == 0)
        .map(|f| CString::new(f).unwrap_or_else(|_| usage()));
    let argc: usize = fields
        .next()
        .and_then(|c| c.to_str().ok().and_then(|c| c.parse().ok()))
        .unwrap_or_else(|| usage());
    let argv: Vec<CString> = fields.by_ref().take(argc).collect();
    if argv.len() != argc || argc == 0 {
        usage();
    }
    // The message ends with a NUL, so the split's last field is empty.
    for var in fields.filter(|f| !f.is_empty()) {
        let bytes = var.as_bytes();
        let Some(eq) = bytes.iter().position(|b| *b == b'=') else {
            usage();
        };
        let (name, value) = (&bytes[..eq], &bytes[eq + 1..]);
        // SAFETY: this process is single-threaded.
        unsafe {
            std::env::set_var(
                std::ffi::OsStr::from_bytes(name),
                std::ffi::OsStr::from_bytes(value),
            );
        }
    }
    argv
}

/// Blocks the handled signals, to wait for them synchronously; returns
/// them and the mask before. A real handler (not SIG_DFL) is needed as
/// well: the kernel drops signals with default disposition that are sent
/// to a PID namespace's init.
fn block_handled_signals() -> (SigSet, SigSet) {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    let mut previous = SigSet::empty();
    if sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous)).is_err() {
        usage();
    }
    let noop = SigAction::new(
        SigHandler::Handler(ignore),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in HANDLED {
        // SAFETY: the handler does nothing; no state is shared with it.
        let _ = unsafe { sigaction(s, &noop) };
    }
    (set, previous)
}

/// Waits for the handled signals: reaps children (and exits with the
/// command, [`reap`]) and forwards the others.
fn supervise(child: Pid, status_fd: RawFd, set: &SigSet) -> ! {
    loop {
        let Ok(signal) = set.wait() else { continue };
        match signal {
            Signal::SIGCHLD => reap(child, status_fd),
            // The worker's timeout or cancel: everything in the sandbox.
            Signal::SIGTERM => {
                let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            }
            // A client's KILL.
            Signal::SIGPWR => {
                let _ = kill(Pid::from_raw(-child.as_raw()), Signal::SIGKILL);
            }
            // Interactive signals go to the command's process group (or,
            // before the command made its session, to the command itself).
            other => {
                if kill(Pid::from_raw(-child.as_raw()), other) == Err(Errno::ESRCH) {
                    let _ = kill(child, other);
                }
            }
        }
    }
}

/// `keyctl` operation: join a new (anonymous, with a null name) session
/// key ring.
const KEYCTL_JOIN_SESSION_KEYRING: nix::libc::c_long = 1;

/// In the forked child: become the leader of a new session (a fresh process
/// group; with `tty`, that terminal as its controlling terminal and
/// standard streams), restore signals, exec the program.
fn run_command(
    argv: &[CString],
    stderr_fd: RawFd,
    status_fd: RawFd,
    tty: Option<RawFd>,
    mask: &SigSet,
) -> ! {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SIGPIPE too: the Rust runtime ignores it in this process, and an
    // ignored signal stays ignored across exec (`yes | head` would then
    // print "Broken pipe" instead of ending quietly).
    for s in HANDLED.into_iter().chain([Signal::SIGPIPE]) {
        // SAFETY: restoring the default disposition.
        let _ = unsafe { sigaction(s, &default) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None);
    let _ = setsid();
    // A session key ring of its own: the one inherited is the worker's
    // (a service's or a container's), which every other command would
    // inherit too. Where key rings are refused (a seccomp filter), the
    // command cannot use one either.
    // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a null name takes no pointer.
    let _ = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<nix::libc::c_char>(),
        )
    };
    let ready = match tty {
        // SAFETY: TIOCSCTTY on a terminal fd of this process, a session
        // leader without a controlling terminal.
        Some(fd) => {
            (unsafe { nix::libc::ioctl(fd, nix::libc::TIOCSCTTY, 0) } == 0)
                && nix::unistd::dup2_stdin(borrow(fd)).is_ok()
                && nix::unistd::dup2_stdout(borrow(fd)).is_ok()
                && dup2_stderr(borrow(fd)).is_ok()
        }
        None => dup2_stderr(borrow(stderr_fd)).is_ok(),
    };
    if !ready {
        report(status_fd, &format!("exec-failed {}", Errno::last() as i32));
        // SAFETY: _exit is async-signal-safe and skips atexit handlers.
        unsafe { nix::libc::_exit(127) };
    }
    let err = execvp(&argv[0], argv).unwrap_err();
    report(status_fd, &format!("exec-failed {}", err as i32));
    // SAFETY: as above.
    unsafe { nix::libc::_exit(127) }
}

/// Reaps every child that ended; when the command's main process is among
/// them, reports how it ended and exits (ending the PID namespace).
fn reap(main: Pid, status_fd: RawFd) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => {
                report(status_fd, &format!("exited {code}"));
                exit(code);
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => {
                report(status_fd, &format!("signaled {}", signal as i32));
                exit(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn report(fd: RawFd, line: &str) {
    let line = format!("{line}\n");
    let _ = nix::unistd::write(borrow(fd), line.as_bytes());
}

fn borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the fds were handed to this process and stay open for its life.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn usage() -> ! {
    eprintln!(
        "usage: rdev-sandbox-init STATUS_FD STDERR_FD [--tty FD] -- PROGRAM [ARGS...]\n       \
         rdev-sandbox-init STATUS_FD STDERR_FD --wait GO_FD COMMAND_FD"
    );
    exit(USAGE)
}
