#!/usr/bin/env bash
# Durable locks: leasehold's acquire -> release with fsync = always, interval and never,
# against etcd's lock-style transaction (create the key if absent; etcd syncs every write),
# in the same run on loopback.
#
#   benches/durability.sh [seconds] [connections]      (defaults: 10 s, 64 connections)
#
# Load: wrk -t2 -c<connections> --latency; leasehold (2 workers, reuseport) with
# benches/wrk/acquire-release.lua, etcd with benches/wrk/etcd-txn.lua. Installs wrk and
# etcd from Debian's packages if missing (needs root). Prints ops/s (an acquire or a
# release is one operation; for etcd one transaction), p50, p99, and the ratios the goals
# are set in: fsync=always against etcd, and interval against never.
secs=${1:-10}
conns=${2:-64}
source "$(dirname "$0")/lib.sh"
need wrk wrk
need etcd etcd-server
build

declare -A ops
report() { # name, wrk output
  wrk_figures "$2"
  ops[$1]=$rps
  printf '%-26s %10s ops/s  p50 %-9s p99 %-9s non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "$non2xx"
}

run_leasehold() { # fsync mode
  local port; port=$(free_port)
  start_leasehold "$port" reuseport "$1"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/acquire-release.lua" "http://127.0.0.1:$port" >"$work/wrk.out"
  stop_leasehold
  report "leasehold-fsync-$1" "$work/wrk.out"
}

run_etcd() {
  local port; port=$(free_port)
  start_etcd "$port"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/etcd-txn.lua" "http://127.0.0.1:$port/" >"$work/wrk.out"
  stop_etcd
  report "etcd-txn-create" "$work/wrk.out"
}

machine
echo "# wrk -t2 -c$conns -d${secs}s --latency; leasehold with 2 workers"
run_leasehold always
run_leasehold interval
run_leasehold never
run_etcd
awk -v a="${ops[leasehold-fsync-always]}" -v e="${ops[etcd-txn-create]}" -v i="${ops[leasehold-fsync-interval]}" -v n="${ops[leasehold-fsync-never]}" \
  'BEGIN { printf "fsync=always / etcd: %.1fx   interval / never: %.2f\n", a / e, i / n }'
