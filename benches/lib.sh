# What the shell benchmarks share; sourced by them, not run. Sets `root` (the checkout),
# `work` (a temporary directory, removed on exit with every server started here) and
# `bin` (after `build`), and defines the helpers below.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# need COMMAND DEBIAN_PACKAGE: installs the package when the command is missing (needs root).
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }

# build: the release binary, as `bin`.
build() {
  (cd "$root" && cargo build --release --locked -q)
  bin="$root/target/release/leasehold"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# proc_tree PID: the process and its children (a server's master and its workers).
proc_tree() { echo "$1"; pgrep -P "$1" || true; }
# cpu_ticks PIDS: user + system clock ticks the processes have used so far (from /proc).
cpu_ticks() { local t=0; for p in $1; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
# cpu_us_per_op TICKS OPS: microseconds of CPU per operation.
cpu_us_per_op() { awk -v t="$1" -v r="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (r > 0) printf "%.1f", t * 1e6 / hz / r; else print "-" }'; }

# wait_http CURL_ARGS...: until the URL answers (10 s at most).
wait_http() { for _ in $(seq 200); do curl -s -o /dev/null "$@" && return 0; sleep 0.05; done; echo "no answer from $*" >&2; exit 1; }

# machine: one comment line naming the machine.
machine() { echo "# $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r), $work on $(df -h "$work" | awk 'NR==2 {print $1}')"; }

# start_leasehold PORT DISPATCH FSYNC [EXTRA]: leasehold with 2 workers on 127.0.0.1:PORT,
# data in $work, EXTRA (TOML sections) appended to its configuration; sets `master` to its
# pid and waits until it answers.
start_leasehold() {
  cat > "$work/leasehold.toml" <<CONF
[server]
listen = ["127.0.0.1:$1"]
workers = 2
dispatch = "$2"
data_dir = "$work/data-$2-$3"
log_level = "warn"
[journal]
fsync = "$3"
${4:-}
CONF
  "$bin" serve --config "$work/leasehold.toml" 2>"$work/leasehold.log" &
  master=$!; pids+=("$master")
  wait_http "http://127.0.0.1:$1/healthz"
}

# stop_leasehold: SIGTERM to `master`, and wait for it.
stop_leasehold() { kill -TERM "$master"; wait "$master" || true; }

# wrk_figures FILE: sets rps, p50, p99, non2xx and reqs from a `wrk --latency` output.
wrk_figures() {
  rps=$(awk '/Requests\/sec/ {print $2}' "$1")
  p50=$(awk '$1=="50%" {print $2}' "$1"); p99=$(awk '$1=="99%" {print $2}' "$1")
  non2xx=$(awk '/Non-2xx/ {print $5}' "$1"); non2xx=${non2xx:-0}
  reqs=$(awk '/requests in/ {print $1}' "$1")
}

# start_nginx PORT: nginx `return 200` with 2 workers on 127.0.0.1:PORT; waits until it answers.
start_nginx() {
  cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$1 reuseport; location / { return 200 '{"ok":true}'; } } }
CONF
  nginx -c "$work/nginx.conf"
  wait_http "http://127.0.0.1:$1/"
}

stop_nginx() { kill "$(cat "$work/nginx.pid")"; rm -f "$work/nginx.pid"; }

# start_etcd PORT: a one-member etcd with its client port on 127.0.0.1:PORT and data in
# $work; sets `etcd` to its pid and waits until it answers.
start_etcd() {
  local peer; peer=$(free_port)
  etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$1" --advertise-client-urls "http://127.0.0.1:$1" \
       --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
       --initial-cluster "default=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
  etcd=$!; pids+=("$etcd")
  wait_http -X POST "http://127.0.0.1:$1/v3/kv/range" -d '{"key":"AA=="}'
}

stop_etcd() { kill "$etcd"; wait "$etcd" || true; }
