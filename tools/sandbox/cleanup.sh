#!/bin/sh
# Removes what a local sandbox left behind: its cgroups and its workspace.
#   cleanup.sh <cgroup-name> <sandbox-dir>
name=$1 dir=$2
for d in /sys/fs/cgroup/aicode/$name /sys/fs/cgroup/memory/aicode/$name /sys/fs/cgroup/pids/aicode/$name; do
  [ -d "$d" ] || continue
  # v2 can kill every process still in the group before removing it
  [ -w "$d/cgroup.kill" ] && echo 1 > "$d/cgroup.kill" 2>/dev/null
  rmdir "$d" 2>/dev/null
done
case "$dir" in
  */sandboxes/*) rm -rf -- "$dir" ;;
  *) echo "refusing to remove $dir" >&2; exit 2 ;;
esac
