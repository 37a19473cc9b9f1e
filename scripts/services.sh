#!/usr/bin/env bash
# Ensures the services rdev needs in development and tests are installed and
# running on a Debian/Ubuntu machine:
#
#   PostgreSQL  127.0.0.1:5432, user `postgres` without password (trust auth)
#   RabbitMQ    127.0.0.1:5672, default guest/guest user
#   bubblewrap  `bwrap`, the sandbox of every local command (the worker
#               refuses local commands without it unless RDEV_LOCAL_SANDBOX=off)
#
# Idempotent: when both already run and answer, it only checks and exits.
# Needs root, or sudo, to install or start anything; it calls sudo only when
# not root and sudo exists. Progress goes to stderr.
#
# Used by scripts/dev-up and scripts/test; safe to run by hand any time.
set -euo pipefail

# rabbitmq-server and friends live in /usr/sbin, often not on a user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

PG_HOST=127.0.0.1
PG_PORT=5432
AMQP_PORT=5672
WAIT_SECS=60

log() { printf 'services: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# --- privileges -------------------------------------------------------------

if ((EUID == 0)); then
    CAN_ROOT=1
elif command -v sudo >/dev/null 2>&1; then
    CAN_ROOT=1
else
    CAN_ROOT=0
fi

# as_root CMD...: runs CMD as root (directly when root, else through sudo).
as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        "$@"
    fi
}

# as_postgres CMD...: runs CMD as the `postgres` OS user, which the Debian
# packages let into the database over the Unix socket (peer auth) whatever
# pg_hba.conf says about TCP. Runs from / so psql does not warn about $HOME.
as_postgres() {
    if [[ $(id -un) == postgres ]]; then
        (cd / && "$@")
    elif ((EUID == 0)); then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && sudo -u postgres "$@")
    fi
}

# wait_for SECONDS CMD...: retries CMD once a second until it succeeds.
wait_for() {
    local secs=$1
    shift
    local deadline=$((SECONDS + secs))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

# tcp_open HOST PORT: whether something accepts TCP connections there.
tcp_open() {
    # shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# --- install ----------------------------------------------------------------

missing=()
command -v psql >/dev/null 2>&1 || missing+=(psql)
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(pg_ctlcluster)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v bwrap >/dev/null 2>&1 || missing+=(bwrap)
if ((${#missing[@]})); then
    ((CAN_ROOT)) || die "missing ${missing[*]}; run as root or install sudo (or install postgresql, rabbitmq-server and bubblewrap yourself)"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get: install PostgreSQL, RabbitMQ and bubblewrap by hand"
    log "installing postgresql, rabbitmq-server and bubblewrap (missing: ${missing[*]})"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql rabbitmq-server bubblewrap >&2
fi

# --- PostgreSQL ---------------------------------------------------------------

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

# The project connects as `postgres` with no password. PGPASSWORD and
# ~/.pgpass are ignored here so the check matches what the services see.
pg_trust_ok() {
    env -u PGPASSWORD PGPASSFILE=/dev/null \
        psql -w -X -q -t -A -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -c 'select 1' >/dev/null 2>&1
}

# Prints "VERSION NAME" of the cluster meant to serve port 5432: the one
# configured on that port, else the first in /etc/postgresql (as apt makes it).
pg_cluster() {
    local line=""
    if command -v pg_lsclusters >/dev/null 2>&1; then
        line=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }' || true)
    fi
    if [[ -z $line ]]; then
        local ver
        # shellcheck disable=SC2012 # names are plain version numbers
        ver=$(ls /etc/postgresql 2>/dev/null | head -1 || true)
        [[ -n $ver ]] && line="$ver main"
    fi
    printf '%s\n' "$line"
}

if pg_ready && pg_trust_ok; then
    log "PostgreSQL: running on $PG_HOST:$PG_PORT"
elif ((!CAN_ROOT)); then
    die "PostgreSQL is not usable on $PG_HOST:$PG_PORT as user postgres without password, and this script cannot become root (no sudo)"
else
    cluster=$(pg_cluster)
    if [[ -z $cluster ]]; then
        # Package installed but no cluster (e.g. created with create_main_cluster=false).
        # shellcheck disable=SC2012 # names are plain version numbers
        ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1 || true)
        [[ -n $ver ]] || die "no PostgreSQL server binaries in /usr/lib/postgresql"
        log "PostgreSQL: creating cluster $ver/main"
        as_root pg_createcluster "$ver" main >&2
        cluster="$ver main"
    fi
    read -r pg_ver pg_name <<<"$cluster"

    if ! pg_ready; then
        log "PostgreSQL: starting cluster $pg_ver/$pg_name"
        # --skip-systemctl-redirect: works in containers without systemd too.
        # A failure here is not fatal yet (it may already be starting up);
        # waiting below decides.
        as_root pg_ctlcluster --skip-systemctl-redirect "$pg_ver" "$pg_name" start >&2 ||
            as_root service postgresql start >&2 ||
            log "PostgreSQL: start command failed; waiting anyway"
        wait_for "$WAIT_SECS" pg_ready ||
            die "PostgreSQL did not accept connections on $PG_HOST:$PG_PORT within ${WAIT_SECS}s (see /var/log/postgresql/)"
        log "PostgreSQL: accepting connections"
    fi

    if ! pg_trust_ok; then
        # Only reached when passwordless login fails: put trust rules for the
        # postgres user on loopback first in pg_hba.conf (first match wins).
        hba=$(as_postgres psql -X -q -t -A -c 'show hba_file' 2>/dev/null || true)
        [[ -n $hba ]] || hba=/etc/postgresql/$pg_ver/$pg_name/pg_hba.conf
        as_root test -f "$hba" || die "cannot find pg_hba.conf (looked at $hba)"
        marker='# rdev (scripts/services.sh): passwordless postgres on loopback, for development only'
        if as_root grep -qF "$marker" "$hba"; then
            log "PostgreSQL: $hba already has the rdev trust rules; reloading"
        else
            log "PostgreSQL: adding trust rules for user postgres on 127.0.0.1 and ::1 to $hba"
            [[ -e $hba.rdev-bak ]] || as_root cp -p "$hba" "$hba.rdev-bak"
            tmp=$(mktemp)
            trap 'rm -f "$tmp"' EXIT
            {
                printf '%s\n' "$marker" \
                    'host    all    postgres    127.0.0.1/32    trust' \
                    'host    all    postgres    ::1/128         trust' \
                    ''
                as_root cat "$hba"
            } >"$tmp"
            # tee rewrites the file in place, keeping its owner and mode.
            as_root tee "$hba" <"$tmp" >/dev/null
        fi
        as_root pg_ctlcluster --skip-systemctl-redirect "$pg_ver" "$pg_name" reload >&2 ||
            as_postgres psql -X -q -c 'select pg_reload_conf()' >/dev/null ||
            die "could not reload PostgreSQL"
        wait_for 10 pg_trust_ok ||
            die "psql -h $PG_HOST -U postgres still needs a password after editing $hba; check the file by hand"
        log "PostgreSQL: passwordless login for postgres works"
    fi
fi

# --- RabbitMQ -----------------------------------------------------------------

# rabbitmq-diagnostics needs the node's Erlang cookie, which only root and the
# rabbitmq user can read.
rmq_diag() { as_root rabbitmq-diagnostics -q "$@" >/dev/null 2>&1; }

# Ready means the AMQP listener answers, not just the Erlang node: the ping
# succeeds a moment before the listeners open.
rabbit_ready() {
    rmq_diag check_port_connectivity || { rmq_diag ping && tcp_open 127.0.0.1 "$AMQP_PORT"; }
}

if ((!CAN_ROOT)); then
    # Cannot run rabbitmq-diagnostics; the open AMQP port is the best we can check.
    tcp_open 127.0.0.1 "$AMQP_PORT" ||
        die "RabbitMQ does not listen on 127.0.0.1:$AMQP_PORT and this script cannot become root (no sudo) to start it"
    log "RabbitMQ: port $AMQP_PORT open (not root: node not inspected)"
    exit 0
fi

if ! rmq_diag ping; then
    log "RabbitMQ: starting"
    as_root rabbitmq-server -detached >&2 ||
        as_root service rabbitmq-server start >&2 ||
        log "RabbitMQ: start command failed; waiting anyway"
fi
wait_for "$WAIT_SECS" rabbit_ready ||
    die "RabbitMQ did not become ready on 127.0.0.1:$AMQP_PORT within ${WAIT_SECS}s (see /var/log/rabbitmq/)"
log "RabbitMQ: running on 127.0.0.1:$AMQP_PORT"
