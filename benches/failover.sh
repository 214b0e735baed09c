#!/usr/bin/env bash
# Failover time in cluster mode: from kill -9 of the leader's process group to the first
# change acknowledged by a new leader, over several runs, on a 3-member etcd and 3
# leasehold nodes on loopback (election_ttl_ms = 3000, etcd's shortest lease).
#
#   benches/failover.sh [runs]      (default 10)
#
# Each run: find the leader (GET /readyz), SIGKILL every process of it, then send an
# acquire of a fresh lock to the other two nodes in turn (curl, 2 s timeout each) until one
# answers 200; the time from the kill to that answer is the run's figure. The killed node
# is started again and waits until it follows before the next run. Prints each run, then
# p50 and max against the goal (election_ttl_ms + 1 s). Installs etcd if missing.
runs=${1:-10}
source "$(dirname "$0")/lib.sh"
need etcd etcd-server
need etcdctl etcd-client
build

ttl_ms=3000
bash "$root/tests/cluster/etcd.sh" start "$work/etcd" >/dev/null
trap 'bash "$root/tests/cluster/etcd.sh" stop "$work/etcd" >/dev/null 2>&1 || true; cleanup' EXIT
endpoints=$(sed 's/,/", "/g' "$work/etcd/endpoints")

ports=() pgids=()
start_node() { # index
  local i=$1 port=${ports[$1]}
  cat > "$work/node-$i.toml" <<CONF
[server]
listen = ["127.0.0.1:$port"]
workers = 1
data_dir = "$work/data-$i-$RANDOM"
log_level = "warn"
[cluster]
etcd_endpoints = ["$endpoints"]
node_name = "node-$i"
advertise_url = "http://127.0.0.1:$port"
election_ttl_ms = $ttl_ms
CONF
  setsid "$bin" serve --config "$work/node-$i.toml" 2>>"$work/node-$i.log" &
  pgids[$i]=$!; pids+=("$!"); disown "$!"
  wait_http "http://127.0.0.1:$port/healthz"
}

# role INDEX: the node's role from /readyz (empty when it does not answer).
role() { curl -s -m 1 "http://127.0.0.1:${ports[$1]}/readyz" | sed -n 's/.*"role":"\([a-z]*\)".*/\1/p'; }

# leader: the index of the node that says it leads, once exactly one does.
leader() {
  for _ in $(seq 400); do
    local found=() i
    for i in 0 1 2; do [ "$(role "$i")" = leader ] && found+=("$i"); done
    [ "${#found[@]}" = 1 ] && { echo "${found[0]}"; return; }
    sleep 0.05
  done
  echo "no single leader" >&2; exit 1
}

for i in 0 1 2; do ports[$i]=$(free_port); start_node "$i"; done
machine
echo "# 3-member etcd and 3 leasehold nodes on loopback, election_ttl_ms = $ttl_ms"
times=()
for run in $(seq "$runs"); do
  old=$(leader)
  killed_at=$(date +%s%N)
  kill -KILL -- "-${pgids[$old]}"
  done_at=
  while [ -z "$done_at" ]; do
    for i in 0 1 2; do
      [ "$i" = "$old" ] && continue
      if curl -s -m 2 -X POST "http://127.0.0.1:${ports[$i]}/v1/locks/failover-$run/acquire" -d '{}' | grep -q '"acquired"'; then
        done_at=$(date +%s%N); break
      fi
    done
  done
  ms=$(( (done_at - killed_at) / 1000000 ))
  times+=("$ms")
  echo "run $run: node-$old killed, first change acknowledged after $ms ms"
  start_node "$old"
  for _ in $(seq 400); do [ "$(role "$old")" = follower ] && break; sleep 0.05; done
done
printf '%s\n' "${times[@]}" | sort -n | awk -v goal=$((ttl_ms + 1000)) '
  { t[NR] = $1 } END { p50 = t[int((NR + 1) / 2)]; max = t[NR];
    printf "failover over %d runs: p50 %d ms, max %d ms (goal: at most %d ms)\n", NR, p50, max, goal }'
