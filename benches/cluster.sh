#!/usr/bin/env bash
# Cluster mode under load: leasehold's acquire -> release through the leader of 3 nodes on a
# 3-member etcd, against etcd's own lock-style transaction on the same etcd cluster, in the
# same run on loopback.
#
#   benches/cluster.sh [seconds] [connections]      (defaults: 10 s, 64 connections)
#
# Starts the 3-member etcd (tests/cluster/etcd.sh) and 3 nodes (tests/cluster/nodes.sh;
# release build, 2 workers each, log_level warn), finds the leader through /readyz, then runs
# wrk -t2 -c<connections> --latency with benches/wrk/acquire-release.lua against the leader
# (every change there is committed to etcd before it is answered), then with
# benches/wrk/etcd-txn.lua against etcd's raft leader member's client URL (its best member:
# another member would forward every write to it), while the nodes still run and follow.
# Prints ops/s (an acquire or a release is one operation; for etcd one transaction), p50,
# p99 and non-2xx for each; the batches the leader put in etcd during its run (counted in
# etcd's log: how many operations one txn carried) and its mean put time (its /metrics
# histogram); the ratio leasehold / etcd; and for each run how busy the two cores were and
# how much of that went to processes outside the rig (the machine may be shared).
# Installs wrk, and etcd through tests/deps.sh, from Debian's packages if missing (needs root).
secs=${1:-10}
conns=${2:-64}
source "$(dirname "$0")/lib.sh"
source "$root/tests/cluster/nodes.sh"
need wrk wrk
bash "$root/tests/deps.sh"
build

rig_down() {
  nodes_stop "$work" || true
  bash "$root/tests/cluster/etcd.sh" stop "$work/etcd" 2>/dev/null || true
  cleanup
}
trap rig_down EXIT

declare -A ops
report() { # name, wrk output
  wrk_figures "$2"
  ops[$1]=$rps
  printf '%-28s %10s ops/s  p50 %-9s p99 %-9s non-2xx %s\n' "$1" "$rps" "$p50" "$p99" "$non2xx"
}

# metric URL NAME: the value of one unlabelled series in URL/metrics. (awk reads to the end:
# leaving early would cut curl's pipe, and pipefail would take that for a failure.)
metric() { curl -fs --max-time 2 "$1/metrics" | awk -v n="$2" '$1 == n && !found {print $2; found = 1}'; }

# The machine is shared: each run says how busy both cores were and how much of that went
# to processes outside this rig (the etcd members, the nodes' process groups, and the wrk and
# other commands this script waited for). Times are in clock ticks, from /proc.
machine_ticks() { awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6}' /proc/stat; }
rig_ticks() {
  local pid n master ticks=0
  for pid in $(cat "$work/etcd/pids"; for n in 1 2 3; do
    master=$(nodes_pid "$work" "$n")
    [ -z "$master" ] || pgrep -g "$master" || true
  done); do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo $((ticks + $(awk '{print $16 + $17}' /proc/$$/stat)))
}
# measured NAME URL SCRIPT: one wrk run, its figures and the machine's load meanwhile.
measured() {
  local busy0 total0 busy1 total1 rig0 rig1
  read -r busy0 total0 <<<"$(machine_ticks)"
  rig0=$(rig_ticks)
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/$3" "$2" >"$work/wrk-$1.out"
  rig1=$(rig_ticks)
  read -r busy1 total1 <<<"$(machine_ticks)"
  report "$1" "$work/wrk-$1.out"
  awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) -v r=$((rig1 - rig0)) 'BEGIN {
    o = b - r; if (o < 0) o = 0
    printf "  # meanwhile both cores were %.0f%% busy; processes outside this rig took %.0f%% of them\n", 100 * b / t, 100 * o / t }'
}

bash "$root/tests/cluster/etcd.sh" start "$work/etcd"
endpoints=$(<"$work/etcd/endpoints")
nodes_start "$work" "$bin" "$endpoints" 2 warn "$(free_port)" "$(free_port)" "$(free_port)"
leader=$(nodes_wait_leader "$work" 30)
url=$(nodes_url "$work" "$leader")

machine
echo "# wrk -t2 -c$conns -d${secs}s --latency; 3 leasehold nodes (2 workers each) and 3 etcd members on this machine"

# Batches in etcd's log (one txn each) and the leader's put times, before and after.
batches() {
  ETCDCTL_API=3 etcdctl --endpoints="$endpoints" get /leasehold/log/ --prefix --keys-only --limit=1 -w json |
    sed -n 's/.*"count":\([0-9]*\).*/\1/p'
}
batches0=$(batches)
count0=$(metric "$url" leasehold_cluster_commit_seconds_count)
sum0=$(metric "$url" leasehold_cluster_commit_seconds_sum)
measured leasehold-cluster-leader "$url" acquire-release.lua
reqs_leasehold=$reqs p99_leasehold=$p99
batches1=$(batches)
count1=$(metric "$url" leasehold_cluster_commit_seconds_count)
sum1=$(metric "$url" leasehold_cluster_commit_seconds_sum)
still=$(nodes_field "$(nodes_readyz "$url")" role)
[ "$still" = leader ] || echo "# note: node-$leader is no longer the leader after the run (it says: ${still:-nothing})"

# etcd's raft leader: the member whose `endpoint status` says IS LEADER.
etcd_url=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint status -w simple 2>/dev/null |
  awk -F', ' '$5 == "true" && !found {print $1; found = 1}')
etcd_url=${etcd_url:-${endpoints%%,*}}
measured etcd-txn-create "$etcd_url/" etcd-txn.lua

awk -v b="$((batches1 - batches0))" -v c="$((count1 - count0))" -v s0="$sum0" -v s1="$sum1" -v r="$reqs_leasehold" \
  'BEGIN { if (b > 0 && c > 0) printf "leader: %d batches put in etcd, %.1f operations a batch, %.2f ms a put (mean of %d)\n", b, r / b, (s1 - s0) * 1000 / c, c }'
awk -v l="${ops[leasehold-cluster-leader]}" -v e="${ops[etcd-txn-create]}" -v p="$p99_leasehold" \
  'BEGIN { printf "leasehold / etcd: %.1fx (goal: 10x or more); p99 through the leader %s (goal: 20 ms or less)\n", l / e, p }'
