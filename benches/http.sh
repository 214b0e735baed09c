#!/usr/bin/env bash
# HTTP load benchmark: leasehold's uncontended acquire -> release (both dispatch modes)
# against nginx `return 200` with 2 workers, in the same run, on loopback.
#
#   benches/http.sh [seconds] [connections]      (defaults: 10 s, 64 connections)
#
# Load: wrk -t2 -c<connections> --latency, with benches/wrk/acquire-release.lua for
# leasehold (each response parsed in Lua) and no script for nginx. leasehold runs with 2
# workers and fsync = never (the journal is not what this measures). Installs wrk and nginx
# from Debian's packages if missing (needs root). Prints one line per target: requests/s,
# p50, p99, non-2xx answers, and server CPU per request (user + system time of every server
# process, from /proc, divided by requests): the steadiest figure on a shared machine.
secs=${1:-10}
conns=${2:-64}
source "$(dirname "$0")/lib.sh"
need wrk wrk
need nginx nginx-light
build

report() { # name, wrk output, cpu ticks used
  local cpu_us
  wrk_figures "$2"
  cpu_us=$(cpu_us_per_op "$3" "$reqs")
  printf '%-22s %10s req/s  p50 %-9s p99 %-9s non-2xx %-6s cpu/req %s us\n' "$1" "$rps" "$p50" "$p99" "$non2xx" "$cpu_us"
}

run_leasehold() { # dispatch mode
  local port; port=$(free_port)
  start_leasehold "$port" "$1" never
  local procs before after
  procs=$(proc_tree "$master"); before=$(cpu_ticks "$procs")
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/acquire-release.lua" "http://127.0.0.1:$port" >"$work/wrk.out"
  after=$(cpu_ticks "$procs")
  stop_leasehold
  report "leasehold-$1" "$work/wrk.out" $((after - before))
}

run_nginx() {
  local port; port=$(free_port)
  start_nginx "$port"
  local procs before after
  procs=$(proc_tree "$(cat "$work/nginx.pid")"); before=$(cpu_ticks "$procs")
  wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/" >"$work/wrk.out"
  after=$(cpu_ticks "$procs")
  stop_nginx
  report "nginx-return-200" "$work/wrk.out" $((after - before))
}

machine
echo "# wrk -t2 -c$conns -d${secs}s --latency; leasehold with 2 workers; nginx with 2 workers"
run_leasehold reuseport
run_leasehold fd-passing
run_nginx
