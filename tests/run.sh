#!/usr/bin/env bash
# Runs the test layers and ends with one line "N passed, N failed".
#   tests/run.sh            all layers: unit (C), spec (busted), e2e (HTTP)
#   tests/run.sh unit|spec|e2e
set -uo pipefail
cd "$(dirname "$0")/.."

layers="${1:-all}"
[ "$layers" = all ] && layers="unit spec e2e e2e-supabase"
passed=0
failed=0
logdir=$(mktemp -d)

# Counts TAP "ok"/"not ok" lines of a log into passed/failed; a layer that exits
# non-zero without any failing line still counts as one failure (a crash).
count() {
  local log=$1 rc=$2 p f
  p=$(grep -cE '^ok [0-9]+' "$log" || true)
  f=$(grep -cE '^not ok [0-9]+' "$log" || true)
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "# $3 exited with status $rc" ; fi
  passed=$((passed + p))
  failed=$((failed + f))
  grep -E '^not ok' "$log" | sed 's/^/  /'
}

for layer in $layers; do
  case "$layer" in
    unit)
      for t in build/tests/test_*; do
        [ -x "$t" ] || continue
        log="$logdir/$(basename "$t").log"
        "$t" >"$log" 2>&1; rc=$?
        echo "== unit $(basename "$t"): $(grep -cE '^ok' "$log") ok"
        count "$log" "$rc" "$t"
      done
      ;;
    spec)
      log="$logdir/spec.log"
      lua5.4 /usr/bin/busted -o TAP spec >"$log" 2>&1; rc=$?
      echo "== spec: $(grep -cE '^ok' "$log") ok"
      count "$log" "$rc" busted
      grep -E '^#' "$log" | head -40
      ;;
    e2e)
      log="$logdir/e2e.log"
      /usr/bin/python3 tests/e2e/run.py >"$log" 2>&1; rc=$?
      echo "== e2e: $(grep -cE '^ok' "$log") ok"
      count "$log" "$rc" e2e
      grep -E '^#' "$log" | head -60
      ;;
    e2e-supabase)
      # The API and task suites again, on the Supabase store (PostgREST double on
      # a real PostgreSQL, started and stopped by the harness).
      log="$logdir/e2e-supabase.log"
      rc=0
      for pattern in 'test_api_*.py' 'test_tasks_*.py'; do
        AICODE_TEST_STORE=supabase /usr/bin/python3 tests/e2e/run.py "$pattern" >>"$log" 2>&1 || rc=$?
      done
      echo "== e2e-supabase: $(grep -cE '^ok' "$log") ok"
      count "$log" "$rc" e2e-supabase
      grep -E '^#' "$log" | head -60
      ;;
    *) echo "unknown layer $layer" >&2; exit 2 ;;
  esac
done
rm -rf "$logdir"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
