#!/bin/sh
# Starts a sandboxed command under per-sandbox cgroup limits when the machine's
# cgroups allow it, then execs bubblewrap with the given arguments - as an
# unprivileged host user when started as root, so the sandbox's uid maps to that
# user (not to root) and root-only files stay unreadable even if bound in.
#   launch.sh <cgroup-name> <memory-bytes|0> <pids|0> <host-uid> bwrap [args...]
# cgroup v2 (memory.max, pids.max) or v1 (memory.limit_in_bytes, pids.max); when
# neither is writable the command still runs, with rlimits and the wall clock only.
umask 022 # the host runs with 077; repository files keep normal modes
name=$1 mem=$2 pids=$3 uid=$4
shift 4
join() { echo $$ > "$1/cgroup.procs" 2>/dev/null; }
if [ -w /sys/fs/cgroup/cgroup.subtree_control ] 2>/dev/null && grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  d=/sys/fs/cgroup/aicode/$name
  mkdir -p "$d" 2>/dev/null && {
    [ "$mem" != 0 ] && echo "$mem" > "$d/memory.max" 2>/dev/null
    [ "$pids" != 0 ] && echo "$pids" > "$d/pids.max" 2>/dev/null
    join "$d"
  }
else
  if [ "$mem" != 0 ] && [ -d /sys/fs/cgroup/memory ] && mkdir -p "/sys/fs/cgroup/memory/aicode/$name" 2>/dev/null; then
    echo "$mem" > "/sys/fs/cgroup/memory/aicode/$name/memory.limit_in_bytes" 2>/dev/null
    join "/sys/fs/cgroup/memory/aicode/$name"
  fi
  if [ "$pids" != 0 ] && [ -d /sys/fs/cgroup/pids ] && mkdir -p "/sys/fs/cgroup/pids/aicode/$name" 2>/dev/null; then
    echo "$pids" > "/sys/fs/cgroup/pids/aicode/$name/pids.max" 2>/dev/null
    join "/sys/fs/cgroup/pids/aicode/$name"
  fi
fi
if [ "$(id -u)" = 0 ] && [ "$uid" != 0 ]; then
  exec setpriv --reuid="$uid" --regid="$uid" --clear-groups -- "$@"
fi
exec "$@"
