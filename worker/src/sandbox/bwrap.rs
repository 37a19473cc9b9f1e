//! The bubblewrap command line of one sandbox (pure: paths in, arguments
//! out). The options go to bwrap through a memfd (`--args`), so a command's
//! environment never shows in the host's process list; the command itself
//! must follow on the real command line (bwrap reads only options from
//! `--args`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use rdev_shared::containment::NetworkMode;

/// Where the project workdir appears inside the sandbox (and `HOME`).
pub const WORKSPACE: &str = "/workspace";
/// Where the init binary appears inside the sandbox.
pub const INIT_PATH: &str = "/.rdev/init";
/// Host name inside the sandbox.
pub const HOSTNAME: &str = "rdev-sandbox";
/// The private tmpfs of secret files (see [`crate::secrets::SECRETS_DIR`]).
pub const SECRETS_DIR: &str = crate::secrets::SECRETS_DIR;
/// Size of that tmpfs: secret values are at most 32 KiB, 64 of them.
const SECRETS_TMPFS_BYTES: &str = "4194304";

/// System directories shown read-only (or as the host's symlinks, on
/// merged-/usr systems).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Everything a sandbox is made of.
#[derive(Debug)]
pub struct Layout<'a> {
    /// The init binary on the host.
    pub init: &'a Path,
    /// The project workdir on the host.
    pub workdir: &'a Path,
    /// Network mode.
    pub network: NetworkMode,
    /// Size of each private tmpfs (`/tmp`, `/dev/shm`).
    pub tmpfs_bytes: u64,
    /// A prepared `/dev` to bind (`init::prepare_dev`); `None`: bwrap's
    /// `--dev` (with a private devpts, for pseudo-terminals).
    pub dev: Option<&'a Path>,
    /// Extra read-only host paths.
    pub ro_paths: &'a [PathBuf],
    /// Host paths to hide (under the read-only `/etc` and the extra paths).
    pub hide: &'a [PathBuf],
    /// The command's complete environment.
    pub env: &'a BTreeMap<String, String>,
    /// Descriptor the init writes its status line to.
    pub status_fd: RawFd,
    /// Descriptor that becomes the command's standard error.
    pub stderr_fd: RawFd,
    /// The terminal that becomes the command's controlling terminal and
    /// standard streams, if it has one.
    pub tty_fd: Option<RawFd>,
    /// Descriptor bwrap writes its JSON status to (the init's host pid).
    pub json_fd: RawFd,
    /// The program and its arguments.
    pub argv: &'a [OsString],
    /// How a warm sandbox's init receives its command (then `argv` and
    /// `env` are empty); `None`: it runs `argv`.
    pub wait: Option<Wait>,
    /// Secret files: path under [`SECRETS_DIR`] and the descriptor holding
    /// the contents.
    pub secret_files: &'a [(&'a str, RawFd)],
}

/// How a warm sandbox's init receives its command(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// One command: the go pipe and the command's memfd (the init's
    /// `--wait`).
    Once { go: RawFd, command: RawFd },
    /// One command after another over a socket, each with its own
    /// streams (the init's `--serve`).
    Serve { socket: RawFd },
}

/// How a host path looks, for choosing the bwrap operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Absent.
    Missing,
    /// A symlink (shown as the same symlink).
    Symlink,
    /// A directory.
    Dir,
    /// Anything else.
    File,
    /// A file the sandbox's user cannot read, or a directory it can
    /// neither list nor enter: its mode bits deny it and it has no ACL.
    Unreadable,
}

/// Who the sandbox's processes are on the host, for reading files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    /// User id.
    pub uid: u32,
    /// Group ids (the primary one and any supplementary ones).
    pub gids: Vec<u32>,
}

/// Looks at a host path without following a final symlink, and tells a
/// file `reader` cannot read apart (a sandbox holds no capabilities, so
/// mode bits decide; a file with a POSIX ACL counts as readable).
pub fn kind_for(path: &Path, reader: &Reader) -> Kind {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Kind::Missing;
    };
    if m.file_type().is_symlink() {
        return Kind::Symlink;
    }
    // What the reader needs: a file's read bit; a directory's read (to
    // list it) or execute bit (to reach what is in it).
    let bits = if m.is_dir() { 0o5 } else { 0o4 };
    let mode = m.mode();
    let allowed = reader.uid == 0
        || mode & bits != 0
        || (m.uid() == reader.uid && mode & (bits << 6) != 0)
        || (reader.gids.contains(&m.gid()) && mode & (bits << 3) != 0)
        || has_acl(path);
    match (allowed, m.is_dir()) {
        (false, _) => Kind::Unreadable,
        (true, true) => Kind::Dir,
        (true, false) => Kind::File,
    }
}

/// Whether `path` carries a POSIX access ACL (or the question cannot be
/// answered: then it is treated as having one).
fn has_acl(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: both strings are NUL-terminated and live across the call; a
    // null buffer of size 0 only asks for the attribute's size.
    let n = unsafe {
        nix::libc::lgetxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(nix::libc::ENODATA)
}

/// bwrap's options and, apart, the command (`--` onwards).
#[derive(Debug)]
pub struct CommandLine {
    /// Options, for `--args`.
    pub options: Vec<OsString>,
    /// `--`, the init and its arguments, `--`, the program and its arguments.
    pub command: Vec<OsString>,
}

/// The arguments after `bwrap` (`kind` looks at host paths; tests pass
/// their own).
pub fn arguments(l: &Layout<'_>, kind: impl Fn(&Path) -> Kind) -> CommandLine {
    let mut a = Args::default();
    namespaces(&mut a, l.network);
    // The process: a new session (no controlling terminal, so no TIOCSTI
    // into the worker's), killed with bwrap, our init as PID 1.
    a.push(["--die-with-parent", "--new-session", "--as-pid-1"]);
    a.push(["--clearenv"]);
    for (k, v) in l.env {
        a.push(["--setenv"]);
        a.push([k.as_str(), v.as_str()]);
    }
    filesystem(&mut a, l, &kind);
    let json = l.json_fd.to_string();
    a.push(["--json-status-fd", json.as_str()]);
    CommandLine {
        options: a.0,
        command: init_command(l),
    }
}

/// Namespaces. The user namespace is what lets an unprivileged bwrap make
/// the others; nested ones are refused inside.
fn namespaces(a: &mut Args, network: NetworkMode) {
    a.push([
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--unshare-ipc",
    ]);
    a.push([
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        HOSTNAME,
    ]);
    if network == NetworkMode::None {
        a.push(["--unshare-net"]);
    }
}

/// The filesystem: a fresh (read-only) tmpfs root with the system
/// directories, /etc minus secrets, and the workdir.
fn filesystem(a: &mut Args, l: &Layout<'_>, kind: &impl Fn(&Path) -> Kind) {
    system_dirs(a, kind);
    a.push(["--ro-bind", "/etc", "/etc"]);
    for p in l.ro_paths {
        a.push(["--ro-bind-try"]);
        a.push_os([p.as_os_str().to_owned(), p.as_os_str().to_owned()]);
    }
    hidden(a, l.hide, kind);
    let size = l.tmpfs_bytes.to_string();
    a.push(["--proc", "/proc"]);
    match l.dev {
        Some(dev) => {
            a.push(["--dev-bind"]);
            a.push_os([dev.as_os_str().to_owned(), OsString::from("/dev")]);
        }
        None => a.push(["--dev", "/dev"]),
    }
    a.push(["--size", size.as_str(), "--tmpfs", "/dev/shm"]);
    a.push(["--size", size.as_str(), "--tmpfs", "/tmp"]);
    a.push(["--ro-bind"]);
    a.push_os([l.init.as_os_str().to_owned(), OsString::from(INIT_PATH)]);
    a.push(["--bind"]);
    a.push_os([l.workdir.as_os_str().to_owned(), OsString::from(WORKSPACE)]);
    if !l.secret_files.is_empty() {
        secret_files(a, l.secret_files);
    }
    // bwrap's /dev is a tmpfs: made read-only (its device binds are mounts
    // of their own, so they stay usable). The prepared one stays as bound:
    // remounting it would make its devices unusable (nodev), and the
    // command's user cannot change it (it belongs to the host's root).
    if l.dev.is_none() {
        a.push(["--remount-ro", "/dev"]);
    }
    a.push(["--remount-ro", "/", "--chdir", WORKSPACE]);
}

/// The system directories, read-only (or the host's symlinks).
fn system_dirs(a: &mut Args, kind: &impl Fn(&Path) -> Kind) {
    for dir in SYSTEM_DIRS {
        let p = Path::new(dir);
        match kind(p) {
            Kind::Symlink => {
                if let Ok(target) = std::fs::read_link(p) {
                    a.push(["--symlink"]);
                    a.push_os([target.into_os_string(), OsString::from(dir)]);
                }
            }
            Kind::Dir => a.push(["--ro-bind", dir, dir]),
            Kind::Missing | Kind::File | Kind::Unreadable => {}
        }
    }
}

/// Hidden host paths: an empty tmpfs over a directory, `/dev/null` over
/// anything else the sandbox's user could read. A file it cannot read
/// (`/etc/shadow` for `nobody`), or a directory it can neither list nor
/// enter (`/etc/ssl/private`, 0710 `root:ssl-cert`), stays as it is: each
/// mount costs bwrap a pass over the mount table, and its teardown.
fn hidden(a: &mut Args, hide: &[PathBuf], kind: &impl Fn(&Path) -> Kind) {
    for p in hide {
        match kind(p) {
            Kind::Dir => {
                a.push(["--tmpfs"]);
                a.push_os([p.as_os_str().to_owned()]);
            }
            Kind::File | Kind::Symlink => {
                a.push(["--ro-bind", "/dev/null"]);
                a.push_os([p.as_os_str().to_owned()]);
            }
            Kind::Missing | Kind::Unreadable => {}
        }
    }
}

/// `--`, the init and its arguments, `--`, the program and its arguments
/// (or, for a warm sandbox, `--wait GO_FD COMMAND_FD` or `--serve
/// SOCKET_FD`).
fn init_command(l: &Layout<'_>) -> Vec<OsString> {
    let mut c = Args::default();
    let (status, stderr) = (l.status_fd.to_string(), l.stderr_fd.to_string());
    c.push(["--", INIT_PATH, status.as_str(), stderr.as_str()]);
    if let Some(tty) = l.tty_fd {
        let tty = tty.to_string();
        c.push(["--tty", tty.as_str()]);
    }
    match l.wait {
        Some(Wait::Once { go, command }) => {
            let (go, command) = (go.to_string(), command.to_string());
            c.push(["--wait", go.as_str(), command.as_str()]);
            return c.0;
        }
        Some(Wait::Serve { socket }) => {
            c.push(["--serve", socket.to_string().as_str()]);
            return c.0;
        }
        None => {}
    }
    c.push(["--"]);
    c.push_os(l.argv.iter().cloned());
    c.0
}

/// A tmpfs of the sandbox's own (nothing of it exists on the host; it ends
/// with the sandbox's mount namespace), owned by the command's user, with
/// each file copied in from its descriptor, readable by that user only,
/// then made read-only.
fn secret_files(a: &mut Args, files: &[(&str, RawFd)]) {
    a.push([
        "--perms",
        "0700",
        "--size",
        SECRETS_TMPFS_BYTES,
        "--tmpfs",
        SECRETS_DIR,
    ]);
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _) in files {
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            dirs.insert(parts[..depth].join("/"));
        }
    }
    // BTreeSet order puts a parent before its children.
    for dir in dirs {
        let dest = format!("{SECRETS_DIR}/{dir}");
        a.push(["--perms", "0700", "--dir", dest.as_str()]);
    }
    for (path, fd) in files {
        let (fd, dest) = (fd.to_string(), format!("{SECRETS_DIR}/{path}"));
        a.push(["--perms", "0400", "--file", fd.as_str(), dest.as_str()]);
    }
    a.push(["--remount-ro", SECRETS_DIR]);
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push<const N: usize>(&mut self, items: [&str; N]) {
        self.0.extend(items.iter().map(OsString::from));
    }

    fn push_os(&mut self, items: impl IntoIterator<Item = OsString>) {
        self.0.extend(items);
    }
}

/// `--args` takes NUL-separated arguments.
pub fn encode(args: &[OsString]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_the_sandbox_user_cannot_read_is_told_apart() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("rdev-kind-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).expect("dir");
        let file = dir.join("secret");
        std::fs::write(&file, "x").expect("file");
        let meta = std::fs::metadata(&file).expect("meta");
        let (uid, gid) = (meta.uid(), meta.gid());
        let chmod = |mode| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        let stranger = Reader {
            uid: uid + 1,
            gids: vec![gid + 1],
        };
        let in_group = Reader {
            uid: uid + 1,
            gids: vec![gid],
        };
        let owner = Reader {
            uid,
            gids: Vec::new(),
        };
        let root = Reader {
            uid: 0,
            gids: Vec::new(),
        };
        chmod(0o600);
        assert_eq!(kind_for(&file, &stranger), Kind::Unreadable);
        assert_eq!(kind_for(&file, &in_group), Kind::Unreadable);
        assert_eq!(kind_for(&file, &owner), Kind::File);
        chmod(0o640);
        assert_eq!(kind_for(&file, &stranger), Kind::Unreadable);
        assert_eq!(kind_for(&file, &in_group), Kind::File);
        chmod(0o604);
        assert_eq!(kind_for(&file, &stranger), Kind::File);
        chmod(0o000);
        assert_eq!(kind_for(&file, &root), Kind::File, "root reads anything");
        assert_eq!(kind_for(&dir, &stranger), Kind::Dir);
        assert_eq!(kind_for(&dir.join("gone"), &stranger), Kind::Missing);
        // A directory: hidden unless its user can neither list nor enter it.
        let chmod_dir = |mode| {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        chmod_dir(0o710);
        assert_eq!(kind_for(&dir, &stranger), Kind::Unreadable);
        assert_eq!(kind_for(&dir, &in_group), Kind::Dir, "may enter it");
        assert_eq!(kind_for(&dir, &owner), Kind::Dir);
        chmod_dir(0o704);
        assert_eq!(kind_for(&dir, &stranger), Kind::Dir, "may list it");
        chmod_dir(0o700);
        assert_eq!(kind_for(&dir, &in_group), Kind::Unreadable);
        assert_eq!(kind_for(&dir, &root), Kind::Dir);
        chmod_dir(0o755);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn an_unreadable_hidden_file_needs_no_mount() {
        let env = BTreeMap::new();
        let argv = [OsString::from("true")];
        let hide = [
            PathBuf::from("/etc/shadow"),
            PathBuf::from("/etc/secret.conf"),
        ];
        let layout = Layout {
            init: Path::new("/i"),
            workdir: Path::new("/w"),
            network: NetworkMode::Host,
            tmpfs_bytes: 1024,
            dev: None,
            ro_paths: &[],
            hide: &hide,
            env: &env,
            status_fd: 7,
            stderr_fd: 8,
            tty_fd: None,
            json_fd: 9,
            argv: &argv,
            wait: None,
            secret_files: &[],
        };
        let kind = |p: &Path| match p.to_str() {
            Some("/etc/shadow") => Kind::Unreadable,
            Some("/etc/secret.conf") => Kind::File,
            _ => Kind::Missing,
        };
        let args = strings(&arguments(&layout, kind).options);
        assert!(!args.iter().any(|a| a == "/etc/shadow"), "{args:?}");
        assert!(window(&args, &["--dev", "/dev"]), "no prepared /dev");
        assert!(window(&args, &["--remount-ro", "/dev"]));
        assert!(window(
            &args,
            &["--ro-bind", "/dev/null", "/etc/secret.conf"]
        ));
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn window(args: &[String], needle: &[&str]) -> bool {
        args.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_layout_becomes_bwrap_arguments() {
        let env = BTreeMap::from([("HOME".to_owned(), WORKSPACE.to_owned())]);
        let argv = [
            OsString::from("sh"),
            OsString::from("-c"),
            OsString::from("echo hi"),
        ];
        let hide = [
            PathBuf::from("/etc/shadow"),
            PathBuf::from("/etc/ssh"),
            PathBuf::from("/etc/gone"),
        ];
        let layout = Layout {
            init: Path::new("/tmp/x/init"),
            workdir: Path::new("/srv/ws/app"),
            network: NetworkMode::None,
            tmpfs_bytes: 1024,
            dev: Some(Path::new("/tmp/x/dev")),
            ro_paths: &[PathBuf::from("/opt/tools")],
            hide: &hide,
            env: &env,
            status_fd: 7,
            stderr_fd: 8,
            tty_fd: None,
            json_fd: 9,
            argv: &argv,
            wait: None,
            secret_files: &[],
        };
        let kind = |p: &Path| match p.to_str() {
            Some("/bin" | "/lib") => Kind::Symlink,
            Some("/usr" | "/etc/ssh") => Kind::Dir,
            Some("/etc/shadow") => Kind::File,
            _ => Kind::Missing,
        };
        let line = arguments(&layout, kind);
        let args = strings(&line.options);
        assert!(window(&args, &["--unshare-net"]));
        assert!(window(&args, &["--ro-bind", "/usr", "/usr"]));
        assert!(
            !args.iter().any(|a| a == "/lib64"),
            "missing dirs are skipped"
        );
        assert!(window(&args, &["--ro-bind", "/dev/null", "/etc/shadow"]));
        assert!(window(&args, &["--tmpfs", "/etc/ssh"]));
        assert!(!args.iter().any(|a| a == "/etc/gone"));
        assert!(window(
            &args,
            &["--ro-bind-try", "/opt/tools", "/opt/tools"]
        ));
        assert!(window(&args, &["--setenv", "HOME", WORKSPACE]));
        assert!(window(&args, &["--bind", "/srv/ws/app", WORKSPACE]));
        assert!(window(&args, &["--size", "1024", "--tmpfs", "/tmp"]));
        assert!(window(&args, &["--json-status-fd", "9"]));
        // The prepared /dev instead of bwrap's, its shm a private tmpfs on
        // it; not remounted (that would make it nodev).
        assert!(window(&args, &["--dev-bind", "/tmp/x/dev", "/dev"]));
        assert!(!args.iter().any(|a| a == "--dev"));
        let dev = args.iter().position(|a| a == "--dev-bind").expect("dev");
        let shm = args.iter().position(|a| a == "/dev/shm").expect("shm");
        assert!(dev < shm);
        assert!(!window(&args, &["--remount-ro", "/dev"]));
        assert_eq!(
            strings(&line.command),
            ["--", INIT_PATH, "7", "8", "--", "sh", "-c", "echo hi"]
        );
        assert!(
            !args.iter().any(|a| a == "--"),
            "no command among the options"
        );
        // The root becomes read-only after every mount point exists.
        let ro = args
            .iter()
            .position(|a| a == "--remount-ro")
            .expect("remount");
        let bind = args.iter().position(|a| a == "--bind").expect("bind");
        assert!(ro > bind);
        let clear = args
            .iter()
            .position(|a| a == "--clearenv")
            .expect("clearenv");
        let set = args.iter().position(|a| a == "--setenv").expect("setenv");
        assert!(clear < set, "--clearenv before --setenv");
    }

    #[test]
    fn host_network_is_kept_by_default() {
        let env = BTreeMap::new();
        let layout = Layout {
            init: Path::new("/i"),
            workdir: Path::new("/w"),
            network: NetworkMode::Host,
            tmpfs_bytes: 1,
            dev: None,
            ro_paths: &[],
            hide: &[],
            env: &env,
            status_fd: 3,
            stderr_fd: 4,
            tty_fd: Some(6),
            json_fd: 5,
            argv: &[OsString::from("true")],
            wait: None,
            secret_files: &[],
        };
        let line = arguments(&layout, |_| Kind::Missing);
        let args = strings(&line.options);
        assert!(!args.iter().any(|a| a == "--unshare-net"));
        assert!(!args.iter().any(|a| a == SECRETS_DIR));
        assert_eq!(
            strings(&line.command),
            ["--", INIT_PATH, "3", "4", "--tty", "6", "--", "true"]
        );
    }

    #[test]
    fn a_warm_sandbox_waits_for_its_command() {
        let env = BTreeMap::new();
        let layout = Layout {
            init: Path::new("/i"),
            workdir: Path::new("/w"),
            network: NetworkMode::None,
            tmpfs_bytes: 1,
            dev: None,
            ro_paths: &[],
            hide: &[],
            env: &env,
            status_fd: 3,
            stderr_fd: 4,
            tty_fd: None,
            json_fd: 5,
            argv: &[],
            wait: Some(Wait::Once { go: 7, command: 8 }),
            secret_files: &[],
        };
        let line = arguments(&layout, |_| Kind::Missing);
        let args = strings(&line.options);
        assert!(args.iter().any(|a| a == "--unshare-net"));
        assert!(
            !args.iter().any(|a| a == "--setenv"),
            "the environment comes with the command"
        );
        assert_eq!(
            strings(&line.command),
            ["--", INIT_PATH, "3", "4", "--wait", "7", "8"]
        );
        let serving = Layout {
            wait: Some(Wait::Serve { socket: 9 }),
            ..layout
        };
        assert_eq!(
            strings(&arguments(&serving, |_| Kind::Missing).command),
            ["--", INIT_PATH, "3", "4", "--serve", "9"]
        );
    }

    #[test]
    fn secret_files_go_to_a_private_read_only_tmpfs() {
        let env = BTreeMap::new();
        let files = [("npm/.npmrc", 11), ("npm/sub/key", 12), ("token", 13)];
        let layout = Layout {
            init: Path::new("/i"),
            workdir: Path::new("/w"),
            network: NetworkMode::Host,
            tmpfs_bytes: 1,
            dev: None,
            ro_paths: &[],
            hide: &[],
            env: &env,
            status_fd: 3,
            stderr_fd: 4,
            tty_fd: None,
            json_fd: 5,
            argv: &[OsString::from("true")],
            wait: None,
            secret_files: &files,
        };
        let args = strings(&arguments(&layout, |_| Kind::Missing).options);
        assert!(window(
            &args,
            &[
                "--perms",
                "0700",
                "--size",
                "4194304",
                "--tmpfs",
                SECRETS_DIR
            ]
        ));
        let npm = args
            .iter()
            .position(|a| a == "/run/secrets/npm")
            .expect("npm dir");
        let sub = args
            .iter()
            .position(|a| a == "/run/secrets/npm/sub")
            .expect("sub dir");
        assert!(npm < sub, "parents first");
        assert!(window(
            &args,
            &["--perms", "0700", "--dir", "/run/secrets/npm"]
        ));
        assert!(window(
            &args,
            &["--perms", "0400", "--file", "11", "/run/secrets/npm/.npmrc"]
        ));
        assert!(window(
            &args,
            &["--perms", "0400", "--file", "13", "/run/secrets/token"]
        ));
        let ro = args
            .iter()
            .position(|a| a == "--remount-ro")
            .expect("remount");
        assert_eq!(args[ro + 1], SECRETS_DIR, "read-only once filled");
        let file = args.iter().rposition(|a| a == "--file").expect("file");
        assert!(ro > file);
    }

    #[test]
    fn encoded_arguments_are_nul_separated() {
        assert_eq!(
            encode(&[OsString::from("a"), OsString::from("b c")]),
            b"a\0b c\0"
        );
    }
}
