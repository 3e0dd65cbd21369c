# shellcheck shell=bash
# Throwaway PostgreSQL cluster for tests and benchmarks. Source this file; it defines functions only.
#
#   pg_throwaway_start   initdb a fresh cluster in a temporary directory, start it on a free
#                        127.0.0.1 port, create database fleetguard_test, and export
#                          FLEETGUARD_TEST_POSTGRES_URL=postgresql+psycopg://fleetguard@127.0.0.1:PORT/fleetguard_test
#                          PG_THROWAWAY_DIR   (the temporary directory: data/, sock/, log)
#                          PG_THROWAWAY_PORT
#   pg_throwaway_stop    stop the cluster (immediate) and remove the directory; safe to call
#                        any number of times, never fails. Use it in an EXIT trap.
#
# Authentication is `trust` for superuser `fleetguard`; fsync is off. Never use this for real data.
# initdb and pg_ctl refuse to run as root: as root they run as the `postgres` system user
# (created by Debian's postgresql package) through runuser.

PG_THROWAWAY_DB="${PG_THROWAWAY_DB:-fleetguard_test}"
PG_THROWAWAY_USER="${PG_THROWAWAY_USER:-fleetguard}"

# Print the directory holding initdb/pg_ctl: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin,
# else pg_config --bindir, else wherever initdb is on PATH.
pg_throwaway_bindir() {
    local dir
    if [[ -n "${PG_BINDIR:-}" && -x "$PG_BINDIR/initdb" ]]; then
        printf '%s\n' "$PG_BINDIR"
        return 0
    fi
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n1)"
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
        printf '%s\n' "$dir"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir)"
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

# Run a command as the cluster owner (postgres when we are root, ourselves otherwise), from a
# directory that user can enter.
_pg_as_owner() {
    if [[ $EUID -eq 0 ]]; then
        (cd "$PG_THROWAWAY_DIR" && runuser -u postgres -- "$@")
    else
        (cd "$PG_THROWAWAY_DIR" && "$@")
    fi
}

_pg_free_port() {
    local py
    py="$(command -v python3 || command -v python)"
    "$py" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

pg_throwaway_start() {
    local bindir base attempt port
    if ! bindir="$(pg_throwaway_bindir)"; then
        echo "error: PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql package" >&2
        return 1
    fi
    if [[ $EUID -eq 0 ]]; then
        if ! id postgres >/dev/null 2>&1; then
            echo "error: running as root but there is no 'postgres' user to run initdb as" >&2
            return 1
        fi
        base=/tmp # must be traversable by the postgres user, whatever TMPDIR says
    else
        base="${TMPDIR:-/tmp}"
    fi

    PG_THROWAWAY_DIR="$(mktemp -d "$base/fleetguard-pg.XXXXXX")"
    export PG_THROWAWAY_DIR
    chmod 755 "$PG_THROWAWAY_DIR"
    mkdir -p "$PG_THROWAWAY_DIR/sock"
    if [[ $EUID -eq 0 ]]; then
        chown -R postgres: "$PG_THROWAWAY_DIR"
    fi

    if ! _pg_as_owner "$bindir/initdb" -D "$PG_THROWAWAY_DIR/data" -A trust -U "$PG_THROWAWAY_USER" \
        --no-sync -E UTF8 --locale=C >"$PG_THROWAWAY_DIR/initdb.log" 2>&1; then
        echo "error: initdb failed:" >&2
        cat "$PG_THROWAWAY_DIR/initdb.log" >&2
        return 1
    fi

    # The port is free when we look; another process may take it before the server binds, so retry.
    for attempt in 1 2 3 4 5; do
        port="$(_pg_free_port)"
        if _pg_as_owner "$bindir/pg_ctl" -D "$PG_THROWAWAY_DIR/data" -l "$PG_THROWAWAY_DIR/log" -w -t 60 \
            -o "-h 127.0.0.1 -p $port -k $PG_THROWAWAY_DIR/sock -F -c full_page_writes=off -c synchronous_commit=off" \
            start >"$PG_THROWAWAY_DIR/pg_ctl.log" 2>&1; then
            break
        fi
        if [[ $attempt -eq 5 ]]; then
            echo "error: PostgreSQL did not start:" >&2
            cat "$PG_THROWAWAY_DIR/pg_ctl.log" >&2
            tail -n 30 "$PG_THROWAWAY_DIR/log" >&2 2>/dev/null || true
            return 1
        fi
        echo "    port $port not usable (attempt $attempt); retrying" >&2
    done
    PG_THROWAWAY_PORT="$port"
    export PG_THROWAWAY_PORT

    if ! "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$PG_THROWAWAY_USER" "$PG_THROWAWAY_DB"; then
        echo "error: createdb $PG_THROWAWAY_DB failed" >&2
        return 1
    fi

    FLEETGUARD_TEST_POSTGRES_URL="postgresql+psycopg://$PG_THROWAWAY_USER@127.0.0.1:$port/$PG_THROWAWAY_DB"
    export FLEETGUARD_TEST_POSTGRES_URL
    echo "    PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $PG_THROWAWAY_DIR)"
}

pg_throwaway_stop() {
    local - # keep `set +e` local to this function
    set +e
    local dir="${PG_THROWAWAY_DIR:-}" bindir pid
    if [[ -z "$dir" || ! -d "$dir" ]]; then
        return 0
    fi
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        pid="$(head -n1 "$dir/data/postmaster.pid" 2>/dev/null)"
        if bindir="$(pg_throwaway_bindir)"; then
            _pg_as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1
        fi
        # Fallback: if pg_ctl could not stop it, signal the postmaster directly and wait.
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            kill -QUIT "$pid" 2>/dev/null
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    rm -rf "$dir"
    unset PG_THROWAWAY_DIR PG_THROWAWAY_PORT FLEETGUARD_TEST_POSTGRES_URL
    return 0
}

# pg_throwaway_run CMD...: run CMD and return its exit status, forwarding SIGINT/SIGTERM sent to this
# shell to CMD. Bash defers traps until a foreground command ends; running CMD in the background
# and waiting for it lets a TERM sent to the script alone stop CMD and reach the EXIT trap (cleanup)
# at once. CMD keeps the shell's stdin and default SIGINT handling (Ctrl-C works as usual).
pg_throwaway_run() {
    local child rc=0
    (
        trap - INT QUIT
        exec "$@"
    ) <&0 &
    child=$!
    # shellcheck disable=SC2064 # expand $child now
    trap "kill -INT $child 2>/dev/null || true" INT
    # shellcheck disable=SC2064
    trap "kill -TERM $child 2>/dev/null || true" TERM
    while kill -0 "$child" 2>/dev/null; do
        wait "$child" || true
    done
    wait "$child" || rc=$?
    trap 'exit 130' INT
    trap 'exit 143' TERM
    return "$rc"
}
