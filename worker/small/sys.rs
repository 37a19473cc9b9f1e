//! System calls (x86_64 Linux) and the few helpers both jobs share: no C
//! library here.

use core::arch::asm;

/// System call numbers.
pub mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const OPEN: usize = 2;
    pub const CLOSE: usize = 3;
    pub const LSEEK: usize = 8;
    pub const MMAP: usize = 9;
    pub const MUNMAP: usize = 11;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const RT_SIGRETURN: usize = 15;
    pub const IOCTL: usize = 16;
    pub const PREAD64: usize = 17;
    pub const RECVMSG: usize = 47;
    pub const FORK: usize = 57;
    pub const EXECVE: usize = 59;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const FCNTL: usize = 72;
    pub const SETUID: usize = 105;
    pub const SETGID: usize = 106;
    pub const GETPPID: usize = 110;
    pub const SETSID: usize = 112;
    pub const SETGROUPS: usize = 116;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const PRCTL: usize = 157;
    pub const GETDENTS64: usize = 217;
    pub const EXIT_GROUP: usize = 231;
    pub const KEYCTL: usize = 250;
    pub const DUP3: usize = 292;
    pub const PRLIMIT64: usize = 302;
    pub const CLOSE_RANGE: usize = 436;
}

/// The error numbers these programs test for.
pub mod errno {
    pub const ENOENT: isize = 2;
    pub const ESRCH: isize = 3;
    pub const EINTR: isize = 4;
    pub const ECHILD: isize = 10;
    pub const ENOEXEC: isize = 8;
    pub const EACCES: isize = 13;
    pub const ENODEV: isize = 19;
    pub const ENOTDIR: isize = 20;
    pub const ENAMETOOLONG: isize = 36;
    pub const ETIMEDOUT: isize = 110;
    pub const ESTALE: isize = 116;
}

/// The signal both jobs send or ask for.
pub const SIGKILL: usize = 9;

/// A system call; the result is the kernel's (negative: `-errno`).
///
/// # Safety
/// The arguments must be what the call `n` expects.
pub unsafe fn call(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let r: isize;
    // SAFETY: the caller passes the call's arguments; the kernel clobbers
    // only rcx and r11.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b,
             in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

/// [`call`] with up to four arguments.
///
/// # Safety
/// As [`call`].
pub unsafe fn call4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    // SAFETY: as the caller's.
    unsafe { call(n, a, b, c, d, 0, 0) }
}

pub fn exit(code: usize) -> ! {
    // SAFETY: exit_group takes a status and does not return.
    unsafe { asm!("syscall", in("rax") nr::EXIT_GROUP, in("rdi") code, options(noreturn, nostack)) }
}

/// `fork()`: 0 in the child, the child's pid in the parent, `-errno`.
pub fn fork() -> isize {
    // SAFETY: the child gets a copy of this single-threaded process.
    unsafe { call4(nr::FORK, 0, 0, 0, 0) }
}

/// `open(path, flags)` (NUL-terminated path).
pub fn open(path: &[u8], flags: usize) -> isize {
    debug_assert!(path.ends_with(&[0]));
    // SAFETY: a NUL-terminated path we own.
    unsafe { call4(nr::OPEN, path.as_ptr() as usize, flags, 0, 0) }
}

pub fn write_all(fd: usize, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { call4(nr::WRITE, fd, bytes.as_ptr() as usize, bytes.len(), 0) };
        if n == -errno::EINTR {
            continue;
        }
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

pub fn close(fd: usize) {
    // SAFETY: closing a descriptor number.
    unsafe { call4(nr::CLOSE, fd, 0, 0, 0) };
}

/// Anonymous memory, zeroed, or `None`.
pub fn alloc(bytes: usize) -> Option<*mut u8> {
    const PROT_READ_WRITE: usize = 3;
    const MAP_PRIVATE_ANONYMOUS: usize = 0x22;
    // SAFETY: a new private anonymous mapping.
    let p = unsafe {
        call(
            nr::MMAP,
            0,
            bytes.max(1),
            PROT_READ_WRITE,
            MAP_PRIVATE_ANONYMOUS,
            usize::MAX,
            0,
        )
    };
    (p >= 0).then_some(p as *mut u8)
}

/// Returns memory from [`alloc`].
pub fn free(p: *mut u8, bytes: usize) {
    // SAFETY: unmaps a mapping [`alloc`] made of this length.
    unsafe { call4(nr::MUNMAP, p as usize, bytes.max(1), 0, 0) };
}

/// As `nix`'s `Errno` words them (the C-library programs' wording), for the
/// errors these programs may meet.
pub fn error_text(errno: isize) -> &'static [u8] {
    match errno {
        1 => b"EPERM: Operation not permitted",
        2 => b"ENOENT: No such file or directory",
        3 => b"ESRCH: No such process",
        7 => b"E2BIG: Argument list too long",
        8 => b"ENOEXEC: Exec format error",
        9 => b"EBADF: Bad file descriptor",
        11 => b"EAGAIN: Try again",
        12 => b"ENOMEM: Out of memory",
        13 => b"EACCES: Permission denied",
        20 => b"ENOTDIR: Not a directory",
        22 => b"EINVAL: Invalid argument",
        24 => b"EMFILE: Too many open files",
        26 => b"ETXTBSY: Text file busy",
        28 => b"ENOSPC: No space left on device",
        36 => b"ENAMETOOLONG: File name too long",
        40 => b"ELOOP: Too many symbolic links encountered",
        _ => b"system error",
    }
}

/// A NUL-terminated string from the kernel's argument block (without the
/// NUL).
///
/// # Safety
/// `p` points to a NUL-terminated string that lives as long as the program.
pub unsafe fn c_str(p: *const u8) -> &'static [u8] {
    let mut n = 0;
    // SAFETY: the string is NUL-terminated.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: n bytes before the NUL are the string.
    unsafe { core::slice::from_raw_parts(p, n) }
}

/// A decimal number, or `None`.
pub fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// `v` in decimal, in `buf`; the digits' slice.
pub fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}
