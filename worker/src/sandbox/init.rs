//! The sandbox's process 1, `rdev-sandbox-init` (its own binary in this
//! crate, `src/bin/rdev-sandbox-init/`): finding it, giving the sandbox
//! user a copy it can read, and reading its status line. Beside the copy,
//! the `/dev` the sandboxes bind (`prepare_dev`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// File name of the init binary.
pub const INIT_NAME: &str = "rdev-sandbox-init";

/// The init binary as the sandbox sees it: a private copy in a directory
/// of its own (readable by the sandbox user even when the worker's
/// installation directory is not), removed on drop.
#[derive(Debug)]
pub struct InstalledInit {
    dir: PathBuf,
    path: PathBuf,
    /// The small init the worker carries, not a copy of a file.
    built_in: bool,
    /// The sandboxes' `/dev`, prepared beside it, or why there is none.
    dev: Result<PathBuf, String>,
}

impl InstalledInit {
    /// Copies `source` into a fresh directory under the system's temporary
    /// directory (mode 0755, the file 0555).
    pub fn install(source: &Path) -> Result<Self, String> {
        Self::install_with(&source.display().to_string(), false, |to| {
            fs::copy(source, to).map(drop)
        })
    }

    /// As [`InstalledInit::install`], the program being `bytes` (the small
    /// init the worker carries).
    pub fn install_bytes(bytes: &[u8]) -> Result<Self, String> {
        Self::install_with("the small init", true, |to| fs::write(to, bytes))
    }

    fn install_with(
        what: &str,
        built_in: bool,
        write: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("rdev-sandbox-{:016x}", rand::random::<u64>()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut installed = Self {
            path: dir.join(INIT_NAME),
            dev: Err(String::new()),
            dir,
            built_in,
        };
        fs::set_permissions(&installed.dir, fs::Permissions::from_mode(0o755))
            // A copy open for writing when another thread starts a process
            // stays open in that child until its exec, and running the copy
            // meanwhile fails with ETXTBSY: no process starts while it is
            // written (see `spawn_exclusive`).
            .and_then(|()| super::process::spawn_exclusive(|| write(&installed.path)))
            .and_then(|()| fs::set_permissions(&installed.path, fs::Permissions::from_mode(0o555)))
            .map_err(|e| {
                format!(
                    "cannot install {what} into {}: {e}",
                    installed.dir.display()
                )
            })?;
        installed.dev = prepare_dev(&installed.dir.join("dev"));
        Ok(installed)
    }

    /// The prepared `/dev` (see [`prepare_dev`]), or why there is none.
    pub fn dev(&self) -> Result<&Path, &str> {
        self.dev.as_deref().map_err(String::as_str)
    }

    /// Gives up the prepared `/dev` (it failed the sandbox's probe): the
    /// sandboxes get bubblewrap's own.
    pub fn forget_dev(&mut self, why: String) {
        self.dev = Err(why);
    }

    /// Where the copy is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is the small init the worker carries.
    pub fn is_built_in(&self) -> bool {
        self.built_in
    }

    /// What starts bubblewrap for it (`--launch`): the same program, the
    /// small one from the worker's memfd when it is the small init.
    pub fn launcher(&self) -> &Path {
        match super::small::launcher() {
            Some(small) if self.built_in => small,
            _ => &self.path,
        }
    }
}

impl Drop for InstalledInit {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The devices of a sandbox's `/dev`, as bubblewrap's `--dev` makes them:
/// name, major, minor.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Makes `dev`, the `/dev` every sandbox without a terminal binds
/// (`--dev-bind`; not remounted read-only, which would make it `nodev`:
/// the directory and its entries belong to the host's root, mode 0755, so
/// a command's user cannot change them): the devices bubblewrap's `--dev` gives
/// (as nodes of their own, mode 0666), `fd`, `stdin`, `stdout`, `stderr`,
/// and an empty `shm` for the sandbox's private tmpfs. One bind instead of
/// `--dev`'s tmpfs, six device binds and devpts: about 0.6 ms less CPU for
/// each sandbox's making and teardown (docs/BENCHMARKS.md). What it leaves
/// out is a private `devpts`, so only commands with a terminal can open
/// new pseudo-terminals (`RDEV_SANDBOX_PTYS=always` gives them to all).
///
/// Needs a worker that may make device nodes (root) on a filesystem that
/// honours them (not mounted `nodev`, as some `/tmp`s are): checked by
/// writing to the `null` made. An `Err` says why it cannot be had.
pub fn prepare_dev(dev: &Path) -> Result<PathBuf, String> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let made = || -> Result<(), String> {
        let io = |what: &str, e: std::io::Error| format!("cannot {what}: {e}");
        fs::create_dir(dev).map_err(|e| io("create the directory", e))?;
        fs::set_permissions(dev, fs::Permissions::from_mode(0o755))
            .map_err(|e| io("set its mode", e))?;
        for (name, major, minor) in DEVICES {
            let path = dev.join(name);
            mknod(
                &path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            )
            .map_err(|e| format!("cannot make the device {name}: {e}"))?;
            // The umask took bits off.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
                .map_err(|e| io("set a device's mode", e))?;
        }
        fs::OpenOptions::new()
            .write(true)
            .open(dev.join("null"))
            .and_then(|mut null| std::io::Write::write_all(&mut null, b"x"))
            .map_err(|e| io("use the device null made (a filesystem mounted nodev?)", e))?;
        fs::create_dir(dev.join("shm")).map_err(|e| io("create shm", e))?;
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            std::os::unix::fs::symlink(target, dev.join(name)).map_err(|e| io("link", e))?;
        }
        Ok(())
    };
    match made() {
        Ok(()) => Ok(dev.to_path_buf()),
        Err(e) => {
            let _ = fs::remove_dir_all(dev);
            Err(format!("{}: {e}", dev.display()))
        }
    }
}

/// Finds the init binary: `configured`, else beside this executable, else
/// in its parent directory (test binaries live in `target/<profile>/deps`,
/// the crate's binaries in `target/<profile>`).
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("RDEV_SANDBOX_INIT: {} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    [dir.join(INIT_NAME), dir.join("..").join(INIT_NAME)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{INIT_NAME} not found beside {} (install it with the worker, or set RDEV_SANDBOX_INIT)",
                exe.display()
            )
        })
}

/// What the init reported about the command's main process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// The program could not be executed (errno).
    ExecFailed(i32),
    /// No status line: the sandbox never ran the command (or its init was
    /// killed).
    Nothing,
}

/// Whether `report` holds the init's last line: `exited N` or
/// `signaled N`, which it writes just before it exits (an `exec-failed`
/// line comes before one of them).
pub fn is_final(report: &[u8]) -> bool {
    report
        .split(|b| *b == b'\n')
        .rev()
        .skip(1) // what follows the last newline: not a whole line yet
        .any(|line| line.starts_with(b"exited ") || line.starts_with(b"signaled "))
}

/// Whether `report` holds the line a warm sandbox's init writes once it is
/// set up and waits for its command.
pub fn is_waiting(report: &[u8]) -> bool {
    report
        .split(|b| *b == b'\n')
        .rev()
        .skip(1)
        .any(|line| line == b"waiting")
}

/// Whether a serving init said it ends after this command (it left a
/// System V IPC object): its sandbox is not used again.
pub fn is_ending(report: &[u8]) -> bool {
    report.split(|b| *b == b'\n').any(|line| line == b"ending")
}

/// Reads the init's status lines: an `exec-failed` line wins (the child
/// also exits 127 after it), else the last `exited`/`signaled` line.
pub fn parse_report(text: &str) -> Report {
    let mut report = Report::Nothing;
    for line in text.lines() {
        let mut parts = line.split(' ');
        let (Some(kind), Some(Ok(n))) = (parts.next(), parts.next().map(str::parse::<i32>)) else {
            continue;
        };
        match kind {
            "exec-failed" => return Report::ExecFailed(n),
            "exited" => report = Report::Exited(n),
            "signaled" => report = Report::Signaled(n),
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_report("exited 3\n"), Report::Exited(3));
        assert_eq!(parse_report("signaled 9\n"), Report::Signaled(9));
        assert_eq!(
            parse_report("exec-failed 2\nexited 127\n"),
            Report::ExecFailed(2)
        );
        assert_eq!(parse_report(""), Report::Nothing);
        assert_eq!(parse_report("ending\nexited 0\n"), Report::Exited(0));
        assert!(is_ending(b"ending\nexited 0\n"));
        assert!(!is_ending(b"exited 0\n"));
        assert!(is_final(b"exited 0\n"));
        assert!(is_final(b"exec-failed 2\nexited 127\n"));
        assert!(!is_final(b"exec-failed 2\n"));
        assert!(
            !is_final(b"exited 0"),
            "a line without its newline may be cut"
        );
        assert!(!is_final(b""));
        assert!(is_waiting(b"waiting\n"));
        assert!(
            !is_waiting(b"waiting"),
            "a line without its newline may be cut"
        );
        assert!(!is_waiting(b"exited 0\n"));
        assert_eq!(parse_report("waiting\nexited 4\n"), Report::Exited(4));
        assert!(is_final(b"waiting\nsignaled 9\n"));
        assert_eq!(parse_report("garbage\nexited x\n"), Report::Nothing);
    }
}
