//! The small `rdev-sandbox-init` (worker/small/): both jobs of that
//! program, the launcher every command starts through and the init of
//! every sandbox, made without the C library. The worker carries it in its
//! own binary: it runs the launcher from a sealed memfd ([`launcher`]) and
//! installs the init for its sandboxes like the other one ([`BYTES`]).
//!
//! It takes the same arguments and does the same; it only starts faster
//! (no dynamic loader, no processor probe: about 0.7 ms of CPU less per
//! start here, docs/BENCHMARKS.md). Where it was not built (another
//! architecture) or cannot run (a kernel that refuses to execute memfds,
//! a sandbox it fails in), the worker uses `rdev-sandbox-init` as before.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The program, built by the worker's build script.
#[cfg(rdev_small_init)]
pub const BYTES: Option<&[u8]> = Some(include_bytes!(env!("RDEV_SMALL_INIT_BIN")));
#[cfg(not(rdev_small_init))]
pub const BYTES: Option<&[u8]> = None;

/// The memfd (held open for the worker's life) and the path that runs it.
struct Loaded {
    _fd: OwnedFd,
    path: PathBuf,
}

/// `/proc/self/fd/N`, the program in this process's sealed memfd, once it
/// answered its `--check` here; `None` where it is not built or cannot run
/// (said once in the log). The first call loads and checks it: call it at
/// start, not on a command's path.
pub fn launcher() -> Option<&'static Path> {
    static LOADED: OnceLock<Option<Loaded>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = BYTES?;
            match load(bytes) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::info!(
                        error = %e,
                        "the small init cannot run from a memfd here: commands start through an installed copy, or rdev-sandbox-init"
                    );
                    None
                }
            }
        })
        .as_ref()
        .map(|l| l.path.as_path())
}

fn load(bytes: &[u8]) -> std::io::Result<Loaded> {
    let fd = executable_memfd()?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    // Nothing can change it from now on, not even through this descriptor.
    let seals = nix::libc::F_SEAL_SEAL
        | nix::libc::F_SEAL_SHRINK
        | nix::libc::F_SEAL_GROW
        | nix::libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on a descriptor we own.
    if unsafe { nix::libc::fcntl(file.as_raw_fd(), nix::libc::F_ADD_SEALS, seals) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = OwnedFd::from(file);
    // The descriptor is close-on-exec: a child resolves this path in its
    // own copy of the table while it executes it, and nothing after that
    // inherits it.
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let status = super::process::spawn_exclusive(|| {
        std::process::Command::new(&path)
            .arg("--check")
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    })?;
    if !status.success() {
        return Err(std::io::Error::other(format!("--check: {status}")));
    }
    Ok(Loaded { _fd: fd, path })
}

/// A memfd that may be executed: `MFD_EXEC` where the kernel knows it
/// (6.3 and later, where `vm.memfd_noexec` may otherwise seal it against
/// execution), without it before.
fn executable_memfd() -> std::io::Result<OwnedFd> {
    const MFD_EXEC: nix::libc::c_uint = 0x10;
    let flags = nix::libc::MFD_CLOEXEC | nix::libc::MFD_ALLOW_SEALING;
    let create = |flags: nix::libc::c_uint| {
        // SAFETY: a NUL-terminated name and flags; a new descriptor on success.
        let fd = unsafe { nix::libc::memfd_create(c"rdev-sandbox-init".as_ptr(), flags) };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: memfd_create returned a new descriptor we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    match create(flags | MFD_EXEC) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => create(flags),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built for this machine, it runs here (the tests' machines have a
    /// kernel that executes memfds).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_small_launcher_is_built_and_runs_here() {
        assert!(
            BYTES.is_some(),
            "the build script did not build the small init"
        );
        let p = launcher().expect("the small launcher runs");
        assert!(p.starts_with("/proc/self/fd/"), "{}", p.display());
        assert_eq!(launcher(), Some(p), "loaded once");
    }
}
