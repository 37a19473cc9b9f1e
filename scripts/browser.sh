#!/usr/bin/env bash
# Ensures the headless browser the console tests (tests/tests/console.rs)
# drive is installed on a Debian/Ubuntu machine:
#
#   /usr/bin/chromium       Debian's `chromium`
#   /usr/bin/chromedriver   Debian's `chromium-driver` (the same version)
#
# Idempotent: when both are there it only checks. Installs with apt-get
# (non-interactive), running `apt-get update` only when the install fails
# (stale package lists). Needs root, or sudo, to install. Progress goes to
# stderr.
#
# Used by scripts/test and .ci/run; safe to run by hand any time.
set -euo pipefail

log() { printf 'browser: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# as_root CMD...: runs CMD as root (directly when root, else through sudo).
as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "not root and no sudo: install chromium and chromium-driver yourself"
    fi
}

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    log "chromium and chromedriver: installed"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 ||
    die "no apt-get: install Chromium at /usr/bin/chromium and its chromedriver at /usr/bin/chromedriver by hand"
install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >&2
}
log "installing chromium and chromium-driver"
if ! install; then
    log "install failed; updating the package lists and retrying"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    install
fi
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] ||
    die "installed, but /usr/bin/chromium or /usr/bin/chromedriver is missing"
log "chromium and chromedriver: installed"
