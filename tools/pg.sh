#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests (never a production database).
#
#   tools/pg.sh start [DIR]   initdb (first time) + start; prints DATABASE_URL
#   tools/pg.sh url   [DIR]   prints DATABASE_URL of the running cluster (exit 1 if down)
#   tools/pg.sh halt  [DIR]   stops the server, keeps the data (start brings it back, same port)
#   tools/pg.sh stop  [DIR]   stops the server and removes DIR
#   tools/pg.sh status [DIR]  "running <url>" | "stopped" | "absent"
#   tools/pg.sh deps          installs postgresql-15 and python3-psycopg2 if missing
#
# DIR defaults to $AICODE_PG_DIR, else /tmp/aicode-pg-$(id -u). The cluster lives in
# DIR/data, listens on 127.0.0.1:<free port> and on the unix socket dir DIR/sock,
# trusts every local connection (superuser `postgres`, no password: test use only),
# runs with fsync off and timezone UTC (as Supabase), and has a database `aicode`
# ($AICODE_PG_DB).
# The URL is postgresql://postgres@127.0.0.1:PORT/aicode.
#
# As root (CI, this machine) the server runs as the `postgres` user via runuser,
# since initdb refuses root; DIR must then be reachable by that user (anything
# under /tmp is). Every command is idempotent; start takes about 1-2 s the first
# time and well under 1 s after a halt. stop only deletes a DIR this script made
# (it carries a .aicode-pg marker).
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DB=${AICODE_PG_DB:-aicode}
MARK=.aicode-pg

die() { echo "pg.sh: $*" >&2; exit 1; }

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Installs what a test run needs, when missing (needs root or sudo).
deps() {
  local want=()
  [ -x "$PGBIN/initdb" ] || want+=(postgresql-15)
  /usr/bin/python3 -c 'import psycopg2' >/dev/null 2>&1 || want+=(python3-psycopg2)
  [ ${#want[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "pg.sh: installing ${want[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null 2>&1; then
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  fi
  [ -x "$PGBIN/initdb" ] || die "postgresql-15 is not installed ($PGBIN/initdb missing)"
}

# Runs a command as the cluster's owner: `postgres` when we are root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    (echo >"/dev/tcp/127.0.0.1/$p") >/dev/null 2>&1 || { echo "$p"; return; }
  done
  die "no free port found"
}

url_of() { echo "postgresql://postgres@127.0.0.1:$(cat "$1/port")/$DB"; }

running() {
  [ -f "$1/data/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$1/data" status >/dev/null 2>&1
}

pg_start() {
  local dir=$1 port tries=0
  while :; do
    port=$(cat "$dir/port")
    if as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 \
        -o "-p $port -k $dir/sock -h 127.0.0.1" start >/dev/null 2>&1; then
      return 0
    fi
    tries=$((tries + 1))
    # The port may have been taken since we picked it: pick another and retry.
    if [ $tries -ge 3 ] ||
        ! grep -qiE 'address already in use|could not bind|could not create any TCP' "$dir/log" 2>/dev/null; then
      tail -n 20 "$dir/log" >&2 2>/dev/null || true
      die "cannot start PostgreSQL in $dir (log: $dir/log)"
    fi
    free_port >"$dir/port"
  done
}

cmd_start() {
  local dir=$1
  deps
  if running "$dir"; then url_of "$dir"; return 0; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    if [ -e "$dir" ] && [ ! -f "$dir/$MARK" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
      die "$dir exists, is not empty and was not made by pg.sh"
    fi
    mkdir -p "$dir"
    touch "$dir/$MARK"
    chmod 0755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir" "$dir/$MARK"
    as_pg test -w "$dir" || die "$dir is not writable by the postgres user (use a directory under /tmp)"
    as_pg mkdir -p "$dir/sock"
    rm -rf "$dir/data"   # what a failed initdb may have left
    if ! as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C \
        --no-sync --no-instructions >"$dir/initdb.log" 2>&1; then
      cat "$dir/initdb.log" >&2
      die "initdb failed"
    fi
    cat >>"$dir/data/postgresql.conf" <<EOF

# tools/pg.sh: throwaway test cluster
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
timezone = 'UTC'
logging_collector = off
log_min_messages = warning
log_min_error_statement = panic
EOF
    free_port >"$dir/port"
  fi
  pg_start "$dir"
  local port
  port=$(cat "$dir/port")
  if ! as_pg "$PGBIN/psql" -h "$dir/sock" -p "$port" -U postgres -d postgres -tAq \
      -c "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    as_pg "$PGBIN/createdb" -h "$dir/sock" -p "$port" -U postgres "$DB"
  fi
  url_of "$dir"
}

cmd_halt() {
  local dir=$1
  if running "$dir"; then
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null
  fi
}

cmd_stop() {
  local dir=$1
  [ -e "$dir" ] || return 0
  if [ -f "$dir/data/PG_VERSION" ] && [ -x "$PGBIN/pg_ctl" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  [ -f "$dir/$MARK" ] || die "$dir was not made by pg.sh; not removing it"
  rm -rf "$dir"
}

cmd_url() {
  local dir=$1
  running "$dir" || die "no cluster running in $dir"
  url_of "$dir"
}

cmd_status() {
  local dir=$1
  if running "$dir"; then echo "running $(url_of "$dir")"
  elif [ -f "$dir/data/PG_VERSION" ]; then echo "stopped"
  else echo "absent"; fi
}

[ $# -ge 1 ] || usage
cmd=$1
shift
dir=${1:-${AICODE_PG_DIR:-/tmp/aicode-pg-$(id -u)}}
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
dir=${dir%/}

case "$cmd" in
  start) cmd_start "$dir" ;;
  url) cmd_url "$dir" ;;
  halt) cmd_halt "$dir" ;;
  stop) cmd_stop "$dir" ;;
  status) cmd_status "$dir" ;;
  deps) deps ;;
  *) usage ;;
esac
