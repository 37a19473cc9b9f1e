//! `rdev-launch`: the launcher of `rdev-sandbox-init --launch` (that
//! binary's `launch.rs` says what a launch does and why it exists), made
//! without the C library.
//!
//! Every command starts through a launcher. A program linked with the C
//! library spends most of its start in the dynamic loader and in glibc's
//! processor probe, a few dozen `cpuid` instructions, each a trap to the
//! hypervisor in a virtual machine: 0.7 ms of CPU a start on the machine
//! of docs/BENCHMARKS.md, where this one takes 0.03 ms. It is also
//! smaller where it runs as root: no loader reads the command's
//! environment before root is dropped.
//!
//! The worker's build script compiles it (`core` only, `panic=abort`,
//! static, no start files) for x86_64 and aarch64 Linux, and the worker
//! carries it and runs it from a sealed memfd. Anywhere else, or when that
//! fails, the worker uses `rdev-sandbox-init --launch`, which takes the
//! same arguments and does the same, in the same order:
//!
//! `--launch [--join FD]… [--rlimit RES:SOFT:HARD]… [--user UID:GID] [--arg0 NAME] --parent PID -- PROGRAM ARGS…`
//!
//! `--check` alone exits 0: the worker's probe that it can run here.
//! A failure is one line on standard error and exit 125.

#![no_std]
#![no_main]
#![no_builtins]

use core::arch::{asm, global_asm};

/// Exit code when the launch fails (as `rdev-sandbox-init --launch`).
const FAILED: usize = 125;
/// At most this many `--join` and `--rlimit` options (the worker passes two
/// and at most eight).
const MAX_JOIN: usize = 8;
const MAX_RLIMITS: usize = 16;

const PR_SET_PDEATHSIG: usize = 1;
const SIGKILL: usize = 9;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const EXECVE: usize = 59;
    pub const SETUID: usize = 105;
    pub const SETGID: usize = 106;
    pub const GETPPID: usize = 110;
    pub const SETGROUPS: usize = 116;
    pub const PRCTL: usize = 157;
    pub const EXIT_GROUP: usize = 231;
    pub const PRLIMIT64: usize = 302;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const CLOSE: usize = 57;
    pub const WRITE: usize = 64;
    pub const EXIT_GROUP: usize = 94;
    pub const SETGID: usize = 144;
    pub const SETUID: usize = 146;
    pub const SETGROUPS: usize = 159;
    pub const PRCTL: usize = 167;
    pub const GETPPID: usize = 173;
    pub const EXECVE: usize = 221;
    pub const PRLIMIT64: usize = 261;
}

/// A system call; the result is the kernel's (negative: `-errno`).
///
/// # Safety
/// The arguments must be what the call `n` expects.
#[cfg(target_arch = "x86_64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let r: isize;
    // SAFETY: the caller passes the call's arguments; the kernel clobbers
    // only rcx and r11.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b,
             in("rdx") c, in("r10") d, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

/// A system call; the result is the kernel's (negative: `-errno`).
///
/// # Safety
/// The arguments must be what the call `n` expects.
#[cfg(target_arch = "aarch64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let r: isize;
    // SAFETY: the caller passes the call's arguments.
    unsafe {
        asm!("svc 0", in("x8") n, inlateout("x0") a as isize => r, in("x1") b, in("x2") c,
             in("x3") d, options(nostack));
    }
    r
}

// The kernel starts a static program with the stack pointer at `argc`,
// followed by `argv`, a null, `envp`, a null.
#[cfg(target_arch = "x86_64")]
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call rdev_launch_start",
    "ud2",
);

#[cfg(target_arch = "aarch64")]
global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, xzr",
    "mov x0, sp",
    "bl rdev_launch_start",
    "brk #0",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    fail(b"internal error", 0)
}

#[cfg(target_arch = "x86_64")]
fn exit(code: usize) -> ! {
    // SAFETY: exit_group takes a status and does not return.
    unsafe { asm!("syscall", in("rax") nr::EXIT_GROUP, in("rdi") code, options(noreturn, nostack)) }
}

#[cfg(target_arch = "aarch64")]
fn exit(code: usize) -> ! {
    // SAFETY: exit_group takes a status and does not return.
    unsafe { asm!("svc 0", in("x8") nr::EXIT_GROUP, in("x0") code, options(noreturn, nostack)) }
}

fn write_all(fd: usize, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { syscall(nr::WRITE, fd, bytes.as_ptr() as usize, bytes.len(), 0) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// One line on standard error: `rdev-sandbox-init --launch: WHAT[: ERROR]`,
/// then exit 125.
fn fail(what: &[u8], errno: isize) -> ! {
    fail_about(what, &[], errno)
}

/// As [`fail`], with `subject` after `what`.
fn fail_about(what: &[u8], subject: &[u8], errno: isize) -> ! {
    write_all(2, b"rdev-sandbox-init --launch: ");
    write_all(2, what);
    write_all(2, subject);
    if errno != 0 {
        write_all(2, b": ");
        write_all(2, error_text(-errno));
    }
    write_all(2, b"\n");
    exit(FAILED)
}

/// As the other launcher words them (`nix`'s `Errno`), for the errors a
/// launch may meet.
fn error_text(errno: isize) -> &'static [u8] {
    match errno {
        1 => b"EPERM: Operation not permitted",
        2 => b"ENOENT: No such file or directory",
        3 => b"ESRCH: No such process",
        7 => b"E2BIG: Argument list too long",
        8 => b"ENOEXEC: Exec format error",
        9 => b"EBADF: Bad file descriptor",
        11 => b"EAGAIN: Resource temporarily unavailable",
        12 => b"ENOMEM: Cannot allocate memory",
        13 => b"EACCES: Permission denied",
        20 => b"ENOTDIR: Not a directory",
        22 => b"EINVAL: Invalid argument",
        24 => b"EMFILE: Too many open files",
        26 => b"ETXTBSY: Text file busy",
        28 => b"ENOSPC: No space left on device",
        36 => b"ENAMETOOLONG: File name too long",
        40 => b"ELOOP: Too many levels of symbolic links",
        _ => b"system error",
    }
}

/// A NUL-terminated string from the kernel's argument block.
///
/// # Safety
/// `p` points to a NUL-terminated string that lives as long as the program.
unsafe fn c_str(p: *const u8) -> &'static [u8] {
    let mut n = 0;
    // SAFETY: the string is NUL-terminated.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: n bytes before the NUL are the string.
    unsafe { core::slice::from_raw_parts(p, n) }
}

fn number(s: &[u8], what: &[u8]) -> u64 {
    if s.is_empty() {
        fail_about(what, b": not a number", 0);
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            fail_about(what, b": not a number", 0);
        }
        v = match v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
        {
            Some(v) => v,
            None => fail_about(what, b": too large", 0),
        };
    }
    v
}

/// A number no larger than `max`.
fn bounded(s: &[u8], what: &[u8], max: u32) -> usize {
    let v = number(s, what);
    if v > u64::from(max) {
        fail_about(what, b": too large", 0);
    }
    v as usize
}

fn split(s: &[u8], at: u8) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&c| c == at) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

// What the compiler may call for copies and comparisons; the C library
// would have them. `no_builtins` keeps these loops from becoming calls to
// themselves.

/// # Safety
/// As C's `memcpy`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's buffers hold n bytes and do not overlap.
        unsafe { *dst.add(i) = *src.add(i) };
    }
    dst
}

/// # Safety
/// As C's `memset`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's buffer holds n bytes.
        unsafe { *dst.add(i) = c as u8 };
    }
    dst
}

/// # Safety
/// As C's `memcmp`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: both buffers hold n bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As C's `bcmp`.
#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Named by `core`'s unwind tables; nothing unwinds here (`panic=abort`).
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[repr(C)]
struct Rlimit {
    soft: u64,
    hard: u64,
}

/// # Safety
/// `sp` is the stack pointer the kernel started the program with.
#[unsafe(no_mangle)]
unsafe extern "C" fn rdev_launch_start(sp: *mut usize) -> ! {
    // SAFETY: the kernel's layout: argc, then argc pointers and a null,
    // then the environment's pointers and a null.
    let (argc, argv, envp) = unsafe {
        let argc = *sp;
        let argv = sp.add(1) as *mut *const u8;
        (argc, argv, argv.add(argc + 1))
    };
    // SAFETY: every argument below argc is a NUL-terminated string.
    let arg = |i: usize| unsafe { c_str(*argv.add(i)) };
    if argc == 2 && arg(1) == b"--check" {
        exit(0);
    }
    if argc < 2 || arg(1) != b"--launch" {
        fail(b"the first argument must be --launch", 0);
    }
    let mut join = [0usize; MAX_JOIN];
    let mut joins = 0;
    let mut rlimits = [(0usize, 0u64, 0u64); MAX_RLIMITS];
    let mut nrlimits = 0;
    let mut user: Option<(usize, usize)> = None;
    let mut parent = 0usize;
    let mut arg0: Option<*const u8> = None;
    let mut program_at = 0usize;
    let mut i = 2;
    let value = |i: usize, what: &[u8]| -> &'static [u8] {
        if i >= argc {
            fail_about(what, b" needs a value", 0);
        }
        arg(i)
    };
    while i < argc {
        match arg(i) {
            b"--join" => {
                if joins == MAX_JOIN {
                    fail(b"--join: too many", 0);
                }
                join[joins] = bounded(value(i + 1, b"--join"), b"--join", i32::MAX as u32);
                joins += 1;
                i += 2;
            }
            b"--rlimit" => {
                if nrlimits == MAX_RLIMITS {
                    fail(b"--rlimit: too many", 0);
                }
                let v = value(i + 1, b"--rlimit");
                let (res, rest) = split(v, b':');
                let Some((soft, Some(hard))) = rest.map(|r| split(r, b':')) else {
                    fail_about(b"--rlimit RES:SOFT:HARD, not ", v, 0);
                };
                rlimits[nrlimits] = (
                    bounded(res, b"--rlimit", u32::MAX),
                    number(soft, b"--rlimit"),
                    number(hard, b"--rlimit"),
                );
                nrlimits += 1;
                i += 2;
            }
            b"--user" => {
                let v = value(i + 1, b"--user");
                let (uid, gid) = split(v, b':');
                let Some(gid) = gid else {
                    fail_about(b"--user UID:GID, not ", v, 0);
                };
                user = Some((
                    bounded(uid, b"--user", u32::MAX),
                    bounded(gid, b"--user", u32::MAX),
                ));
                i += 2;
            }
            b"--parent" => {
                parent = bounded(value(i + 1, b"--parent"), b"--parent", i32::MAX as u32);
                i += 2;
            }
            b"--arg0" => {
                value(i + 1, b"--arg0");
                // SAFETY: i + 1 < argc.
                arg0 = Some(unsafe { *argv.add(i + 1) });
                i += 2;
            }
            b"--" => {
                program_at = i + 1;
                break;
            }
            other => fail_about(b"unknown argument ", other, 0),
        }
    }
    if program_at == 0 || program_at >= argc {
        fail(b"no program after --", 0);
    }
    if parent <= 1 {
        fail(b"--parent PID is required", 0);
    }

    for &fd in &join[..joins] {
        // SAFETY: a one-byte buffer we own.
        let n = unsafe { syscall(nr::WRITE, fd, b"0".as_ptr() as usize, 1, 0) };
        if n != 1 {
            fail(b"joining the command's cgroup", n.min(0));
        }
        // SAFETY: closing a descriptor number.
        unsafe { syscall(nr::CLOSE, fd, 0, 0, 0) };
    }
    for &(resource, soft, hard) in &rlimits[..nrlimits] {
        let limit = Rlimit { soft, hard };
        // SAFETY: prlimit64 on ourselves (pid 0) reads the struct we own
        // and writes nothing (old limit: null).
        let r = unsafe {
            syscall(
                nr::PRLIMIT64,
                0,
                resource,
                &limit as *const Rlimit as usize,
                0,
            )
        };
        if r != 0 {
            fail(b"setrlimit", r);
        }
    }
    if let Some((uid, gid)) = user {
        let groups = [gid as u32];
        // SAFETY: one gid in a buffer we own; setgid and setuid take ids.
        // Raw calls are exact here: this process has one thread.
        let r = unsafe {
            let mut r = syscall(nr::SETGROUPS, 1, groups.as_ptr() as usize, 0, 0);
            if r == 0 {
                r = syscall(nr::SETGID, gid, 0, 0, 0);
            }
            if r == 0 {
                r = syscall(nr::SETUID, uid, 0, 0, 0);
            }
            r
        };
        if r != 0 {
            fail(b"dropping root", r);
        }
    }
    // After setuid, which clears it.
    // SAFETY: sets a flag of this process.
    let r = unsafe { syscall(nr::PRCTL, PR_SET_PDEATHSIG, SIGKILL, 0, 0) };
    if r != 0 {
        fail(b"PR_SET_PDEATHSIG", r);
    }
    // The worker may have died before the flag was set: then nobody would
    // ever stop what we start.
    // SAFETY: no arguments.
    if unsafe { syscall(nr::GETPPID, 0, 0, 0, 0) } as usize != parent {
        fail(b"the worker is gone", 0);
    }
    let program_name = arg(program_at);
    // SAFETY: program_at < argc, so argv[program_at..] is the program and
    // its arguments, ending with the kernel's null; argv[0] of that array
    // may be replaced by another NUL-terminated string from the block.
    let r = unsafe {
        let exec_argv = argv.add(program_at);
        let program = *exec_argv;
        if let Some(name) = arg0 {
            *exec_argv = name;
        }
        syscall(
            nr::EXECVE,
            program as usize,
            exec_argv as usize,
            envp as usize,
            0,
        )
    };
    fail_about(b"cannot run ", program_name, r)
}
