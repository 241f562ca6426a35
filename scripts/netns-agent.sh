#!/usr/bin/env bash
# Open MPI's launcher agent for the namespace hosts of scripts/hosts.sh (in place of ssh):
# mpirun calls `netns-agent.sh HOST COMMAND...` to start its daemon on HOST; this runs
# COMMAND, a remote shell's command line, in the namespace whose eth0 has HOST's address, with
# the host's own hostname (a UTS namespace: Open MPI keys its per-host session files by it).
set -euo pipefail
STATE=/run/meshinfer-hosts
while [[ "${1:-}" == -* ]]; do shift; done   # ssh-style options, if any
host="${1:?netns-agent.sh: no host}"; shift
line=$(grep -n "^$host " "$STATE/hostfile" 2>/dev/null | cut -d: -f1 || true)
[ -n "$line" ] || { echo "netns-agent.sh: $host is not a host of scripts/hosts.sh" >&2; exit 1; }
cpus=$(cat "$STATE/cpus$line" 2>/dev/null || echo "0-$(( $(nproc) - 1 ))")
exec taskset -c "$cpus" ip netns exec "mi-host$line" unshare --uts /bin/sh -c 'hostname "$0" && exec /bin/sh -c "$1"' "mi-host$line" "$*"
