#!/usr/bin/env bash
# Installs the Debian packages aicode needs to build, run and test, if missing.
# Idempotent and quiet when everything is present; needs root (or sudo) otherwise.
set -euo pipefail

BUILD_PKGS="gcc make pkg-config libc6-dev liblua5.4-dev lua5.4 libh2o-evloop-dev libh2o-dev-common
  libjwt-dev libjansson-dev libcurl4-openssl-dev libssl-dev libsqlite3-dev sqlite3 ca-certificates"
RUN_PKGS="git bubblewrap util-linux"
TEST_PKGS="lua-busted lua-check luarocks python3 python3-jwt python3-cryptography curl openssl
  clang-format valgrind wrk procps postgresql-15 python3-psycopg2"

want="$BUILD_PKGS $RUN_PKGS"
# Node runs the agent installer (npm) and the Codex launcher; Debian's is enough
# when the machine has none of its own.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || want="$want nodejs npm"
case "${1:-build}" in
  test) want="$want $TEST_PKGS" ;;
  build) ;;
  *) echo "usage: $0 [build|test]" >&2; exit 2 ;;
esac

missing=()
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
