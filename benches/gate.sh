#!/usr/bin/env bash
# The cost of a waiting room's gate: one admitted visitor's requests through nginx with
# `auth_request` to leasehold's gate (contrib/nginx/waiting-room.conf, included as it is),
# against the same nginx proxying to the same origin with no gate, in one run, on loopback.
#
#   benches/gate.sh [seconds] [connections]      (defaults: 10 s, 64 connections)
#
# Load: wrk -t2 -c<connections> --latency with the visitor's session cookie on every request.
# nginx: 2 workers, keepalive upstreams; the origin is an nginx `return 200` server of the
# same nginx. leasehold: 2 workers, one room of capacity 1000; every gate check renews the
# session's lease in the keeper, so it is measured twice: with fsync = never and with the
# default fsync = always (the renewal is journaled; one fsync covers a loop turn's batch).
# Prints one line per setup: requests/s, p50, p99, non-2xx answers, and CPU per request of
# nginx and leasehold together (user + system time from /proc over requests). Installs wrk
# and nginx from Debian's packages if missing (needs root).
secs=${1:-10}
conns=${2:-64}
source "$(dirname "$0")/lib.sh"
need wrk wrk
need nginx nginx
build

room=bench
# 32 random bytes as hex: the room's signing secret for this run only.
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')


start_room_leasehold() { # PORT FSYNC SITE_PORT
  cat >"$work/leasehold.toml" <<CONF
[server]
listen = ["127.0.0.1:$1"]
workers = 2
data_dir = "$work/data-$2"
log_level = "warn"
[journal]
fsync = "$2"
[[rooms]]
name = "$room"
capacity = 1000
session_ttl_ms = 60000
max_session_ms = 3600000
secret = "$secret"
origin = "http://127.0.0.1:$3/"
cookie_secure = false
CONF
  "$bin" serve --config "$work/leasehold.toml" 2>"$work/leasehold.log" &
  master=$!; pids+=("$master")
  wait_http "http://127.0.0.1:$1/healthz"
}

start_site_nginx() { # LEASEHOLD_PORT SITE_PORT PLAIN_PORT ORIGIN_PORT
  cat >"$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream leasehold { server 127.0.0.1:$1; keepalive 64; }
  upstream origin { server 127.0.0.1:$4; keepalive 64; }
  server { listen 127.0.0.1:$4; location / { return 200 '{"ok":true}'; } }
  server {
    listen 127.0.0.1:$2;
    set \$leasehold_room $room;
    include $root/contrib/nginx/waiting-room.conf;
  }
  server {
    listen 127.0.0.1:$3;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  nginx -c "$work/nginx.conf"
  wait_http "http://127.0.0.1:$3/"
}

report() { # name, wrk output, cpu ticks used
  local cpu_us
  wrk_figures "$2"
  cpu_us=$(cpu_us_per_op "$3" "$reqs")
  printf '%-34s %10s req/s  p50 %-9s p99 %-9s non-2xx %-6s cpu/req %s us\n' "$1" "$rps" "$p50" "$p99" "$non2xx" "$cpu_us"
}

run() { # NAME URL [COOKIE]
  local procs before after
  procs="$(proc_tree "$(cat "$work/nginx.pid")") $(proc_tree "$master")"
  before=$(cpu_ticks "$procs")
  if [ -n "${3:-}" ]; then
    wrk -t2 -c"$conns" -d"${secs}s" --latency -H "Cookie: $3" "$2" >"$work/wrk.out"
  else
    wrk -t2 -c"$conns" -d"${secs}s" --latency "$2" >"$work/wrk.out"
  fi
  after=$(cpu_ticks "$procs")
  report "$1" "$work/wrk.out" $((after - before))
}

machine
echo "# wrk -t2 -c$conns -d${secs}s --latency; nginx with 2 workers; leasehold with 2 workers"
for fsync in never always; do
  lh=$(free_port); site=$(free_port); plain=$(free_port); origin=$(free_port)
  start_room_leasehold "$lh" "$fsync" "$site"
  start_site_nginx "$lh" "$site" "$plain" "$origin"
  # One visitor's admission: the site answers the waiting page's 303 with the session cookie.
  cookie=$(curl -s -o /dev/null -D - "http://127.0.0.1:$site/" | tr -d '\r' |
    awk -v n="lh_session_$room=" 'tolower($1) == "set-cookie:" && index($2, n) == 1 { sub(/;.*/, "", $2); print $2 }')
  [ -n "$cookie" ] || { echo "no session cookie from the waiting page; leasehold said:" >&2; cat "$work/leasehold.log" >&2; exit 1; }
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $cookie" "http://127.0.0.1:$site/")
  [ "$status" = 200 ] || { echo "the gate refused the fresh session cookie ($status)" >&2; exit 1; }
  [ "$fsync" = never ] && run "nginx -> origin (no gate)" "http://127.0.0.1:$plain/"
  run "nginx -> gate (fsync=$fsync) -> origin" "http://127.0.0.1:$site/" "$cookie"
  kill "$(cat "$work/nginx.pid")"; rm -f "$work/nginx.pid"
  stop_leasehold
done
