#!/usr/bin/env bash
# TLS benchmark: leasehold's uncontended acquire -> release over its own TLS port (`[tls]`,
# both dispatch modes) against nginx `return 200` over TLS, in the same run, on loopback,
# with kept connections (each wrk connection does one handshake, then only records).
#
#   benches/tls.sh [seconds] [connections]      (defaults: 10 s, 64 connections)
#
# Both servers get the same certificate (ECDSA P-256, made here with openssl) and agree on
# the same suite (TLS 1.3, AES-256-GCM, what wrk's OpenSSL prefers); both run 2 workers;
# leasehold with fsync = never (the journal is not what this measures). Load:
# wrk -t2 -c<connections> --latency, with benches/wrk/acquire-release.lua for leasehold.
# Prints one line per target (requests/s, p50, p99, non-2xx, server CPU per request), then
# leasehold's ratio to nginx. Installs wrk and nginx from Debian's packages if missing.
secs=${1:-10}
conns=${2:-64}
source "$(dirname "$0")/lib.sh"
need wrk wrk
need nginx nginx-light
build

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

declare -A rates cpus
report() { # name, wrk output, cpu ticks used
  wrk_figures "$2"
  rates[$1]=$rps; cpus[$1]=$(cpu_us_per_op "$3" "$reqs")
  printf '%-26s %10s req/s  p50 %-9s p99 %-9s non-2xx %-6s cpu/req %s us\n' "$1" "$rps" "$p50" "$p99" "$non2xx" "${cpus[$1]}"
}

run_leasehold() { # dispatch mode
  local port tls; port=$(free_port); tls=$(free_port)
  start_leasehold "$port" "$1" never "[tls]
listen = [\"127.0.0.1:$tls\"]
cert_file = \"$work/cert.pem\"
key_file = \"$work/key.pem\""
  wait_http -k "https://127.0.0.1:$tls/healthz"
  local procs before after
  procs=$(proc_tree "$master"); before=$(cpu_ticks "$procs")
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/acquire-release.lua" "https://127.0.0.1:$tls" >"$work/wrk.out"
  after=$(cpu_ticks "$procs")
  stop_leasehold
  report "leasehold-tls-$1" "$work/wrk.out" $((after - before))
}

run_nginx() {
  local port; port=$(free_port)
  cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$port ssl reuseport;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { return 200 '{"ok":true}'; }
  }
}
CONF
  nginx -c "$work/nginx.conf"
  wait_http -k "https://127.0.0.1:$port/"
  local procs before after
  procs=$(proc_tree "$(cat "$work/nginx.pid")"); before=$(cpu_ticks "$procs")
  wrk -t2 -c"$conns" -d"${secs}s" --latency "https://127.0.0.1:$port/" >"$work/wrk.out"
  after=$(cpu_ticks "$procs")
  stop_nginx
  report "nginx-tls-return-200" "$work/wrk.out" $((after - before))
}

machine
echo "# wrk -t2 -c$conns -d${secs}s --latency over TLS (kept connections); leasehold and nginx with 2 workers"
run_leasehold reuseport
run_leasehold fd-passing
run_nginx
for mode in reuseport fd-passing; do
  awk -v a="${rates[leasehold-tls-$mode]}" -v b="${rates[nginx-tls-return-200]}" -v m="$mode" \
    'BEGIN { printf "leasehold (%s) / nginx over TLS: %.2f x the requests/s\n", m, a / b }'
done
