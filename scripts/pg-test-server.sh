#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests of the PostgreSQL index, from the distribution's
# own binaries (Debian: apt `postgresql`, in /usr/lib/postgresql/VERSION/bin; the newest is used).
#
#   scripts/pg-test-server.sh start     makes a cluster in a new temporary directory, starts it
#                                       on a free loopback port and creates the database; prints
#                                         export PACSGRID_PG_TEST_URL=postgres://postgres@127.0.0.1:PORT/pacsgrid_test
#                                         export PACSGRID_PG_TEST_DIR=/tmp/pacsgrid-pg.XXXXXX
#                                       (for `eval`); progress and errors go to stderr
#   scripts/pg-test-server.sh stop [DIR]   stops that server and removes DIR
#                                       (default $PACSGRID_PG_TEST_DIR)
#   scripts/pg-test-server.sh bindir    prints the directory of the binaries; exits 3 if none
#
# The cluster trusts every local connection, listens on 127.0.0.1 only (and on a unix socket
# inside DIR), and keeps fsync on, so that what the tests measure is what a real server does.
# Run as root, the server runs as the `postgres` user, which owns DIR (PostgreSQL refuses to
# run as root). PG_TEST_DB names the database (default pacsgrid_test).
set -euo pipefail

usage() { echo "usage: $0 start | stop [DIR] | bindir" >&2; exit 2; }
say() { echo "pg-test-server: $*" >&2; }

# The newest /usr/lib/postgresql/*/bin holding initdb, else initdb on PATH; PG_BIN overrides.
find_bindir() {
  if [ -n "${PG_BIN:-}" ]; then
    [ -x "$PG_BIN/initdb" ] && { echo "$PG_BIN"; return 0; }
    return 1
  fi
  local d best=""
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && best="$d"
  done
  if [ -z "$best" ] && command -v initdb >/dev/null 2>&1; then
    best="$(dirname "$(readlink -f "$(command -v initdb)")")"
  fi
  [ -n "$best" ] || return 1
  echo "$best"
}

# Runs a PostgreSQL program as the owner of the cluster: `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Only a directory this script made is ever removed (it holds this marker).
MARKER=".pacsgrid-pg-test-server"

stop_dir() {
  local dir="$1" bin
  [ -n "$dir" ] || { say "stop: no directory given and PACSGRID_PG_TEST_DIR is unset"; exit 2; }
  [ -d "$dir" ] || return 0
  if [ ! -e "$dir/$MARKER" ]; then
    say "stop: $dir was not made by this script; leaving it alone"
    exit 1
  fi
  bin="$(cat "$dir/$MARKER")"
  if [ -e "$dir/data/postmaster.pid" ]; then
    # fast: end the sessions and stop; immediate if that does not finish in time
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
      || as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 \
      || true
  fi
  rm -rf -- "$dir"
}

start() {
  # dir is global: the EXIT trap below reads it
  local bin port db="${PG_TEST_DB:-pacsgrid_test}" locale tries=0
  if ! [[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]]; then
    say "PG_TEST_DB must be lowercase letters, digits and '_' (got '$db')"
    exit 2
  fi
  if ! bin="$(find_bindir)"; then
    say "no PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH;"
    say "install them with scripts/install-test-deps.sh (apt: postgresql)"
    exit 3
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    say "running as root, but there is no 'postgres' user to run the server as"
    exit 1
  fi
  # The server user must reach the directory: a root-only TMPDIR will not do.
  local parent="${TMPDIR:-/tmp}"
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$parent" 2>/dev/null; then
    parent=/tmp
  fi
  dir="$(mktemp -d "$parent/pacsgrid-pg.XXXXXX")"
  echo "$bin" >"$dir/$MARKER"
  # from here on, a failure removes what was made
  trap 'status=$?; if [ $status -ne 0 ]; then
          [ -f "$dir/postgres.log" ] && tail -n 30 "$dir/postgres.log" >&2
          stop_dir "$dir"; fi' EXIT
  chmod 755 "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi

  # C.UTF-8 when the C library has it (glibc >= 2.35 always does), else C: both compare by
  # code point, whatever the machine's language.
  locale=C
  if locale -a 2>/dev/null | grep -qixE 'c\.utf-?8'; then locale=C.UTF-8; fi
  as_owner "$bin/initdb" -D "$dir/data" -U postgres -E UTF8 --locale="$locale" \
    --auth=trust >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; say "initdb failed"; exit 1; }
  # Only the unix socket (in $dir) and 127.0.0.1; nothing from elsewhere.
  cat >"$dir/data/pg_hba.conf" <<EOF
local all all               trust
host  all all 127.0.0.1/32  trust
EOF
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/data/pg_hba.conf"; fi

  # A free port can be taken between choosing it and binding it: try a few.
  while :; do
    tries=$((tries + 1))
    port="$(free_port)"
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" \
        start >/dev/null 2>&1; then
      break
    fi
    if [ "$tries" -ge 3 ]; then say "the server did not start (log: $dir/postgres.log)"; exit 1; fi
    say "start on port $port failed, trying another"
  done
  local i=0
  until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 1; do
    i=$((i + 1))
    if [ "$i" -ge 60 ]; then say "not ready after 60 s (log: $dir/postgres.log)"; exit 1; fi
    sleep 1
  done
  "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE \"$db\"" >/dev/null \
    || { say "cannot create database $db"; exit 1; }
  trap - EXIT
  say "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, database $db, in $dir"
  printf 'export PACSGRID_PG_TEST_URL=%q\n' "postgres://postgres@127.0.0.1:$port/$db"
  printf 'export PACSGRID_PG_TEST_DIR=%q\n' "$dir"
}

[ $# -ge 1 ] || usage
case "$1" in
  start) [ $# -eq 1 ] || usage; start ;;
  stop) [ $# -le 2 ] || usage; stop_dir "${2:-${PACSGRID_PG_TEST_DIR:-}}" ;;
  bindir) [ $# -eq 1 ] || usage; find_bindir || exit 3 ;;
  *) usage ;;
esac
