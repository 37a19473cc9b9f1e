//! Process 1 of a command's sandbox, exactly as `rdev-sandbox-init`'s
//! `main.rs` (which says what each step is for):
//!
//! `STATUS_FD STDERR_FD [--tty FD] -- PROGRAM ARGS…`,
//! `STATUS_FD STDERR_FD --wait GO_FD COMMAND_FD` or
//! `STATUS_FD STDERR_FD --serve SOCKET_FD`.
//!
//! Every descriptor from 3 up is made close-on-exec; the init makes itself
//! non-dumpable, blocks the signals it handles (with a handler, so the
//! kernel does not drop them at a namespace's init), waits for a warm
//! sandbox's command if asked, forks the command into a session of its own
//! (the terminal as its controlling terminal, or `STDERR_FD` as its
//! standard error), then reaps every process, forwards signals, and when
//! the command's main process ends writes `exited N` or `signaled N` to
//! `STATUS_FD` and exits with it. `exec-failed ERRNO` when the program
//! cannot be run.
//!
//! `--serve` runs one command after another, each sent by the worker over
//! `SOCKET_FD` (a `SOCK_SEQPACKET` socket): one byte with five descriptors
//! (the command's memfd, its status pipe, its standard input, output and
//! error). When a command's main process ends, the init kills every other
//! process of the sandbox and reaps them before it reports on that
//! command's status pipe, so nothing of one command is left when the next
//! starts. It ends when the socket does, and after a command that left
//! System V IPC objects (they would outlive it in the sandbox's IPC
//! namespace): then its report starts with `ending`.

use crate::Args;
use crate::sys::errno::{
    EACCES, ECHILD, EINTR, ENAMETOOLONG, ENODEV, ENOENT, ENOEXEC, ENOTDIR, ESRCH, ESTALE, ETIMEDOUT,
};
use crate::sys::{self, SIGKILL, nr};

const USAGE: usize = 125;

const SIGHUP: usize = 1;
const SIGINT: usize = 2;
const SIGQUIT: usize = 3;
const SIGUSR1: usize = 10;
const SIGUSR2: usize = 12;
const SIGPIPE: usize = 13;
const SIGTERM: usize = 15;
const SIGCHLD: usize = 17;
const SIGCONT: usize = 18;
const SIGWINCH: usize = 28;
const SIGPWR: usize = 30;

/// Signals the init handles; everything else keeps its default.
const HANDLED: [usize; 10] = [
    SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT, SIGPWR,
];

const SIG_BLOCK: usize = 0;
const SIG_SETMASK: usize = 2;
const SA_RESTART: u64 = 0x1000_0000;
const SA_RESTORER: u64 = 0x0400_0000;
const F_SETFD: usize = 2;
const FD_CLOEXEC: usize = 1;
const PR_SET_DUMPABLE: usize = 4;
const CLOSE_RANGE_CLOEXEC: usize = 4;
const TIOCSCTTY: usize = 0x540E;
const WNOHANG: usize = 1;
const O_CLOEXEC: usize = 0o2_000_000;
const SEEK_END: usize = 2;
const KEYCTL_JOIN_SESSION_KEYRING: usize = 1;
const KEYCTL_CLEAR: usize = 7;
const KEY_SPEC_USER_KEYRING: isize = -4;
const KEY_SPEC_USER_SESSION_KEYRING: isize = -5;
const MSG_CMSG_CLOEXEC: usize = 0x4000_0000;
const MSG_CTRUNC: i32 = 8;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
/// The descriptors of one served command: its memfd, status pipe, standard
/// input, output and error.
const SERVED_FDS: usize = 5;
/// Longest path the `PATH` search builds.
const PATH_MAX: usize = 4096;

/// The kernel's `struct sigaction`.
#[repr(C)]
struct SigAction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

// Where a handler returns to (the kernel requires one with SA_RESTORER).
core::arch::global_asm!(
    ".globl rdev_restore_rt",
    "rdev_restore_rt:",
    "mov eax, {n}",
    "syscall",
    n = const nr::RT_SIGRETURN,
);

unsafe extern "C" {
    fn rdev_restore_rt();
}

extern "C" fn ignore(_: i32) {}

fn bit(signal: usize) -> u64 {
    1 << (signal - 1)
}

/// Where the command comes from.
enum Command {
    /// The command line: its program is argument `at`.
    Now { at: usize },
    /// `--wait GO_FD COMMAND_FD`.
    Wait { go: usize, command: usize },
    /// `--serve SOCKET_FD`.
    Serve { socket: usize },
}

/// How the command's main process ended.
enum Ended {
    Exited(u64),
    Signaled(u64),
}

pub fn main(args: &Args) -> ! {
    let (status_fd, stderr_fd, tty, command) = parse(args);
    // The command gets its standard streams and nothing else.
    close_on_exec_from(3);
    let waits = match command {
        Command::Now { .. } => [None, None],
        Command::Wait { go, command } => [Some(go), Some(command)],
        Command::Serve { socket } => [Some(socket), None],
    };
    for fd in [Some(status_fd), Some(stderr_fd), tty]
        .into_iter()
        .chain(waits)
        .flatten()
    {
        // SAFETY: sets a flag of a descriptor number.
        if unsafe { sys::call4(nr::FCNTL, fd, F_SETFD, FD_CLOEXEC, 0) } != 0 {
            usage();
        }
    }
    // SAFETY: changes only this process's flags.
    unsafe { sys::call4(nr::PRCTL, PR_SET_DUMPABLE, 0, 0, 0) };

    let (set, previous) = block_handled_signals();
    let (argv, envp) = match command {
        // SAFETY: at < argc: the program and its arguments, then the
        // kernel's null.
        Command::Now { at } => (unsafe { args.argv.add(at) } as *const *const u8, args.envp),
        Command::Wait { go, command } => {
            report(status_fd, b"waiting", None);
            wait_for_go(go);
            sys::close(go);
            let (argv, envp, _) = read_command(command);
            (argv, envp)
        }
        Command::Serve { socket } => {
            report(status_fd, b"waiting", None);
            sys::close(status_fd);
            sys::close(stderr_fd);
            serve(socket, set, previous)
        }
    };
    let child = sys::fork();
    if child == 0 {
        run_command(
            argv,
            envp,
            Streams::Stderr(stderr_fd),
            status_fd,
            tty,
            previous,
        );
    }
    if child < 0 {
        report(status_fd, b"exec-failed ", Some(-child as u64));
        sys::exit(USAGE);
    }
    // Only the command holds the terminal.
    if let Some(fd) = tty {
        sys::close(fd);
    }
    match supervise(child, set) {
        Ended::Exited(code) => {
            report(status_fd, b"exited ", Some(code));
            sys::exit(code as usize)
        }
        Ended::Signaled(signal) => {
            report(status_fd, b"signaled ", Some(signal));
            sys::exit(128 + signal as usize)
        }
    }
}

/// `--serve`: runs each command the worker sends, until the socket ends.
fn serve(socket: usize, set: u64, mask: u64) -> ! {
    loop {
        let job = next_job(socket);
        let [_, status, stdin, stdout, stderr] = job.fds;
        let child = sys::fork();
        if child == 0 {
            run_command(
                job.argv,
                job.envp,
                Streams::All([stdin, stdout, stderr]),
                status,
                None,
                mask,
            );
        }
        // Only the command holds its streams.
        for fd in [stdin, stdout, stderr] {
            sys::close(fd);
        }
        sys::free(job.memory.0, job.memory.1);
        sys::free(job.memory.2, job.memory.3);
        if child < 0 {
            report(status, b"exec-failed ", Some(-child as u64));
            sys::exit(USAGE);
        }
        let ended = supervise(child, set);
        end_everything(set);
        // Said before the end, so the worker never puts back a sandbox
        // whose init is about to exit.
        let reusable = ipc_empty();
        if !reusable {
            report(status, b"ending", None);
        }
        match ended {
            Ended::Exited(code) => report(status, b"exited ", Some(code)),
            Ended::Signaled(signal) => report(status, b"signaled ", Some(signal)),
        }
        sys::close(status);
        // The user's key rings belong to the sandbox's user namespace, so
        // to every command it serves: emptied, as `/tmp` is.
        for ring in [KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING] {
            // SAFETY: clears a key ring of this process's user.
            unsafe { sys::call4(nr::KEYCTL, KEYCTL_CLEAR, ring as usize, 0, 0) };
        }
        if !reusable {
            sys::exit(0);
        }
    }
}

/// A served command: its arguments and environment (null-terminated, in
/// [`Job::memory`]) and its descriptors.
struct Job {
    argv: *const *const u8,
    envp: *const *const u8,
    fds: [usize; SERVED_FDS],
    /// The two mappings that hold the command: (address, length) each.
    memory: (*mut u8, usize, *mut u8, usize),
}

/// `struct iovec`.
#[repr(C)]
struct IoVec {
    base: *mut u8,
    len: usize,
}

/// `struct msghdr` (x86_64).
#[repr(C)]
struct MsgHdr {
    name: usize,
    namelen: u32,
    iov: *mut IoVec,
    iovlen: usize,
    control: *mut u8,
    controllen: usize,
    flags: i32,
}

/// Waits for the worker's next command on `socket`: exits 0 when the socket
/// ends (the worker discarded the sandbox), [`usage`] on a message without
/// exactly [`SERVED_FDS`] descriptors.
fn next_job(socket: usize) -> Job {
    let mut byte = [0u8; 1];
    let mut iov = IoVec {
        base: byte.as_mut_ptr(),
        len: 1,
    };
    // A cmsghdr (length, level, type: 16 bytes) and the descriptors, with
    // room to spare; u64s keep it aligned.
    let mut control = [0u64; 8];
    let mut msg = MsgHdr {
        name: 0,
        namelen: 0,
        iov: &raw mut iov,
        iovlen: 1,
        control: control.as_mut_ptr().cast::<u8>(),
        controllen: core::mem::size_of_val(&control),
        flags: 0,
    };
    let got = loop {
        // SAFETY: receives into the buffers `msg` points to, which we own.
        let r = unsafe {
            sys::call4(
                nr::RECVMSG,
                socket,
                &raw mut msg as usize,
                MSG_CMSG_CLOEXEC,
                0,
            )
        };
        if r != -EINTR {
            break r;
        }
    };
    if got == 0 {
        sys::exit(0);
    }
    let len = control[0] as usize;
    let (level, kind) = (control[1] as u32 as i32, (control[1] >> 32) as u32 as i32);
    let count = if msg.controllen >= 16 && len >= 16 && level == SOL_SOCKET && kind == SCM_RIGHTS {
        (len - 16) / 4
    } else {
        0
    };
    let mut fds = [0usize; SERVED_FDS];
    for (i, fd) in fds.iter_mut().enumerate().take(count.min(SERVED_FDS)) {
        let word = control[2 + i / 2];
        *fd = if i % 2 == 0 {
            word as u32
        } else {
            (word >> 32) as u32
        } as usize;
    }
    if got != 1 || count != SERVED_FDS || msg.flags & MSG_CTRUNC != 0 {
        usage();
    }
    let (argv, envp, memory) = read_command(fds[0]);
    Job {
        argv,
        envp,
        fds,
        memory,
    }
}

/// After a served command's main process ended: kills every other process
/// of the sandbox (all of them are this init's descendants, and orphans
/// become its children), reaps them all, and drops the signals that came
/// meanwhile (a `TERM` sent to the init by the command is not the next
/// command's).
///
/// When the init has no child left, nothing is left to kill: every other
/// process of the sandbox's PID namespace descends from the init (an
/// orphan is re-parented to it, a nested namespace's processes descend
/// from the process that made it), so an init without children is alone.
/// Most commands leave nothing behind, and `kill(-1)` would walk every
/// process of the host to find that out, under the kernel's process-list
/// lock (~30 ns a process: 63 µs per command on a host of 2,000 processes,
/// docs/BENCHMARKS.md).
fn end_everything(set: u64) {
    while !no_child_left() {
        // SAFETY: signals every process of the namespace but this one.
        let killed = unsafe { sys::call4(nr::KILL, usize::MAX, SIGKILL, 0, 0) } == 0;
        let mut reaped = false;
        loop {
            // SAFETY: waits for any child; no status wanted.
            let pid = unsafe { sys::call4(nr::WAIT4, usize::MAX, 0, 0, 0) };
            if pid > 0 {
                reaped = true;
            } else if pid != -EINTR {
                debug_assert!(pid == -ECHILD);
                break;
            }
        }
        if !killed && !reaped {
            break;
        }
    }
    let now = [0u64; 2];
    let mut info = [0u64; 16];
    // SAFETY: takes a pending signal of our set without waiting.
    while unsafe {
        sys::call4(
            nr::RT_SIGTIMEDWAIT,
            &raw const set as usize,
            info.as_mut_ptr() as usize,
            now.as_ptr() as usize,
            8,
        )
    } > 0
    {}
}

/// Whether the init has no child at all, alive or ended (it reaps those
/// that ended); see [`end_everything`].
fn no_child_left() -> bool {
    loop {
        // SAFETY: waits for no one; no status wanted.
        let pid = unsafe { sys::call4(nr::WAIT4, usize::MAX, 0, WNOHANG, 0) };
        if pid > 0 || pid == -EINTR {
            continue;
        }
        return pid == -ECHILD;
    }
}

/// Whether the sandbox's IPC namespace holds no System V object (each of
/// `/proc/sysvipc`'s files is one header line then). False when that
/// cannot be read.
fn ipc_empty() -> bool {
    [
        &b"/proc/sysvipc/shm\0"[..],
        &b"/proc/sysvipc/sem\0"[..],
        &b"/proc/sysvipc/msg\0"[..],
    ]
    .into_iter()
    .all(|path| {
        let fd = sys::open(path, O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let fd = fd as usize;
        let mut buf = [0u8; 512];
        let (mut lines, mut rest) = (0usize, false);
        loop {
            // SAFETY: reads into our buffer.
            let n = unsafe { sys::call4(nr::READ, fd, buf.as_mut_ptr() as usize, buf.len(), 0) };
            if n == -EINTR {
                continue;
            }
            if n <= 0 {
                rest |= n < 0;
                break;
            }
            for &c in &buf[..n as usize] {
                if lines > 0 {
                    rest = true;
                }
                lines += usize::from(c == b'\n');
            }
            if rest {
                break;
            }
        }
        sys::close(fd);
        lines == 1 && !rest
    })
}

/// `(STATUS_FD, STDERR_FD, --tty FD, the command)`, or [`usage`].
fn parse(args: &Args) -> (usize, usize, Option<usize>, Command) {
    let fd = |i: usize| -> usize {
        if i >= args.argc {
            usage();
        }
        match sys::number(args.get(i)) {
            Some(fd) if fd > 2 && fd <= i32::MAX as u64 => fd as usize,
            _ => usage(),
        }
    };
    let is = |i: usize, what: &[u8]| i < args.argc && args.get(i) == what;
    let (status_fd, stderr_fd) = (fd(1), fd(2));
    if is(3, b"--serve") {
        if args.argc != 5 {
            usage();
        }
        return (status_fd, stderr_fd, None, Command::Serve { socket: fd(4) });
    }
    if is(3, b"--wait") {
        if args.argc != 6 {
            usage();
        }
        let command = Command::Wait {
            go: fd(4),
            command: fd(5),
        };
        return (status_fd, stderr_fd, None, command);
    }
    let (tty, rest) = if is(3, b"--tty") {
        (Some(fd(4)), 5)
    } else {
        (None, 3)
    };
    if !is(rest, b"--") || args.argc < rest + 2 {
        usage();
    }
    (status_fd, stderr_fd, tty, Command::Now { at: rest + 1 })
}

/// Marks every descriptor from `first` up close-on-exec: `close_range`, or
/// before Linux 5.11 each one listed in `/proc/self/fd`; [`usage`] when
/// neither works.
fn close_on_exec_from(first: usize) {
    // SAFETY: sets flags on this process's descriptors.
    let r = unsafe {
        sys::call4(
            nr::CLOSE_RANGE,
            first,
            u32::MAX as usize,
            CLOSE_RANGE_CLOEXEC,
            0,
        )
    };
    if r == 0 {
        return;
    }
    let dir = sys::open(b"/proc/self/fd\0", O_CLOEXEC);
    if dir < 0 {
        usage();
    }
    let dir = dir as usize;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: fills the buffer we own with directory entries.
        let n = unsafe { sys::call4(nr::GETDENTS64, dir, buf.as_mut_ptr() as usize, buf.len(), 0) };
        if n == 0 {
            break;
        }
        if n < 0 {
            usage();
        }
        let mut at = 0;
        while at + 19 < n as usize {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8,
            // then the NUL-terminated name.
            let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            if reclen == 0 {
                usage();
            }
            let name = &buf[at + 19..(at + reclen).min(n as usize)];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            if let Some(fd) = sys::number(name)
                && fd >= first as u64
                && fd as usize != dir
            {
                // SAFETY: sets a flag of a descriptor number.
                unsafe { sys::call4(nr::FCNTL, fd as usize, F_SETFD, FD_CLOEXEC, 0) };
            }
            at += reclen;
        }
    }
    sys::close(dir);
}

/// Blocks the handled signals, to wait for them synchronously, with a
/// handler that does nothing (the kernel drops signals with the default
/// disposition sent to a namespace's init); returns them and the mask
/// before.
fn block_handled_signals() -> (u64, u64) {
    let set = HANDLED.iter().fold(0, |s, &sig| s | bit(sig));
    let mut previous = 0u64;
    // SAFETY: reads our set, writes the previous mask into ours.
    let r = unsafe {
        sys::call4(
            nr::RT_SIGPROCMASK,
            SIG_BLOCK,
            &raw const set as usize,
            &raw mut previous as usize,
            8,
        )
    };
    if r != 0 {
        usage();
    }
    let action = SigAction {
        handler: ignore as *const () as usize,
        flags: SA_RESTART | SA_RESTORER,
        restorer: rdev_restore_rt as *const () as usize,
        mask: 0,
    };
    for sig in HANDLED {
        // SAFETY: the handler does nothing and returns through the
        // restorer; no state is shared with it.
        unsafe { sys::call4(nr::RT_SIGACTION, sig, &raw const action as usize, 0, 8) };
    }
    (set, previous)
}

/// A warm sandbox's wait: blocks until the worker writes the go byte (or
/// exits 0 at end-of-file: the sandbox was discarded).
fn wait_for_go(go: usize) {
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: one byte into our buffer.
        match unsafe { sys::call4(nr::READ, go, byte.as_mut_ptr() as usize, 1, 0) } {
            1 => return,
            0 => sys::exit(0),
            r if r == -EINTR => {}
            _ => usage(),
        }
    }
}

/// Reads the command from its memfd (NUL-terminated fields: the argument
/// count, the arguments, the environment as `NAME=value`), closes it, and
/// returns its arguments and environment, null-terminated, with the two
/// mappings that hold them.
fn read_command(
    command: usize,
) -> (
    *const *const u8,
    *const *const u8,
    (*mut u8, usize, *mut u8, usize),
) {
    // SAFETY: the memfd's size (its offset is not used by pread).
    let size = unsafe { sys::call4(nr::LSEEK, command, 0, SEEK_END, 0) };
    if size <= 0 {
        usage();
    }
    let size = size as usize;
    let Some(message) = sys::alloc(size + 1) else {
        usage();
    };
    let mut got = 0;
    while got < size {
        // SAFETY: reads into the rest of our buffer of `size` bytes.
        let n = unsafe {
            sys::call(
                nr::PREAD64,
                command,
                message.add(got) as usize,
                size - got,
                got,
                0,
                0,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            n if n == -EINTR => {}
            _ => usage(),
        }
    }
    sys::close(command);
    // SAFETY: `got` bytes were read into the buffer; one more (zeroed) ends
    // it with a NUL whatever the worker sent.
    let message = unsafe { core::slice::from_raw_parts_mut(message, got + 1) };
    let fields = message[..got].iter().filter(|&&c| c == 0).count();
    // Pointers: every field, two nulls.
    let table_bytes = (fields + 2) * core::mem::size_of::<*const u8>();
    let Some(table) = sys::alloc(table_bytes) else {
        usage();
    };
    let table = table as *mut *const u8;
    let mut starts = message[..got]
        .split(|&c| c == 0)
        .scan(0usize, |offset, field| {
            let start = *offset;
            *offset += field.len() + 1;
            Some((start, field))
        })
        .take(fields);
    let argc = starts
        .next()
        .and_then(|(_, count)| sys::number(count))
        .unwrap_or_else(|| usage()) as usize;
    if argc == 0 || argc >= fields {
        usage();
    }
    let base = message.as_ptr();
    let mut n = 0;
    for (start, _) in starts.by_ref().take(argc) {
        // SAFETY: n < fields + 2; start is a field of the message.
        unsafe { *table.add(n) = base.add(start) };
        n += 1;
    }
    if n != argc {
        usage();
    }
    // SAFETY: the null after the arguments.
    unsafe { *table.add(n) = core::ptr::null() };
    let envp = n + 1;
    let mut m = envp;
    for (start, var) in starts.filter(|(_, f)| !f.is_empty()) {
        if !var.contains(&b'=') {
            usage();
        }
        // SAFETY: m < fields + 2 (one field fewer than counted: the count).
        unsafe { *table.add(m) = base.add(start) };
        m += 1;
    }
    // SAFETY: the environment's null.
    unsafe { *table.add(m) = core::ptr::null() };
    // SAFETY: both within the table.
    (
        table as *const *const u8,
        unsafe { table.add(envp) } as *const *const u8,
        (
            message.as_mut_ptr(),
            size + 1,
            table.cast::<u8>(),
            table_bytes,
        ),
    )
}

/// Waits for the handled signals: reaps children (and returns how the
/// command's main process ended, [`reap`]) and forwards the others.
fn supervise(child: isize, set: u64) -> Ended {
    let mut info = [0u64; 16];
    loop {
        // SAFETY: waits for a signal of our set; fills our siginfo buffer.
        let signal = unsafe {
            sys::call4(
                nr::RT_SIGTIMEDWAIT,
                &raw const set as usize,
                info.as_mut_ptr() as usize,
                0,
                8,
            )
        };
        if signal <= 0 {
            continue;
        }
        let signal = signal as usize;
        let kill = |pid: isize, sig: usize| -> isize {
            // SAFETY: sends a signal.
            unsafe { sys::call4(nr::KILL, pid as usize, sig, 0, 0) }
        };
        match signal {
            SIGCHLD => {
                if let Some(ended) = reap(child) {
                    return ended;
                }
            }
            // The worker's timeout or cancel: everything in the sandbox.
            SIGTERM => {
                kill(-1, SIGTERM);
            }
            // A client's KILL.
            SIGPWR => {
                kill(-child, SIGKILL);
            }
            // Interactive signals go to the command's process group (or,
            // before the command made its session, to the command itself).
            other => {
                if kill(-child, other) == -ESRCH {
                    kill(child, other);
                }
            }
        }
    }
}

/// Reaps every child that ended; when the command's main process is among
/// them, says how it ended.
fn reap(main: isize) -> Option<Ended> {
    loop {
        let mut status: i32 = 0;
        // SAFETY: writes the status into ours.
        let pid =
            unsafe { sys::call4(nr::WAIT4, usize::MAX, &raw mut status as usize, WNOHANG, 0) };
        if pid <= 0 {
            return None;
        }
        if pid != main {
            continue;
        }
        let signal = (status & 0x7f) as u64;
        if signal == 0 {
            return Some(Ended::Exited(((status >> 8) & 0xff) as u64));
        }
        if signal != 0x7f {
            return Some(Ended::Signaled(signal));
        }
    }
}

/// The command's standard streams.
enum Streams {
    /// Input and output as the init's own, standard error its own.
    Stderr(usize),
    /// Input, output, error: a served command's.
    All([usize; 3]),
}

/// In the forked child: a new session (with `tty`, that terminal as its
/// controlling terminal and standard streams), signals as they were, then
/// the program.
fn run_command(
    argv: *const *const u8,
    envp: *const *const u8,
    streams: Streams,
    status_fd: usize,
    tty: Option<usize>,
    mask: u64,
) -> ! {
    let default = SigAction {
        handler: 0,
        flags: SA_RESTORER,
        restorer: rdev_restore_rt as *const () as usize,
        mask: 0,
    };
    for sig in HANDLED.into_iter().chain([SIGPIPE]) {
        // SAFETY: restores the default disposition.
        unsafe { sys::call4(nr::RT_SIGACTION, sig, &raw const default as usize, 0, 8) };
    }
    // SAFETY: reads our mask.
    unsafe {
        sys::call4(
            nr::RT_SIGPROCMASK,
            SIG_SETMASK,
            &raw const mask as usize,
            0,
            8,
        )
    };
    // SAFETY: no arguments.
    unsafe { sys::call4(nr::SETSID, 0, 0, 0, 0) };
    // A session key ring of its own: the one inherited is the worker's (a
    // service's or a container's), which every other command would inherit
    // too. Where key rings are refused (a seccomp filter), the command
    // cannot use one either.
    // SAFETY: a null name: a new anonymous key ring.
    unsafe { sys::call4(nr::KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0) };
    // SAFETY: descriptor numbers only.
    let dup = |from: usize, to: usize| unsafe { sys::call4(nr::DUP3, from, to, 0, 0) };
    let failed = match tty {
        // SAFETY: TIOCSCTTY on a terminal of this process, a session leader
        // without a controlling terminal.
        Some(fd) => [
            unsafe { sys::call4(nr::IOCTL, fd, TIOCSCTTY, 0, 0) },
            dup(fd, 0),
            dup(fd, 1),
            dup(fd, 2),
        ]
        .into_iter()
        .find(|&r| r < 0),
        None => match streams {
            Streams::Stderr(fd) => Some(dup(fd, 2)).filter(|&r| r < 0),
            Streams::All([input, output, error]) => [dup(input, 0), dup(output, 1), dup(error, 2)]
                .into_iter()
                .find(|&r| r < 0),
        },
    };
    if let Some(r) = failed {
        report(status_fd, b"exec-failed ", Some(-r as u64));
        sys::exit(127);
    }
    let errno = execvp(argv, envp);
    report(status_fd, b"exec-failed ", Some(errno as u64));
    sys::exit(127)
}

/// `execvp`'s search, as the C library does it: a name with a `/` as it
/// is, else each directory of the environment's `PATH` (`/bin:/usr/bin`
/// when it has none); a file that is not a program runs as a `/bin/sh`
/// script. Returns the errno when nothing ran.
fn execvp(argv: *const *const u8, envp: *const *const u8) -> isize {
    // SAFETY: argv has at least the program, NUL-terminated.
    let name = unsafe { sys::c_str(*argv) };
    if name.is_empty() {
        return ENOENT;
    }
    if name.contains(&b'/') {
        // SAFETY: the name is the NUL-terminated first argument.
        return exec(unsafe { *argv }, argv, envp);
    }
    let path = env_var(envp, b"PATH").unwrap_or(b"/bin:/usr/bin");
    let mut buf = [0u8; PATH_MAX];
    let mut eacces = false;
    let mut last = ENOENT;
    for dir in path.split(|&c| c == b':') {
        let len = dir.len() + usize::from(!dir.is_empty()) + name.len();
        if len + 1 > buf.len() {
            last = ENAMETOOLONG;
            continue;
        }
        let mut at = 0;
        for &c in dir
            .iter()
            .chain(if dir.is_empty() { &b""[..] } else { &b"/"[..] })
            .chain(name)
        {
            buf[at] = c;
            at += 1;
        }
        buf[at] = 0;
        last = exec(buf.as_ptr(), argv, envp);
        match last {
            EACCES => eacces = true,
            // Not here: the next directory.
            ENOENT | ENOTDIR | ENODEV | ETIMEDOUT | ESTALE => {}
            _ => return last,
        }
    }
    if eacces { EACCES } else { last }
}

/// `execve(path, argv, envp)`, and as a `/bin/sh` script if the kernel
/// cannot run it; the errno when nothing ran.
fn exec(path: *const u8, argv: *const *const u8, envp: *const *const u8) -> isize {
    // SAFETY: NUL-terminated path, null-terminated argv and envp.
    let r = unsafe { sys::call4(nr::EXECVE, path as usize, argv as usize, envp as usize, 0) };
    if r != -ENOEXEC {
        return -r;
    }
    let mut argc = 0;
    // SAFETY: argv is null-terminated.
    while !unsafe { *argv.add(argc) }.is_null() {
        argc += 1;
    }
    let Some(table) = sys::alloc((argc + 2) * core::mem::size_of::<*const u8>()) else {
        return ENOEXEC;
    };
    let table = table as *mut *const u8;
    // SAFETY: the table holds argc + 2 pointers: the shell, the script, the
    // arguments after the first, a null (zeroed memory).
    unsafe {
        *table = c"/bin/sh".as_ptr().cast::<u8>();
        *table.add(1) = path;
        for i in 1..argc {
            *table.add(i + 1) = *argv.add(i);
        }
    }
    // SAFETY: as above.
    let r = unsafe {
        sys::call4(
            nr::EXECVE,
            c"/bin/sh".as_ptr().cast::<u8>() as usize,
            table as usize,
            envp as usize,
            0,
        )
    };
    if r < 0 { ENOEXEC } else { 0 }
}

/// The value of `name` in a null-terminated environment.
fn env_var(envp: *const *const u8, name: &[u8]) -> Option<&'static [u8]> {
    let mut i = 0;
    loop {
        // SAFETY: envp is null-terminated; each entry NUL-terminated.
        let p = unsafe { *envp.add(i) };
        if p.is_null() {
            return None;
        }
        // SAFETY: as above.
        let var = unsafe { sys::c_str(p) };
        if var.len() > name.len() && var.starts_with(name) && var[name.len()] == b'=' {
            return Some(&var[name.len() + 1..]);
        }
        i += 1;
    }
}

/// One line on the status descriptor: `what` and a number.
fn report(fd: usize, what: &[u8], n: Option<u64>) {
    let mut line = [0u8; 64];
    let mut at = 0;
    let mut digits = [0u8; 20];
    let number: &[u8] = match n {
        Some(n) => sys::decimal(n, &mut digits),
        None => b"",
    };
    for &c in what.iter().chain(number).chain(b"\n") {
        line[at] = c;
        at += 1;
    }
    sys::write_all(fd, &line[..at]);
}

fn usage() -> ! {
    sys::write_all(
        2,
        b"usage: rdev-sandbox-init STATUS_FD STDERR_FD [--tty FD] -- PROGRAM [ARGS...]\n       \
          rdev-sandbox-init STATUS_FD STDERR_FD --wait GO_FD COMMAND_FD\n       \
          rdev-sandbox-init STATUS_FD STDERR_FD --serve SOCKET_FD\n",
    );
    sys::exit(USAGE)
}
