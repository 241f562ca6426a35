#!/usr/bin/env bash
# A cluster of N "hosts" on this machine: network namespaces joined by veth links to one
# bridge, each with its own address in a private /24, optionally shaped to a link rate.
# MPI runs across them over TCP only, as it would across real hosts on Ethernet (issue 14).
#
#   scripts/hosts.sh up N [--rate RATE] [--subnet A.B.C.0/24]   make hosts 1..N (as root)
#   scripts/hosts.sh down                                       remove everything (idempotent)
#   scripts/hosts.sh status                                     the hosts, rate and link counters
#   scripts/hosts.sh mpirun [-np K] ARGS...                     mpirun across the hosts, TCP only (-np first)
#   scripts/hosts.sh exec I COMMAND...                          run a command on host I (on its cores)
#   scripts/hosts.sh pids                                       processes left in the hosts
#
# Layout: host I is namespace `mi-hostI` with interface `eth0` at A.B.C.I; its link's other
# end, `mi-hI`, is a port of the bridge `mi-br`. mpirun runs on a head node of its own,
# namespace `mi-head` at A.B.C.253 (link `mi-h0`, never shaped: it carries only the
# launcher's control traffic), and starts a daemon on every host through
# scripts/netns-agent.sh. The bridge has A.B.C.254 in this (the root) namespace so that the
# hosts (e.g. `serve` on host 1) are reachable from here. The hosts have no default route,
# there is no NAT and nothing is forwarded out of the bridge: the /24 exists only between
# these namespaces. `--rate` (tc's syntax: 100mbit, 1gbit, 10gbit; or 100M, 1G, 10G) puts a
# token bucket (tbf) on both directions of every host's link: the bridge port's egress
# (traffic to the host) and eth0's (from it).
#
# Each namespace retransmits unanswered TCP data twice (net.ipv4.tcp_retries2, a
# per-namespace setting; Linux's default 15 waits ~15 minutes): when a link goes down while
# the launcher has a message in flight (an abort, a rank's exit), mpirun and the cut-off
# host's daemon give up on it after ~1.4 s and end the job instead of waiting (with 3, ~3 s:
# a link cut then ended the job 12 s after the cut, of the 15 its test allows; with 2, 8.5 s).
# These links drop a segment only when a tbf queue overflows, never the same one three times
# in the runs measured here. The launcher's TCP keepalive (see run_mpirun) covers idle
# connections. On real hosts set both the same way.
set -euo pipefail

STATE=/run/meshinfer-hosts
BRIDGE=mi-br
HERE="$(cd "$(dirname "$0")" && pwd)"

die() { echo "hosts.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces, veth links and tc)"; }

# "100M" / "1G" / "10gbit" / "100mbit" -> tc's spelling, and bytes per second.
tc_rate() {
    local r="${1,,}"
    case "$r" in
        *bit) ;;
        *k) r="${r%k}kbit" ;; *m) r="${r%m}mbit" ;; *g) r="${r%g}gbit" ;;
        *) die "rate '$1': expected e.g. 100mbit, 1gbit, 10gbit (or 100M, 1G, 10G)" ;;
    esac
    [[ "$r" =~ ^[0-9]+(\.[0-9]+)?[kmg]?bit$ ]] || die "rate '$1': expected e.g. 100mbit, 1gbit, 10gbit"
    echo "$r"
}
rate_bytes() {  # tc spelling -> bytes/s
    local r="$1" n unit
    n="${r%%[kmg]bit}"; n="${n%bit}"
    case "$r" in *kbit) unit=1000 ;; *mbit) unit=1000000 ;; *gbit) unit=1000000000 ;; *) unit=1 ;; esac
    awk -v n="$n" -v u="$unit" 'BEGIN { printf "%d", n * u / 8 }'
}

# Shapes one interface's egress (run inside its namespace when $2 is set).
shape() {
    local dev="$1" ns="$2" rate="$3" bytes burst limit
    bytes=$(rate_bytes "$rate")
    # Bucket: 100 µs of traffic (at least 4 KiB): a real link sends every byte at its rate, and
    # a bigger bucket refilled while the ranks compute would let whole messages through at
    # once. (tbf cuts larger GSO packets into segments.) Queue: 20 ms of traffic.
    burst=$(( bytes / 10000 )); [ "$burst" -ge 4096 ] || burst=4096
    limit=$(( bytes / 50 + burst )); [ "$limit" -ge 65536 ] || limit=65536
    local run=(); [ -n "$ns" ] && run=(ip netns exec "$ns")
    "${run[@]}" tc qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" limit "$limit"
}

prefix_of() { echo "${1%.*/*}"; }   # 10.77.0.0/24 -> 10.77.0

up() {
    need_root
    local n="" rate="" subnet="10.77.0.0/24"
    while [ $# -gt 0 ]; do
        case "$1" in
            --rate) [ $# -ge 2 ] || die "--rate needs a value"; rate="$(tc_rate "$2")"; shift 2 ;;
            --rate=*) rate="$(tc_rate "${1#--rate=}")"; shift ;;
            --subnet) [ $# -ge 2 ] || die "--subnet needs a value"; subnet="$2"; shift 2 ;;
            [0-9]*) n="$1"; shift ;;
            *) die "up: unknown argument '$1' (usage: hosts.sh up N [--rate RATE] [--subnet A.B.C.0/24])" ;;
        esac
    done
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 16 ] || die "up: N must be 1...16 hosts"
    [[ "$subnet" =~ ^([0-9]+\.){3}0/24$ ]] || die "--subnet '$subnet': expected a /24 such as 10.77.0.0/24"
    command -v ip >/dev/null || die "the 'ip' command is missing (apt-get install iproute2)"
    [ -z "$rate" ] || command -v tc >/dev/null || die "the 'tc' command is missing (apt-get install iproute2)"
    [ ! -e "$STATE/hosts" ] || die "a cluster is already up ($(cat "$STATE/hosts") hosts): run 'hosts.sh down' first"
    # The /24 must not be in use here: any route inside or covering it (besides the default).
    local routed
    routed=$(ip -4 route show table all root "$subnet" 2>/dev/null; ip -4 route show table all match "$subnet" 2>/dev/null | grep -v '^default' || true)
    [ -z "$routed" ] || die "$subnet is already routed on this machine ($(echo "$routed" | head -1)); pick another with --subnet"
    local p; p="$(prefix_of "$subnet")"

    trap 'echo "hosts.sh: up failed; removing what it made" >&2; down >/dev/null 2>&1 || true' ERR
    mkdir -p "$STATE"
    ip link add "$BRIDGE" type bridge
    ip addr add "$p.254/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local i ns cores; cores=$(nproc)
    for i in $(seq 0 "$n"); do
        ns="mi-host$i"; [ "$i" = 0 ] && ns=mi-head
        ip netns add "$ns"
        ip link add "mi-h$i" type veth peer name eth0 netns "$ns"
        ip link set "mi-h$i" master "$BRIDGE"
        ip link set "mi-h$i" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip addr add "$p.$([ "$i" = 0 ] && echo 253 || echo "$i")/24" dev eth0
        ip netns exec "$ns" ip link set eth0 up
        ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_retries2=2
        [ "$i" = 0 ] && continue
        if [ -n "$rate" ]; then
            shape "mi-h$i" "" "$rate"
            shape eth0 "$ns" "$rate"
        fi
        echo "$p.$i slots=1" >> "$STATE/hostfile"
        # The host's cores: this machine's, divided among the hosts (shared round-robin
        # when there are more hosts than cores), as if each were a machine of its own.
        local per=$(( cores / n )); [ "$per" -ge 1 ] || per=1
        local first=$(( (i - 1) * per % cores ))
        echo "$first-$(( first + per - 1 ))" > "$STATE/cpus$i"
    done
    echo "$subnet" > "$STATE/subnet"
    echo "${rate:-unshaped}" > "$STATE/rate"
    echo "$n" > "$STATE/hosts"
    trap - ERR
    echo "hosts.sh: $n hosts up on $subnet (${rate:-unshaped}); this namespace is $p.254"
}

namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^mi-(host[0-9]+|head)$' || true; }

down() {
    need_root
    local ns
    for ns in $(namespaces); do
        # Whatever still runs in a host goes with it.
        local pids; pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    local link
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^mi-h[0-9]+$' || true); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf "$STATE"
    echo "hosts.sh: down"
}

require_up() { [ -e "$STATE/hosts" ] || die "no cluster is up: run 'hosts.sh up N' first"; }

status() {
    require_up
    echo "hosts: $(cat "$STATE/hosts")  subnet: $(cat "$STATE/subnet")  rate: $(cat "$STATE/rate")"
    local i
    for i in $(seq 1 "$(cat "$STATE/hosts")"); do
        printf 'mi-host%s  %s  cores %s  ' "$i" "$(sed -n "${i}p" "$STATE/hostfile" | cut -d' ' -f1)" "$(cat "$STATE/cpus$i")"
        # bytes the host received / sent over its link (the bridge port's tx / rx)
        echo "rx $(cat /sys/class/net/mi-h$i/statistics/tx_bytes) B  tx $(cat /sys/class/net/mi-h$i/statistics/rx_bytes) B"
    done
}

# mpirun on the head node across the hosts, one rank per host (-np defaults to all hosts), TCP only:
# ob1 with the tcp and self transports (Debian's Open MPI would otherwise pick UCX, and the
# namespaces share /dev/shm), both MPI's and the launcher's TCP on the /24 alone, and the
# launcher entering a host's namespace instead of ssh (scripts/netns-agent.sh). The launcher's
# TCP keepalive (7 s idle, then 3 probes 1 s apart) lets mpirun and each host's daemon notice a
# link that went down within ~10 s instead of TCP's hours; it is longer than the collective
# timeouts the tests use (5 s), so a rank mid-collective reports the lost peer itself first
# (and `serve` answers 503) before the launcher ends the job. Each host's processes run
# on that host's cores (`up` divides this machine's among the hosts; the agent applies it) and
# Open MPI does not bind them itself: every host's daemon would bind its rank to the first
# core, so all ranks would share core 0.
run_mpirun() {
    require_up
    local subnet; subnet="$(cat "$STATE/subnet")"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    local np=(); [[ "${1:-}" == -np || "${1:-}" == -n ]] || np=(-np "$(cat "$STATE/hosts")")
    exec ip netns exec mi-head mpirun --hostfile "$STATE/hostfile" "${np[@]}" \
        --bind-to none --mca pml ob1 --mca btl tcp,self \
        --mca btl_tcp_if_include "$subnet" --mca oob_tcp_if_include "$subnet" \
        --mca plm_rsh_agent "$HERE/netns-agent.sh" \
        --mca oob_tcp_keepalive_time 7 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3 \
        "$@"
}

host_exec() {
    require_up
    local i="${1:-}"; shift || true
    [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$(cat "$STATE/hosts")" ] || die "exec: no host '$i'"
    exec taskset -c "$(cat "$STATE/cpus$i")" ip netns exec "mi-host$i" "$@"
}

pids() {
    local ns
    for ns in $(namespaces); do
        local p; for p in $(ip netns pids "$ns"); do echo "$ns $p $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-120)"; done
    done
}

cmd="${1:-}"; shift || true
case "$cmd" in
    up) up "$@" ;;
    down) down ;;
    status) status ;;
    mpirun) run_mpirun "$@" ;;
    exec) host_exec "$@" ;;
    pids) pids ;;
    *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
