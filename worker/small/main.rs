//! The small `rdev-sandbox-init`: both jobs of that program (the init of a
//! command's sandbox, and `--launch`, the step between the worker and
//! bubblewrap), made without the C library. Its modules say what each job
//! does; `worker/src/bin/rdev-sandbox-init/` is the same with the standard
//! library, and the worker uses that one wherever this one was not built
//! or cannot run.
//!
//! Why: every command starts these two programs. One linked with the C
//! library spends most of its start in the dynamic loader and in glibc's
//! processor probe, a few dozen `cpuid` instructions, each a trap to the
//! hypervisor in a virtual machine: 0.7 ms of CPU a start on the machine
//! of docs/BENCHMARKS.md, where this one takes 0.03 ms. It is also smaller
//! where it runs as root: no loader reads the command's environment before
//! the launcher drops root.
//!
//! The worker's build script compiles it (`core` only, `panic=abort`,
//! static, no start files) for x86_64 Linux (the one machine it is tested
//! on; another architecture needs its system call numbers and entry); the worker carries
//! it in its binary, runs the launcher from a sealed memfd and installs the
//! init for its sandboxes like the other one.
//!
//! `--check` alone exits 0: the worker's probe that it runs here.

#![no_std]
#![no_main]
#![no_builtins]

mod init;
mod launch;
mod sys;

use core::arch::global_asm;

// The kernel starts a static program with the stack pointer at `argc`,
// followed by `argv`, a null, `envp`, a null.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call rdev_small_start",
    "ud2",
);

/// The program's arguments and environment, as the kernel laid them out.
pub struct Args {
    pub argc: usize,
    pub argv: *mut *const u8,
    pub envp: *const *const u8,
}

impl Args {
    /// Argument `i` (< argc), without its NUL.
    pub fn get(&self, i: usize) -> &'static [u8] {
        assert!(i < self.argc);
        // SAFETY: every argument below argc is a NUL-terminated string of
        // the kernel's block.
        unsafe { sys::c_str(*self.argv.add(i)) }
    }
}

/// # Safety
/// `sp` is the stack pointer the kernel started the program with.
#[unsafe(no_mangle)]
unsafe extern "C" fn rdev_small_start(sp: *mut usize) -> ! {
    // SAFETY: the kernel's layout: argc, then argc pointers and a null,
    // then the environment's pointers and a null.
    let args = unsafe {
        let argc = *sp;
        let argv = sp.add(1) as *mut *const u8;
        Args {
            argc,
            argv,
            envp: argv.add(argc + 1),
        }
    };
    match (args.argc, args.argc > 1 && args.get(1) == b"--launch") {
        (2, _) if args.get(1) == b"--check" => sys::exit(0),
        (_, true) => launch::main(&args),
        _ => init::main(&args),
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    sys::write_all(2, b"rdev-sandbox-init: internal error\n");
    sys::exit(125)
}

/// Named by `core`'s unwind tables; nothing unwinds here (`panic=abort`).
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

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
/// As C's `memmove`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) {
        for i in 0..n {
            // SAFETY: the caller's buffers hold n bytes; copying forwards
            // never overwrites a byte not yet read.
            unsafe { *dst.add(i) = *src.add(i) };
        }
    } else {
        for i in (0..n).rev() {
            // SAFETY: as above, backwards.
            unsafe { *dst.add(i) = *src.add(i) };
        }
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
