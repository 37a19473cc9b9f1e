#!/usr/bin/env bash
# Installs what the client SDK and MCP tests run with, from committed
# pinned files (PyPI and the npm registry, through pip and npm):
#
#   $CARGO_TARGET_DIR/clients/python-sdk/   venv: clients/python/requirements-test.txt
#   $CARGO_TARGET_DIR/clients/mcp/          venv: cli/tests/mcp/requirements.txt
#   clients/typescript/node_modules/        npm ci (clients/typescript/package-lock.json)
#
# The venvs live beside the build (outside the checkout, never committed);
# node_modules is git-ignored. Idempotent: each is redone only when its
# pinned file changed (a stamp holds the file's hash), so a second run only
# checks, in about a second. Needs python3 (with venv) and node >= 18 + npm.
#
# Used by scripts/test and .ci/run; tests/tests/clients.rs and
# cli/tests/mcp.rs use what it installs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/rdev-target}
DIR=${RDEV_CLIENTS_DIR:-$TARGET/clients}

log() { printf 'clients: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

command -v python3 >/dev/null 2>&1 || die "python3 not found (apt-get install python3 python3-venv)"
command -v node >/dev/null 2>&1 || die "node not found (Node.js >= 18 with npm)"
command -v npm >/dev/null 2>&1 || die "npm not found"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 18)) || die "node $(node --version) is too old: the TypeScript SDK needs >= 18"

hash_of() { sha256sum "$@" | sha256sum | cut -d' ' -f1; }

# venv NAME REQUIREMENTS: a venv with exactly these pinned packages.
venv() {
    local name=$1 requirements=$2 dest=$DIR/$1 want
    want=$(hash_of "$requirements")
    if [[ -x $dest/bin/python && $(cat "$dest/.rdev-stamp" 2>/dev/null) == "$want" ]]; then
        log "$name venv: up to date ($dest)"
        return
    fi
    log "$name venv: installing $requirements into $dest"
    rm -rf "$dest"
    mkdir -p "$DIR"
    python3 -m venv "$dest" || die "python3 -m venv failed (apt-get install python3-venv)"
    "$dest/bin/python" -m pip install --quiet --disable-pip-version-check \
        --require-hashes --only-binary :all: -r "$requirements" >&2
    echo "$want" >"$dest/.rdev-stamp"
}

venv python-sdk "$ROOT/clients/python/requirements-test.txt"
venv mcp "$ROOT/cli/tests/mcp/requirements.txt"

ts=$ROOT/clients/typescript
want=$(hash_of "$ts/package-lock.json" "$ts/package.json")
if [[ -d $ts/node_modules && $(cat "$ts/node_modules/.rdev-stamp" 2>/dev/null) == "$want" ]]; then
    log "typescript node_modules: up to date"
else
    log "typescript: npm ci"
    (cd "$ts" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" >"$ts/node_modules/.rdev-stamp"
fi
log "ready ($DIR)"
