//! Tar archives in and out of a project directory (blocking; call from
//! `spawn_blocking`).
//!
//! In: the archive (tar, or tar.gz recognised by its magic bytes) is first
//! stored whole in a staging file outside every project directory and read
//! twice: a first pass checks every entry (relative path, no `..`, only
//! regular files and directories: symlinks, hard links and special files are
//! refused) and writes nothing; only an archive that passes is extracted,
//! each entry through [`crate::workspace`] (opened beneath the project
//! directory, files renamed into place).
//!
//! Out: a tar.gz of a directory, produced into a bounded channel as the
//! client reads it; symlinks and special files are left out.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;

use crate::workspace::{self, FilesError, Kind};

/// Entries accepted in one archive.
pub const MAX_ENTRIES: usize = 100_000;

/// What an extraction wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Extracted {
    /// Regular files written.
    pub files: u64,
    /// Directories created or found.
    pub dirs: u64,
    /// Bytes of file contents.
    pub bytes: u64,
}

fn reader(staged: &mut File) -> Result<Box<dyn Read + '_>, FilesError> {
    staged.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 2];
    let n = staged.read(&mut magic)?;
    staged.seek(SeekFrom::Start(0))?;
    let buffered = BufReader::with_capacity(64 * 1024, staged);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(buffered)))
    } else {
        Ok(Box::new(buffered))
    }
}

/// An entry's path made relative to the target directory: `./` prefixes
/// dropped; `None` for the archive's root entry (`.` or `./`).
fn entry_path(raw: &[u8]) -> Result<Option<String>, FilesError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| FilesError::InvalidPath("an entry's name is not UTF-8".into()))?;
    let mut t = text;
    while let Some(rest) = t.strip_prefix("./") {
        t = rest;
    }
    if t.is_empty() || t == "." {
        return Ok(None);
    }
    let checked = workspace::validate_path(t)
        .map_err(|e| FilesError::InvalidPath(format!("entry `{text}`: {e}")))?;
    Ok(Some(checked.to_owned()))
}

/// Checks every entry; writes nothing.
pub fn check(staged: &mut File, max_bytes: u64) -> Result<(), FilesError> {
    let mut archive = tar::Archive::new(reader(staged)?);
    let (mut n, mut total) = (0usize, 0u64);
    for entry in archive.entries().map_err(bad_archive)? {
        let entry = entry.map_err(bad_archive)?;
        n += 1;
        if n > MAX_ENTRIES {
            return Err(FilesError::InvalidPath(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        entry_path(&raw)?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            // PAX/GNU metadata entries are consumed by the reader itself.
            other => {
                return Err(FilesError::InvalidPath(format!(
                    "entry `{name}` is a {other:?}: only regular files and directories are extracted"
                )));
            }
        }
        total += entry.size();
        if total > max_bytes {
            return Err(FilesError::TooLarge(max_bytes));
        }
    }
    Ok(())
}

fn bad_archive(e: std::io::Error) -> FilesError {
    FilesError::InvalidPath(format!("not a valid tar archive: {e}"))
}

/// Extracts a checked archive beneath `target` (a directory path in the
/// project, `""` for the project directory).
pub fn extract(
    staged: &mut File,
    project: &OwnedFd,
    target: &str,
) -> Result<Extracted, FilesError> {
    let base = workspace::ensure_dirs(project, target)?;
    let mut out = Extracted::default();
    let mut archive = tar::Archive::new(reader(staged)?);
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let Some(rel) = entry_path(&entry.path_bytes())? else {
            continue;
        };
        if entry.header().entry_type() == tar::EntryType::Directory {
            workspace::ensure_dirs(&base, &rel)?;
            out.dirs += 1;
            continue;
        }
        let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
        let (upload, mut file) = workspace::Upload::start(&base, &rel)?;
        out.bytes += std::io::copy(&mut entry, &mut file)?;
        if executable {
            file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        drop(file);
        upload.commit()?;
        out.files += 1;
    }
    Ok(out)
}

/// A `Write` that hands 64 KiB pieces to the response body through a
/// bounded channel (blocking when the client reads slowly).
pub struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

const PIECE: usize = 64 * 1024;

impl ChannelWriter {
    /// A writer into `tx`.
    pub fn new(tx: tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(PIECE),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIECE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Writes a tar.gz of the directory `dir` (beneath `project`) to `out`:
/// directories and regular files, by name; symlinks and special files are
/// left out.
pub fn build(project: &OwnedFd, dir: &str, out: ChannelWriter) -> Result<(), FilesError> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let mut after: Option<String> = None;
        loop {
            let page = workspace::list(project, &d, after.as_deref(), 1000)?;
            for e in &page {
                let rel = if d.is_empty() {
                    e.name.clone()
                } else {
                    format!("{d}/{}", e.name)
                };
                let name_in_tar = rel
                    .strip_prefix(dir)
                    .map(|r| r.trim_start_matches('/'))
                    .unwrap_or(&rel)
                    .to_owned();
                match e.kind {
                    Kind::Dir => {
                        let mut h = tar::Header::new_gnu();
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_mode(0o755);
                        h.set_size(0);
                        tar.append_data(&mut h, format!("{name_in_tar}/"), std::io::empty())?;
                        stack.push(rel);
                    }
                    Kind::File => {
                        let (file, size) = match workspace::open_file(project, &rel) {
                            Ok(f) => f,
                            // Changed since it was listed.
                            Err(FilesError::NotFound | FilesError::Special) => continue,
                            Err(e) => return Err(e),
                        };
                        let mut h = tar::Header::new_gnu();
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_mode(u32::from_str_radix(&e.mode, 8).unwrap_or(0o644) & 0o777);
                        h.set_size(size);
                        h.set_mtime(u64::try_from(e.mtime.timestamp()).unwrap_or(0));
                        // A file that grows meanwhile is cut at its listed size.
                        tar.append_data(&mut h, &name_in_tar, file.take(size))?;
                    }
                    Kind::Symlink | Kind::Special => {}
                }
            }
            if page.len() < 1000 {
                break;
            }
            after = page.last().map(|e| e.name.clone());
        }
    }
    let gz = tar.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()?;
    Ok(())
}

/// Copies a checked archive (see [`check`]) into `out` as a plain tar of
/// its directories and regular files only, with validated relative names
/// and modes reduced to 0755/0644: what a pod's `tar` extracts is exactly
/// what was checked (no PAX or GNU extension it might interpret otherwise).
/// Names with a newline are refused (the pod's script reads names by line).
pub fn normalize(staged: &mut File, out: &mut File) -> Result<Extracted, FilesError> {
    let mut done = Extracted::default();
    let mut archive = tar::Archive::new(reader(staged)?);
    let mut builder = tar::Builder::new(std::io::BufWriter::with_capacity(PIECE, &mut *out));
    builder.mode(tar::HeaderMode::Deterministic);
    for entry in archive.entries().map_err(bad_archive)? {
        let entry = entry.map_err(bad_archive)?;
        let Some(rel) = entry_path(&entry.path_bytes())? else {
            continue;
        };
        if rel.contains('\n') {
            return Err(FilesError::InvalidPath(format!(
                "entry `{}`: names with a newline cannot be extracted in a pod",
                rel.escape_debug()
            )));
        }
        let mut h = tar::Header::new_gnu();
        if entry.header().entry_type() == tar::EntryType::Directory {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            builder.append_data(&mut h, format!("{rel}/"), std::io::empty())?;
            done.dirs += 1;
            continue;
        }
        let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
        let size = entry.size();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(if executable { 0o755 } else { 0o644 });
        h.set_size(size);
        h.set_mtime(entry.header().mtime().unwrap_or(0));
        builder.append_data(&mut h, &rel, entry.take(size))?;
        done.files += 1;
        done.bytes += size;
    }
    builder.into_inner()?.flush()?;
    Ok(done)
}

/// Turns the plain tar a pod's `tar -cf - .` writes (read from `pod`) into
/// the tar.gz [`build`] makes of a local directory: directories and regular
/// files by their relative names, everything else (symlinks, hard links,
/// special files, rdev's temporary files) left out.
pub fn repack(pod: impl Read, out: ChannelWriter) -> Result<(), FilesError> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let mut archive = tar::Archive::new(pod);
    for entry in archive.entries().map_err(bad_archive)? {
        let entry = entry.map_err(bad_archive)?;
        let Ok(Some(rel)) = entry_path(&entry.path_bytes()) else {
            continue;
        };
        let base = rel.rsplit('/').next().unwrap_or_default();
        if base.starts_with(".rdev-upload-") || base.starts_with(".rdev-extract-") {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, format!("{rel}/"), std::io::empty())?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(entry.header().mode().unwrap_or(0o644) & 0o777);
                h.set_size(size);
                h.set_mtime(entry.header().mtime().unwrap_or(0));
                tar.append_data(&mut h, &rel, entry.take(size))?;
            }
            _ => {}
        }
    }
    let gz = tar.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()?;
    Ok(())
}
