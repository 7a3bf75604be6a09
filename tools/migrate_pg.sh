#!/usr/bin/env bash
# Applies db/supabase/NNN_*.sql, in order, to the PostgreSQL database at
# DATABASE_URL with psql; each file once, in its own transaction, recorded in
# public.schema_migrations (version, name, checksum, applied_at).
#
#   tools/migrate_pg.sh [--shim auto|yes|no] [--dir DIR] [--status] [DATABASE_URL]
#
# The URL comes from the argument or $DATABASE_URL (any libpq URI:
# postgresql://user:pass@host:port/db?sslmode=require). For a Supabase project use
# its direct or session-pooler connection string (role postgres).
#
# 000_supabase_shim.sql is TEST-ONLY (roles, auth schema, auth.uid() for a plain
# PostgreSQL). --shim auto (default) applies it only when the database has no
# `auth` schema, i.e. never on a Supabase project; --shim no never applies it.
#
# Safe to run again and from several hosts at once: an advisory lock serialises
# runners and every file is skipped when its version is recorded. A recorded file
# whose checksum changed since is reported (warning) but not re-applied.
# Output: one "apply NNN_name.sql" / "skip ..." line per file, then a summary.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
dir="$ROOT/db/supabase"
shim=auto
status=0
url=${DATABASE_URL:-}

while [ $# -gt 0 ]; do
  case "$1" in
    --shim) shim=$2; shift 2 ;;
    --shim=*) shim=${1#--shim=}; shift ;;
    --dir) dir=$2; shift 2 ;;
    --status) status=1; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "migrate_pg.sh: unknown option $1" >&2; exit 2 ;;
    *) url=$1; shift ;;
  esac
done
case "$shim" in auto|yes|no) ;; *) echo "migrate_pg.sh: --shim auto|yes|no" >&2; exit 2 ;; esac
[ -n "$url" ] || { echo "migrate_pg.sh: DATABASE_URL is not set" >&2; exit 2; }

PSQL=$(command -v psql || true)
[ -n "$PSQL" ] || PSQL=/usr/lib/postgresql/15/bin/psql
[ -x "$PSQL" ] || { echo "migrate_pg.sh: psql not found (apt-get install postgresql-client-15)" >&2; exit 1; }

export PGAPPNAME=aicode-migrate PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
psql_run() { "$PSQL" "$url" -X -q -v ON_ERROR_STOP=1 "$@"; }

if [ "$status" -eq 1 ]; then
  psql_run -tA -F ' ' -c "SELECT version, name, checksum, applied_at FROM public.schema_migrations ORDER BY version"
  exit 0
fi

files=()
for f in "$dir"/[0-9][0-9][0-9]_*.sql; do
  [ -e "$f" ] || continue
  files+=("$f")
done
[ ${#files[@]} -gt 0 ] || { echo "migrate_pg.sh: no migrations in $dir" >&2; exit 1; }

lit() { printf "'%s'" "${1//\'/\'\'}"; }   # SQL string literal

script=$(mktemp)
trap 'rm -f "$script"' EXIT
{
  echo "SET client_min_messages = warning;"
  echo "BEGIN;"
  echo "SELECT pg_advisory_xact_lock(hashtext('aicode.schema_migrations')) AS aicode_lock \\gset"
  cat <<'SQL'
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.schema_migrations ENABLE ROW LEVEL SECURITY;  -- no policy: hidden from the API roles
SQL
  echo "SELECT to_regnamespace('auth') IS NULL AS aicode_no_auth \\gset"
  echo "COMMIT;"
  for f in "${files[@]}"; do
    base=$(basename "$f")
    version=${base%%_*}
    sum=$(sha256sum "$f" | cut -d' ' -f1)
    if [ "$version" = 000 ]; then
      case "$shim" in
        no) printf '%s\n' "\\echo 'skip $base (--shim no)'"; continue ;;
        auto) echo "\\if :aicode_no_auth" ;;
        yes) echo "\\if true" ;;
      esac
    fi
    cat <<SQL
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('aicode.schema_migrations')) AS aicode_lock \\gset
SELECT count(*) > 0 AS aicode_applied, coalesce(bool_or(checksum <> $(lit "$sum")), false) AS aicode_changed
  FROM public.schema_migrations WHERE version = $(lit "$version") \\gset
\\if :aicode_applied
\\echo 'skip $base (already applied)'
\\if :aicode_changed
\\warn 'warning: $base changed since it was applied (not re-applied; add a new migration instead)'
\\endif
\\else
\\echo 'apply $base'
\\i $(lit "$f")
INSERT INTO public.schema_migrations (version, name, checksum)
    VALUES ($(lit "$version"), $(lit "$base"), $(lit "$sum"));
\\endif
COMMIT;
SQL
    if [ "$version" = 000 ]; then
      printf '%s\n' "\\else" \
        "\\echo 'skip $base (the database has an auth schema: a Supabase project, or the shim is in place)'" \
        "\\endif"
    fi
  done
  # Last, when the roles exist (the shim or Supabase made them): the bookkeeping table is
  # not for the API. RLS with no policy hides it from anon / authenticated even where
  # Supabase's default privileges granted them access; service_role may read it.
  cat <<'SQL'
BEGIN;
ALTER TABLE public.schema_migrations ENABLE ROW LEVEL SECURITY;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        REVOKE ALL ON public.schema_migrations FROM anon;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        REVOKE ALL ON public.schema_migrations FROM authenticated;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        REVOKE ALL ON public.schema_migrations FROM service_role;
        GRANT SELECT ON public.schema_migrations TO service_role;
    END IF;
END
$$;
COMMIT;
SQL
} >"$script"

out=$(psql_run -f "$script" 2>&1) || { echo "$out" >&2; echo "migrate_pg.sh: failed" >&2; exit 1; }
[ -n "$out" ] && echo "$out"
applied=$(grep -c '^apply ' <<<"$out" || true)
skipped=$(grep -c '^skip ' <<<"$out" || true)
echo "migrations: $applied applied, $skipped skipped"
