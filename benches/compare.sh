#!/usr/bin/env bash
# leasehold against its peers, in one run on loopback, as one table: the `make bench`
# summary the README quotes.
#
#   benches/compare.sh [seconds] [connections]      (defaults: 10 s, 64 connections)
#
# Rows: leasehold's uncontended acquire -> release (each is one operation) in both dispatch
# modes with fsync = never, and with fsync = always; leasehold's contended hand-off
# (benches/handoff.rs: 1,000 long-polling waiters on one mutex); nginx `return 200` (the
# machine's HTTP ceiling); Redis `SET key tok NX PX 30000` (a Redis lock's acquire, by
# redis-benchmark); etcd's create-if-absent transaction (a consensus store's lock, on its
# JSON gateway; etcd syncs every write). HTTP targets run under
# `wrk -t2 -c<connections> -d<seconds>s --latency`. Then leasehold's ratio to each peer.
# Installs wrk, nginx, Redis and etcd from Debian's packages if missing (needs root).
secs=${1:-10}
conns=${2:-64}
source "$(dirname "$0")/lib.sh"
need wrk wrk
need nginx nginx-light
need redis-server redis-server
need redis-benchmark redis-tools
need etcd etcd-server
build

declare -A ops p50s p99s cpus
rows=()
# to_ms VALUE: wrk's "803.00us" / "1.07ms" / "1.20s" in milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }
row() { # name, ops/s, p50 ms, p99 ms[, server CPU µs per op]
  rows+=("$1"); ops[$1]=$2; p50s[$1]=$3; p99s[$1]=$4; cpus[$1]=${5:--}
  printf '  measured %-34s %10.0f ops/s\n' "$1" "$2" >&2
}
wrk_row() { # name, wrk output, server CPU ticks over the run
  wrk_figures "$2"
  [ "$non2xx" = 0 ] || echo "  warning: $1 had $non2xx non-2xx answers" >&2
  row "$1" "$rps" "$(to_ms "$p50")" "$(to_ms "$p99")" "$(cpu_us_per_op "$3" "$reqs")"
}

leasehold_row() { # name, dispatch, fsync
  local port; port=$(free_port)
  start_leasehold "$port" "$2" "$3"
  local procs before; procs=$(proc_tree "$master"); before=$(cpu_ticks "$procs")
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/acquire-release.lua" "http://127.0.0.1:$port" >"$work/wrk.out"
  local used=$(($(cpu_ticks "$procs") - before))
  stop_leasehold
  wrk_row "$1" "$work/wrk.out" "$used"
}

handoff_row() {
  local line
  line=$(cd "$root" && cargo bench --locked -q --bench handoff 2>/dev/null | grep 'contended hand-off')
  row "leasehold hand-off, 1000 waiters" \
    "$(sed -E 's/.*\(([0-9.]+)\/s\).*/\1/' <<<"$line")" \
    "$(sed -E 's/.*p50 ([0-9]+) us.*/\1/' <<<"$line" | awk '{printf "%.2f", $1 / 1000}')" \
    "$(sed -E 's/.*p99 ([0-9]+) us.*/\1/' <<<"$line" | awk '{printf "%.2f", $1 / 1000}')"
}

nginx_row() {
  local port; port=$(free_port)
  start_nginx "$port"
  local procs before; procs=$(proc_tree "$(cat "$work/nginx.pid")"); before=$(cpu_ticks "$procs")
  wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/" >"$work/wrk.out"
  local used=$(($(cpu_ticks "$procs") - before))
  stop_nginx
  wrk_row "nginx return 200" "$work/wrk.out" "$used"
}

redis_row() {
  local port; port=$(free_port)
  redis-server --port "$port" --save '' --appendonly no --daemonize no --logfile "$work/redis.log" &
  local redis=$!; pids+=("$redis")
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
  local n=$((secs * 60000)) before; before=$(cpu_ticks "$redis")
  redis-benchmark -p "$port" -q -n "$n" -c "$conns" -r 100000 --csv SET 'lock:__rand_int__' tok NX PX 30000 >"$work/redis.out"
  local used=$(($(cpu_ticks "$redis") - before))
  kill "$redis"; wait "$redis" || true
  local fields; fields=$(awk -F',' 'NR==2 {gsub(/"/,""); printf "%s %.2f %.2f", $2, $5, $7}' "$work/redis.out")
  # shellcheck disable=SC2086
  row "redis SET NX PX" $fields "$(cpu_us_per_op "$used" "$n")"
}

etcd_row() {
  local port; port=$(free_port)
  start_etcd "$port"
  local before; before=$(cpu_ticks "$etcd")
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/etcd-txn.lua" "http://127.0.0.1:$port/" >"$work/wrk.out"
  local used=$(($(cpu_ticks "$etcd") - before))
  stop_etcd
  wrk_row "etcd txn create-if-absent" "$work/wrk.out" "$used"
}

leasehold_row "leasehold, reuseport" reuseport never
leasehold_row "leasehold, fd-passing" fd-passing never
leasehold_row "leasehold, fsync=always" reuseport always
handoff_row
nginx_row
redis_row
etcd_row

machine
echo "# wrk -t2 -c$conns -d${secs}s --latency (redis-benchmark -c$conns for Redis); leasehold and nginx with 2 workers"
echo
echo "| target | ops/s | p50 ms | p99 ms | server CPU µs/op | × nginx | × Redis | × etcd |"
echo "|---|---|---|---|---|---|---|---|"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
for name in "${rows[@]}"; do
  vs=("" "" "")
  if [[ $name == leasehold,* ]]; then
    vs=("$(ratio "${ops[$name]}" "${ops[nginx return 200]}")" "$(ratio "${ops[$name]}" "${ops[redis SET NX PX]}")" \
        "$(ratio "${ops[$name]}" "${ops[etcd txn create-if-absent]}")")
  fi
  printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$name" "${ops[$name]}" "${p50s[$name]}" "${p99s[$name]}" "${cpus[$name]}" "${vs[@]}"
done
