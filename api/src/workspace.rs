//! Files of local projects, beneath the workspace root the workers use
//! (`RDEV_WORKSPACE_ROOT`, shared with them as a volume). Blocking: call
//! from `spawn_blocking`.
//!
//! Confinement is done by the kernel, not by string checks: every path is
//! opened component by component from the project directory's descriptor
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so `..`, absolute
//! paths and symlinks (anywhere in the path, also planted by a command
//! between our check and our use) fail in the same system call that opens
//! the file: no time-of-check/time-of-use window. Special files (FIFOs,
//! devices, sockets) are refused after an `fstat` of the opened descriptor
//! (opened non-blocking, so a FIFO cannot hang the request).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, mkdirat};

/// Longest accepted path, in bytes.
pub const MAX_PATH: usize = 1024;

/// Why a file operation failed; the `Display` text is the client's detail.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The path is malformed (absolute, `..`, empty component, NUL…).
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// Nothing there.
    #[error("no such file or directory")]
    NotFound,
    /// The path leaves the project directory or goes through a symlink.
    #[error("the path leaves the project directory or goes through a symbolic link")]
    Escapes,
    /// A directory where a file was expected, or the other way round.
    #[error("{0}")]
    WrongType(String),
    /// A FIFO, device or socket.
    #[error("special files (FIFOs, devices, sockets) are not served")]
    Special,
    /// A directory that is not empty.
    #[error("the directory is not empty")]
    NotEmpty,
    /// The upload is larger than allowed.
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    /// The project's pod cannot do it now (Kubernetes projects: no ready
    /// pod, RBAC, a tool missing in the container…); says what to fix.
    #[error("{0}")]
    Unavailable(String),
    /// Reading the request body failed (timed out: `TimedOut`).
    #[error("reading the body: {0}")]
    Body(std::io::Error),
    /// Anything else (I/O).
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Errno> for FilesError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::ENOENT => FilesError::NotFound,
            // openat2: a `..` or absolute step (EXDEV), a symlink (ELOOP).
            Errno::EXDEV | Errno::ELOOP => FilesError::Escapes,
            Errno::ENOTDIR => FilesError::WrongType("a path component is not a directory".into()),
            Errno::EISDIR => FilesError::WrongType("is a directory".into()),
            Errno::ENOTEMPTY | Errno::EEXIST => FilesError::NotEmpty,
            other => FilesError::Io(std::io::Error::from(other)),
        }
    }
}

/// Checks a path relative to the project directory: 1-1024 bytes, no NUL or
/// backslash, not absolute, no empty, `.` or `..` component (a trailing `/`
/// is dropped first). The kernel checks again when opening.
pub fn validate_path(path: &str) -> Result<&str, FilesError> {
    let p = path.strip_suffix('/').unwrap_or(path);
    if p.is_empty() || p.len() > MAX_PATH {
        return Err(FilesError::InvalidPath(format!(
            "must be 1-{MAX_PATH} bytes"
        )));
    }
    if p.starts_with('/') || p.contains('\0') || p.contains('\\') {
        return Err(FilesError::InvalidPath("must be a relative path".into()));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(FilesError::InvalidPath(
            "must not contain empty, `.` or `..` components".into(),
        ));
    }
    Ok(p)
}

fn how(flags: OFlag) -> OpenHow {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    // openat2 refuses a mode without O_CREAT.
    if flags.contains(OFlag::O_CREAT) {
        how.mode(Mode::from_bits_truncate(0o644))
    } else {
        how
    }
}

/// Opens `rel` beneath `dir` (see the module doc).
pub fn open_beneath(dir: impl AsFd, rel: &str, flags: OFlag) -> Result<OwnedFd, FilesError> {
    Ok(openat2(dir, OsStr::new(rel), how(flags))?)
}

/// A project's directory, opened (and created, with its parents, when
/// missing) beneath the workspace root. When this process is root and the
/// directory belongs to root, it is given to `owner` (the user commands run
/// as), as a worker does before each command: files uploaded before the
/// first command are then the commands' to change, since every file and
/// directory the API creates belongs to the project directory's owner.
pub fn project_dir(
    root: &Path,
    rel: &str,
    owner: Option<(u32, u32)>,
) -> Result<OwnedFd, FilesError> {
    std::fs::create_dir_all(root)?;
    let root_fd: OwnedFd = File::open(root)?.into();
    let dir = ensure_dirs(&root_fd, rel)?;
    if let Some((uid, gid)) = owner
        && nix::unistd::geteuid().is_root()
        && fstat(dir.as_fd())?.st_uid == 0
    {
        nix::unistd::fchown(
            dir.as_fd(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )?;
    }
    Ok(dir)
}

/// The user commands run as, when this process is root (else `None`: files
/// are this process's): `spec` (`RDEV_SANDBOX_USER`, a name or
/// `uid[:gid]`), by default `rdev-run` when it exists, else `nobody`: the
/// worker's rule. A root user is never returned.
pub fn sandbox_owner(spec: Option<&str>) -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let by_name = |n: &str| {
        nix::unistd::User::from_name(n)
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
    };
    let owner = match spec.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) if s.starts_with(|c: char| c.is_ascii_digit()) => {
            let (u, g) = s.split_once(':').unwrap_or((s, s));
            Some((u.parse().ok()?, g.parse().ok()?))
        }
        Some(name) => by_name(name),
        None => by_name("rdev-run").or_else(|| by_name("nobody")),
    };
    owner.filter(|(u, g)| *u != 0 && *g != 0)
}

/// Opens the directory `rel` beneath `dir`, creating missing components
/// (mode 0755, owned like `dir` when we run as root).
pub fn ensure_dirs(dir: &OwnedFd, rel: &str) -> Result<OwnedFd, FilesError> {
    let owner = fstat(dir.as_fd())?;
    let mut cur = open_beneath(dir, ".", OFlag::O_DIRECTORY | OFlag::O_RDONLY)?;
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        match mkdirat(
            cur.as_fd(),
            OsStr::new(part),
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) => {
                let _ = give_to(&cur, part, &owner);
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        cur = open_beneath(&cur, part, OFlag::O_DIRECTORY | OFlag::O_RDONLY)?;
    }
    Ok(cur)
}

/// Gives `name` (in `dir`) to the owner of `like`, when this process may
/// (as root): files a client uploads belong to whoever owns the project
/// directory (the sandbox user commands run as), so commands can change them.
pub fn give_to(dir: &OwnedFd, name: &str, like: &FileStat) -> Result<(), FilesError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    nix::unistd::fchownat(
        dir.as_fd(),
        OsStr::new(name),
        Some(nix::unistd::Uid::from_raw(like.st_uid)),
        Some(nix::unistd::Gid::from_raw(like.st_gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (listed, never followed).
    Symlink,
    /// A FIFO, device or socket (listed, never served).
    Special,
}

fn kind_of(st: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Special,
    }
}

/// One directory entry, or a stat answer.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Entry {
    /// Name within its directory.
    pub name: String,
    /// What it is.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, octal (e.g. `644`).
    pub mode: String,
    /// Last modification, RFC 3339.
    pub mtime: chrono::DateTime<chrono::Utc>,
}

fn entry(name: String, st: &FileStat) -> Entry {
    Entry {
        name,
        kind: kind_of(st),
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: format!("{:o}", st.st_mode & 0o7777),
        mtime: chrono::DateTime::from_timestamp(st.st_mtime, 0).unwrap_or_default(),
    }
}

/// Opens a regular file for reading; its size.
pub fn open_file(dir: &OwnedFd, rel: &str) -> Result<(File, u64), FilesError> {
    // Non-blocking: opening a FIFO must not wait for a writer.
    let fd = open_beneath(dir, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
    let st = fstat(fd.as_fd())?;
    match kind_of(&st) {
        Kind::File => {}
        Kind::Dir => {
            return Err(FilesError::WrongType(
                "is a directory (list it with `?list`)".into(),
            ));
        }
        _ => return Err(FilesError::Special),
    }
    let flags = OFlag::from_bits_truncate(nix::fcntl::fcntl(
        fd.as_fd(),
        nix::fcntl::FcntlArg::F_GETFL,
    )?);
    nix::fcntl::fcntl(
        fd.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK),
    )?;
    Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
}

/// Splits `a/b/c` into (`a/b`, `c`).
pub fn split_parent(rel: &str) -> (&str, &str) {
    match rel.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", rel),
    }
}

/// A new upload: a temporary file beside its destination, renamed over it
/// when complete (readers never see a partial file), removed if dropped
/// before [`Upload::commit`].
pub struct Upload {
    parent: OwnedFd,
    tmp: String,
    name: String,
    owner: FileStat,
    committed: bool,
}

impl Upload {
    /// Creates the parents of `rel` and the temporary file; returns it
    /// open for writing.
    pub fn start(project: &OwnedFd, rel: &str) -> Result<(Self, File), FilesError> {
        let (parent_rel, name) = split_parent(rel);
        let parent = ensure_dirs(project, parent_rel)?;
        // An existing directory (or a symlink) at the destination is refused
        // now rather than after the upload.
        match open_beneath(&parent, name, OFlag::O_PATH) {
            Ok(fd) => match kind_of(&fstat(fd.as_fd())?) {
                Kind::File => {}
                Kind::Dir => return Err(FilesError::WrongType("is a directory".into())),
                _ => return Err(FilesError::Special),
            },
            Err(FilesError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let tmp = format!(".rdev-upload-{:016x}", rand::random::<u64>());
        let fd = open_beneath(
            &parent,
            &tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
        )?;
        let owner = fstat(project.as_fd())?;
        Ok((
            Self {
                parent,
                tmp,
                name: name.to_owned(),
                owner,
                committed: false,
            },
            File::from(fd),
        ))
    }

    /// Moves the complete file into place (atomically replacing a file of
    /// that name) and gives it to the project directory's owner.
    pub fn commit(mut self) -> Result<(), FilesError> {
        let _ = give_to(&self.parent, &self.tmp, &self.owner);
        nix::fcntl::renameat(
            self.parent.as_fd(),
            OsStr::new(&self.tmp),
            self.parent.as_fd(),
            OsStr::new(&self.name),
        )?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            let _ = nix::unistd::unlinkat(
                self.parent.as_fd(),
                OsStr::new(&self.tmp),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Removes a file, a symlink (not its target) or an empty directory.
pub fn remove(project: &OwnedFd, rel: &str) -> Result<(), FilesError> {
    let (parent_rel, name) = split_parent(rel);
    let parent = if parent_rel.is_empty() {
        open_beneath(project, ".", OFlag::O_DIRECTORY | OFlag::O_RDONLY)?
    } else {
        open_beneath(project, parent_rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY)?
    };
    let st = nix::sys::stat::fstatat(
        parent.as_fd(),
        OsStr::new(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    let flag = if kind_of(&st) == Kind::Dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(parent.as_fd(), OsStr::new(name), flag)?;
    Ok(())
}

/// Stat of `rel` (not following a final symlink); `""` is the project
/// directory itself.
pub fn stat(project: &OwnedFd, rel: &str) -> Result<Entry, FilesError> {
    let (parent_rel, name) = split_parent(rel);
    let parent = open_beneath(
        project,
        if parent_rel.is_empty() {
            "."
        } else {
            parent_rel
        },
        OFlag::O_DIRECTORY | OFlag::O_RDONLY,
    )?;
    let st = nix::sys::stat::fstatat(
        parent.as_fd(),
        OsStr::new(if name.is_empty() { "." } else { name }),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    Ok(entry(name.to_owned(), &st))
}

/// A page of the directory `rel` (`""` = the project directory): the
/// `limit` first entries by name after `after`. Memory is bounded by
/// `limit` whatever the directory's size (a bounded max-heap of names).
pub fn list(
    project: &OwnedFd,
    rel: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Entry>, FilesError> {
    let dir_fd = open_beneath(
        project,
        if rel.is_empty() { "." } else { rel },
        OFlag::O_DIRECTORY | OFlag::O_RDONLY,
    )?;
    let stat_fd = dir_fd.try_clone()?;
    let mut dir = nix::dir::Dir::from_fd(dir_fd)?;
    let mut heap: std::collections::BinaryHeap<Vec<u8>> = std::collections::BinaryHeap::new();
    for e in dir.iter() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." || name.starts_with(b".rdev-upload-") {
            continue;
        }
        if after.is_some_and(|a| name <= a.as_bytes()) {
            continue;
        }
        if heap.len() < limit {
            heap.push(name.to_vec());
        } else if heap.peek().is_some_and(|top| name < top.as_slice()) {
            heap.pop();
            heap.push(name.to_vec());
        }
    }
    let mut names = heap.into_vec();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let st = match nix::sys::stat::fstatat(
            stat_fd.as_fd(),
            OsStr::from_bytes(&name),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            // Removed since it was listed.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        out.push(entry(String::from_utf8_lossy(&name).into_owned(), &st));
    }
    Ok(out)
}

/// The project's directory relative to the workspace root.
pub fn project_rel(project: &rdev_shared::domain::Project) -> Option<String> {
    match &project.executor {
        rdev_shared::domain::ExecutorConfig::Local(l) => {
            Some(l.workdir.clone().unwrap_or_else(|| project.name.clone()))
        }
        rdev_shared::domain::ExecutorConfig::Kubernetes(_) => None,
    }
}

/// The workspace root files are served from.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// `RDEV_WORKSPACE_ROOT` of this API (the workers' volume).
    pub root: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp() -> TempDir {
        let d = std::env::temp_dir().join(format!("rdev-ws-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).expect("dir");
        TempDir(d)
    }

    #[test]
    fn paths_are_checked_before_the_kernel_checks_them_again() {
        for ok in ["a", "a/b.txt", "dir/", "with space/ü.txt", ".hidden"] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a\\b",
            "a\0b",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uploads_belong_to_the_sandbox_user_when_the_api_is_root() {
        if !nix::unistd::geteuid().is_root() {
            assert_eq!(sandbox_owner(Some("1234:5678")), None);
            return;
        }
        assert_eq!(sandbox_owner(Some("1234:5678")), Some((1234, 5678)));
        assert_eq!(sandbox_owner(Some("4321")), Some((4321, 4321)));
        assert_eq!(sandbox_owner(Some("0:0")), None, "never root");
        assert_eq!(sandbox_owner(Some("no-such-user-here")), None);
        let t = temp();
        let proj = project_dir(&t.0, "p", Some((1234, 5678))).expect("project");
        let (up, _f) = Upload::start(&proj, "d/f.txt").expect("start");
        up.commit().expect("commit");
        for path in ["p", "p/d", "p/d/f.txt"] {
            let st = nix::sys::stat::stat(&t.0.join(path)).expect("stat");
            assert_eq!((st.st_uid, st.st_gid), (1234, 5678), "{path}");
        }
    }

    #[test]
    fn symlinks_and_dot_dot_are_refused_by_the_kernel() {
        let t = temp();
        let outside = temp();
        std::fs::write(outside.0.join("secret"), b"x").expect("write");
        let proj = project_dir(&t.0, "p", None).expect("project");
        std::os::unix::fs::symlink(&outside.0, t.0.join("p/link")).expect("symlink");
        std::os::unix::fs::symlink("../..", t.0.join("p/up")).expect("symlink");
        for path in ["link/secret", "up/etc/passwd", "link", "../p"] {
            let e = open_file(&proj, path).expect_err(path);
            assert!(matches!(e, FilesError::Escapes), "{path}: {e:?}");
        }
        // (O_DIRECTORY on a symlink answers ENOTDIR before ELOOP.)
        assert!(matches!(
            Upload::start(&proj, "link/new"),
            Err(FilesError::Escapes | FilesError::WrongType(_))
        ));
        assert!(!outside.0.join("new").exists());
    }

    #[test]
    fn uploads_appear_whole_and_special_files_are_refused() {
        use std::io::Write;
        let t = temp();
        let proj = project_dir(&t.0, "p", None).expect("project");
        let (up, mut f) = Upload::start(&proj, "d/e/f.bin").expect("start");
        f.write_all(b"hello").expect("write");
        assert!(!t.0.join("p/d/e/f.bin").exists(), "not before commit");
        up.commit().expect("commit");
        assert_eq!(
            std::fs::read(t.0.join("p/d/e/f.bin")).expect("read"),
            b"hello"
        );
        let (up, _f) = Upload::start(&proj, "dropped").expect("start");
        drop(up);
        assert_eq!(list(&proj, "", None, 10).expect("list").len(), 1);
        nix::unistd::mkfifo(&t.0.join("p/fifo"), Mode::from_bits_truncate(0o644)).expect("fifo");
        assert!(matches!(open_file(&proj, "fifo"), Err(FilesError::Special)));
        let page = list(&proj, "", None, 1).expect("list");
        assert_eq!(page[0].name, "d");
        let page = list(&proj, "", Some("d"), 10).expect("list");
        assert_eq!(page[0].name, "fifo");
        assert_eq!(page[0].kind, Kind::Special);
        assert!(matches!(remove(&proj, "d"), Err(FilesError::NotEmpty)));
        remove(&proj, "d/e/f.bin").expect("rm");
        remove(&proj, "d/e").expect("rmdir");
    }
}
