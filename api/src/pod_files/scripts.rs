//! The POSIX `sh` scripts of the file operations in a pod. They are
//! constants: every value (the workdir, a path, sizes) is a positional
//! parameter of `sh -c` (`"$1"`, `"$2"`, …), never part of the text. Exit
//! codes 10-17 mean what [`super::exit_error`] says.

/// Shared by every script: `$1` is the workdir (empty: the container's
/// working directory). `chk P [mk]` walks `P` component by component and
/// exits 10 at a symlink, 11 at a missing component (or creates it with
/// `mk`), 12 at a non-directory.
pub(super) const PRELUDE: &str = r#"case $1 in '') ;; /*) cd "$1" || exit 3;; *) cd "./$1" || exit 3;; esac
chk() { p=; r=$1
while [ -n "$r" ]; do
  c=${r%%/*}
  case $r in */*) r=${r#*/};; *) r=;; esac
  p=${p:+$p/}$c
  if [ -L "./$p" ]; then exit 10; fi
  if [ ! -e "./$p" ]; then
    [ -n "$2" ] || exit 11
    mkdir "./$p" 2>/dev/null || [ -d "./$p" ] || exit 12
    [ -L "./$p" ] && exit 10
  fi
  [ -d "./$p" ] || exit 12
done; }
parent() { case $1 in */*) d=${1%/*};; *) d=;; esac; }
"#;

/// `$2` path: `<hex mode> <size> <mtime>` of the path (a final symlink is
/// described, not followed).
pub(super) const STAT: &str = r#"parent "$2"; chk "$d"
f=./$2
[ -e "$f" ] || [ -L "$f" ] || exit 11
stat -c '%f %s %Y' "$f"
"#;

/// `$2` path, `$3` start, `$4` length: those bytes of a regular file.
pub(super) const READ: &str = r#"parent "$2"; chk "$d"
f=./$2
[ -L "$f" ] && exit 10
[ -e "$f" ] || exit 11
[ -d "$f" ] && exit 13
[ -f "$f" ] || exit 14
if [ "$3" = 0 ]; then head -c "$4" < "$f"; else tail -c +$(($3 + 1)) < "$f" | head -c "$4"; fi
"#;

/// `$2` directory (empty: the workdir): `<hex mode> <size> <mtime> <name>`
/// NUL-terminated, one record per entry, in no order.
pub(super) const LIST: &str = r#"chk "$2"
if [ -n "$2" ]; then cd "./$2" || exit 12; fi
for e in .[!.]* ..?* *; do
  [ -e "./$e" ] || [ -L "./$e" ] || continue
  case $e in .rdev-upload-*|.rdev-extract-*) continue;; esac
  s=$(stat -c '%f %s %Y' "./$e") || continue
  printf '%s %s\0' "$s" "$e"
done
"#;

/// `$2` path, `$3` exact size: stdin (exactly `$3` bytes) to a temporary
/// file beside the destination, renamed over it when complete (readers never
/// see half a file); then the new file's stat line. Exit 16: stdin ended
/// early.
pub(super) const WRITE: &str = r#"parent "$2"; chk "$d" mk
f=./$2
[ -L "$f" ] && exit 10
[ -d "$f" ] && exit 13
if [ -e "$f" ] && [ ! -f "$f" ]; then exit 14; fi
t=./${d:+$d/}.rdev-upload-$$
trap 'rm -f "$t"' EXIT
head -c "$3" > "$t" || exit 1
n=$(wc -c < "$t")
[ $n -eq "$3" ] || exit 16
mv -f "$t" "$f" || exit 1
trap - EXIT
stat -c '%f %s %Y' "$f"
"#;

/// `$2` path: removes a file, a symlink (not its target) or an empty
/// directory (exit 15 when not empty).
pub(super) const DELETE: &str = r#"parent "$2"; chk "$d"
f=./$2
if [ -L "$f" ] || { [ -e "$f" ] && [ ! -d "$f" ]; }; then rm -f "$f" || exit 1; exit 0; fi
[ -e "$f" ] || exit 11
rmdir "$f" 2>/dev/null && exit 0
[ -n "$(ls -A "$f")" ] && exit 15
exit 1
"#;

/// `$2` directory (empty: the workdir): a plain tar of it on stdout.
pub(super) const TAR_OUT: &str = r#"chk "$2"
if [ -n "$2" ]; then cd "./$2" || exit 12; fi
tar -cf - .
"#;

/// `$2` target directory (created), `$3` exact size of the tar on stdin
/// (already checked by the API: relative names, only directories and
/// regular files). Extracted into a fresh directory first; then every entry
/// is checked against what exists (no symlink, no directory where a file
/// goes, no file where a directory goes) before anything is moved into
/// place.
pub(super) const TAR_IN: &str = r#"chk "$2" mk
if [ -n "$2" ]; then cd "./$2" || exit 12; fi
x=$PWD/.rdev-extract-$$
mkdir "$x" || exit 1
trap 'rm -rf "$x"' EXIT
head -c "$3" | (cd "$x" && tar -xof -) || exit 17
cd "$x" || exit 1
find . ! -name . | while IFS= read -r p; do
  q=../${p#./}
  [ -L "$q" ] && exit 10
  if [ -d "$p" ]; then
    if [ -e "$q" ] && [ ! -d "$q" ]; then exit 12; fi
  else
    [ -d "$q" ] && exit 13
    if [ -e "$q" ] && [ ! -f "$q" ]; then exit 14; fi
  fi
done || exit $?
find . ! -name . -type d | while IFS= read -r p; do
  q=../${p#./}; [ -d "$q" ] || mkdir "$q" || exit 12
done || exit $?
find . -type f | while IFS= read -r p; do mv -f "$p" "../${p#./}" || exit 1; done || exit $?
"#;
