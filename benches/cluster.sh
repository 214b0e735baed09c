#!/usr/bin/env bash
# Cluster mode under load: leasehold's acquire -> release through the leader of 3 nodes on a
# 3-member etcd, and the same sent to a follower (which forwards it to the leader over the
# peer link), against etcd's own lock-style transaction on the same etcd cluster, in the same
# run on loopback.
#
#   benches/cluster.sh [seconds] [connections]      (defaults: 10 s, 64 connections)
#
# Starts the 3-member etcd (tests/cluster/etcd.sh) and 3 nodes with a peer link
# (tests/cluster/nodes.sh; release build, 2 workers each, log_level warn), finds the leader
# through /readyz and waits until the followers forward, then runs wrk -t2 -c<connections>
# --latency with benches/wrk/acquire-release.lua against the leader (every change there is
# committed to etcd before it is answered), the same against a follower (its keeper forwards
# every request to the leader's over the peer link and relays the answer), then with
# benches/wrk/etcd-txn.lua against etcd's raft leader member's client URL (its best member:
# another member would forward every write to it), while the nodes still run and follow.
# Then etcd's ceiling: the same transaction from 1, 2 and 4 clients with values of the
# connections' operations shared among them (the most that many batches in flight can hold),
# whose rates bound what a leader keeping that many puts in flight can do.
# Prints ops/s (an acquire or a release is one operation; for etcd one transaction), p50,
# p99 and non-2xx for each; for the two leasehold runs the batches the leader put in etcd
# (counted in etcd's log: how many operations one txn carried) and its mean put time (its
# /metrics histogram); the ratios follower / leader (what forwarding costs) and leasehold /
# etcd; and for each run how busy the two cores were and how that divides between the etcd
# members, the nodes, wrk and processes outside the rig (the machine may be shared). The follower's run comes second, and on a
# fresh etcd the first run's puts are the slower (README, "Benchmarks"), which favours the
# follower in the ratio by about as much as it shows.
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

# The machine is shared: each run says how busy both cores were, and how that divides
# between the etcd members, the nodes' process groups, the wrk and other commands this
# script waited for, and processes outside this rig. Times are in clock ticks, from /proc.
machine_ticks() { awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6}' /proc/stat; }
# rig_ticks: the etcd members', the nodes' and this script's waited-for commands' ticks.
rig_ticks() {
  local n master pids=()
  for n in 1 2 3; do
    master=$(nodes_pid "$work" "$n")
    [ -z "$master" ] || mapfile -t -O "${#pids[@]}" pids < <(pgrep -g "$master" || true)
  done
  echo "$(cpu_ticks "$(cat "$work/etcd/pids")") $(cpu_ticks "${pids[*]}") $(awk '{print $16 + $17}' /proc/$$/stat)"
}
# measured NAME URL SCRIPT: one wrk run, its figures and the machine's load meanwhile.
measured() {
  local busy0 total0 busy1 total1 etcd0 nodes0 waited0 etcd1 nodes1 waited1
  read -r busy0 total0 <<<"$(machine_ticks)"
  read -r etcd0 nodes0 waited0 <<<"$(rig_ticks)"
  wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$root/benches/wrk/$3" "$2" >"$work/wrk-$1.out"
  read -r etcd1 nodes1 waited1 <<<"$(rig_ticks)"
  read -r busy1 total1 <<<"$(machine_ticks)"
  report "$1" "$work/wrk-$1.out"
  awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) -v e=$((etcd1 - etcd0)) -v n=$((nodes1 - nodes0)) \
    -v w=$((waited1 - waited0)) 'BEGIN {
    o = b - e - n - w; if (o < 0) o = 0
    printf "  # meanwhile both cores were %.0f%% busy: etcd members %.0f%%, leasehold nodes %.0f%%, wrk and tools %.0f%%, outside this rig %.0f%%\n",
      100 * b / t, 100 * e / t, 100 * n / t, 100 * w / t, 100 * o / t }'
}

bash "$root/tests/cluster/etcd.sh" start "$work/etcd"
endpoints=$(<"$work/etcd/endpoints")
nodes_start "$work" "$bin" "$endpoints" 2 warn "$(free_port)" "$(free_port)" "$(free_port)"
leader=$(nodes_wait_leader "$work" 30)
nodes_wait_forwarding "$work" 15
url=$(nodes_url "$work" "$leader")
follower=$((leader % nodes_count + 1))
follower_url=$(nodes_url "$work" "$follower")

machine
echo "# wrk -t2 -c$conns -d${secs}s --latency; 3 leasehold nodes (2 workers each) and 3 etcd members on this machine"

# Batches in etcd's log (one txn each) and the leader's put times, before and after.
batches() {
  ETCDCTL_API=3 etcdctl --endpoints="$endpoints" get /leasehold/log/ --prefix --keys-only --limit=1 -w json |
    sed -n 's/.*"count":\([0-9]*\).*/\1/p'
}
# through NAME TARGET_URL: one wrk run of acquire-release.lua against TARGET_URL, then the
# batches the leader put in etcd meanwhile and its put times (kept in through[NAME], with
# the run's requests and p99), and a note if node-$leader no longer leads.
declare -A through
through() {
  local b0 c0 s0 b1 c1 s1 still
  b0=$(batches) c0=$(metric "$url" leasehold_cluster_commit_seconds_count) s0=$(metric "$url" leasehold_cluster_commit_seconds_sum)
  measured "$1" "$2" acquire-release.lua
  b1=$(batches) c1=$(metric "$url" leasehold_cluster_commit_seconds_count) s1=$(metric "$url" leasehold_cluster_commit_seconds_sum)
  through[$1]="$((b1 - b0)) $((c1 - c0)) $s0 $s1 $reqs $p99"
  still=$(nodes_field "$(nodes_readyz "$url")" role)
  [ "$still" = leader ] || echo "# note: node-$leader is no longer the leader after the run (it says: ${still:-nothing})"
}
# batch_line LABEL NAME: what the leader put in etcd during run NAME, as one line.
batch_line() {
  local b c s0 s1 r p
  read -r b c s0 s1 r p <<<"${through[$2]}"
  awk -v l="$1" -v b="$b" -v c="$c" -v s0="$s0" -v s1="$s1" -v r="$r" \
    'BEGIN { if (b > 0 && c > 0) printf "%s: %d batches put in etcd, %.1f operations a batch, %.2f ms a put (mean of %d)\n", l, b, r / b, (s1 - s0) * 1000 / c, c }'
}

through leasehold-cluster-leader "$url"
# The bytes one operation took in the log: the newest 20 batches' bytes over their inputs
# (frame headers and each batch's format record included).
op_bytes=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" get /leasehold/log/ --prefix --sort-by=KEY \
  --order=DESCEND --limit=20 --print-value-only >"$work/batches.bin" &&
  awk -v b="$(wc -c <"$work/batches.bin")" -v n="$(grep -a -o '{"input":' "$work/batches.bin" | wc -l)" \
    'BEGIN { print (n > 0 ? int(b / n) : 0) }')
through leasehold-cluster-follower "$follower_url"
p99_leasehold=$(awk '{print $6}' <<<"${through[leasehold-cluster-leader]}")
p99_follower=$(awk '{print $6}' <<<"${through[leasehold-cluster-follower]}")

# etcd's raft leader: the member whose `endpoint status` says IS LEADER.
etcd_url=$(ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint status -w simple 2>/dev/null |
  awk -F', ' '$5 == "true" && !found {print $1; found = 1}')
etcd_url=${etcd_url:-${endpoints%%,*}}
measured etcd-txn-create "$etcd_url/" etcd-txn.lua
# etcd's ceiling for this run's connections. With C connections at most C changes wait at
# once, so K puts in flight hold at most C / K operations each on average: no leader keeping
# K puts in flight passes C / K times the puts per second etcd takes from K clients of C / K
# operations' worth. That worth is the bytes an operation took in the leader's newest
# batches; the puts are etcd's txn with a value that size (the nodes idle: their watches do
# not see these keys, which makes etcd's part lighter and the ceiling higher).
ceilings=()
for k in 1 2 4; do
  LEASEHOLD_ETCD_VALUE_BYTES=$((conns / k * op_bytes)) \
    wrk -t1 -c"$k" -d"${secs}s" --latency -s "$root/benches/wrk/etcd-txn.lua" "$etcd_url/" >"$work/wrk-ceiling-$k.out"
  wrk_figures "$work/wrk-ceiling-$k.out"
  ceilings+=("$k $rps")
done

batch_line leader leasehold-cluster-leader
batch_line "leader, load sent to node-$follower (a follower)" leasehold-cluster-follower
awk -v f="${ops[leasehold-cluster-follower]}" -v l="${ops[leasehold-cluster-leader]}" -v pf="$p99_follower" -v pl="$p99_leasehold" \
  'BEGIN { printf "follower / leader: %.2fx (the cost of forwarding over the peer link); p99 %s through the follower, %s through the leader\n", f / l, pf, pl }'
awk -v l="${ops[leasehold-cluster-leader]}" -v e="${ops[etcd-txn-create]}" -v p="$p99_leasehold" \
  'BEGIN { printf "leasehold / etcd: %.1fx (goal: 10x or more); p99 through the leader %s (goal: 20 ms or less)\n", l / e, p }'
for line in "${ceilings[@]}"; do
  read -r k r <<<"$line"
  awk -v k="$k" -v r="$r" -v c="$conns" -v o="$op_bytes" -v e="${ops[etcd-txn-create]}" 'BEGIN {
    printf "etcd ceiling, %d put(s) in flight: %.0f puts/s of %d operations (%d bytes each); no leader passes %.0f ops/s with %d connections so, %.1fx etcd\n",
      k, r, int(c / k), o, r * int(c / k), c, r * int(c / k) / e }'
done
