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
set -euo pipefail
secs=${1:-10}
conns=${2:-64}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need etcd etcd-server
(cd "$root" && cargo build --release --locked -q)
bin="$root/target/release/leasehold"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$@" && return 0; sleep 0.05; done; echo "no answer from $*" >&2; exit 1; }
declare -A rps p99
report() { # name, wrk output
  local p50
  rps[$1]=$(awk '/Requests\/sec/ {print $2}' "$2")
  p50=$(awk '$1=="50%" {print $2}' "$2"); p99[$1]=$(awk '$1=="99%" {print $2}' "$2")
  printf '%-26s %10s ops/s  p50 %-9s p99 %s\n' "$1" "${rps[$1]}" "$p50" "${p99[$1]}"
}

run_leasehold() { # fsync mode
  local port; port=$(free_port)
  cat > "$work/leasehold.toml" <<CONF
[server]
listen = ["127.0.0.1:$port"]
workers = 2
data_dir = "$work/data-$1"
log_level = "warn"
[journal]
fsync = "$1"
CONF
  "$bin" serve --config "$work/leasehold.toml" 2>"$work/leasehold.log" &
  local master=$!; pids+=("$master")
  wait_http "http://127.0.0.1:$port/healthz"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/acquire-release.lua" "http://127.0.0.1:$port" >"$work/wrk.out"
  kill -TERM "$master"; wait "$master" || true
  report "leasehold-fsync-$1" "$work/wrk.out"
}

run_etcd() {
  local port peer; port=$(free_port); peer=$(free_port)
  etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
       --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
       --initial-cluster "default=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
  local etcd=$!; pids+=("$etcd")
  wait_http -X POST "http://127.0.0.1:$port/v3/kv/range" -d '{"key":"AA=="}'
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/etcd-txn.lua" "http://127.0.0.1:$port/" >"$work/wrk.out"
  kill "$etcd"; wait "$etcd" || true
  report "etcd-txn-create" "$work/wrk.out"
}

echo "# $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r), data on $(df -h "$work" | awk 'NR==2 {print $1}')"
echo "# wrk -t2 -c$conns -d${secs}s --latency; leasehold with 2 workers"
run_leasehold always
run_leasehold interval
run_leasehold never
run_etcd
awk -v a="${rps[leasehold-fsync-always]}" -v e="${rps[etcd-txn-create]}" -v i="${rps[leasehold-fsync-interval]}" -v n="${rps[leasehold-fsync-never]}" \
  'BEGIN { printf "fsync=always / etcd: %.1fx   interval / never: %.2f\n", a / e, i / n }'
