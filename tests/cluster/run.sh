#!/usr/bin/env bash
# `make cluster`: a 3-node leasehold cluster on loopback to try by hand. It builds the release
# binary, starts a 3-member etcd (tests/cluster/etcd.sh) and three nodes
# (tests/cluster/nodes.sh, with a peer link between them) in a temporary directory, waits
# until one node leads and the followers forward to it, prints each node's role and commands
# to try (an acquire on the leader, the same on a follower, answered by the leader over the
# peer link, the client given every node, a failover by hand), then stays in the foreground
# printing every change of role until Ctrl-C, when it stops the nodes and etcd and removes
# the directory.
#
#   tests/cluster/run.sh            nodes on 127.0.0.1:8081, 8082 and 8083
#   CLUSTER_PORT=9001 make cluster  nodes on 9001, 9002 and 9003
#
# Each node has 1 worker, its own data_dir and log in the temporary directory, and the
# default election_ttl_ms (3000). etcd's members and the nodes' peer links take free ports
# of their own. Needs etcd and
# etcdctl (`sudo bash tests/deps.sh` installs them) and curl.
# Exit status: 0 after Ctrl-C (or SIGTERM, or the terminal closing); 1 when the cluster could
# not be started (what went wrong on stderr, with the end of the log concerned).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
first_port=${CLUSTER_PORT:-8081}
me="make cluster"
source "$root/tests/cluster/nodes.sh"

die() { echo "$me: $*" >&2; exit 1; }

if ! [[ $first_port =~ ^[0-9]+$ ]] || ((first_port < 1024 || first_port > 65533)); then
  die "CLUSTER_PORT is '$first_port'; it must be a port from 1024 to 65533"
fi
ports=("$first_port" $((first_port + 1)) $((first_port + 2)))
for port in "${ports[@]}"; do
  ! nodes_port_busy "$port" || die "something already listens on 127.0.0.1:$port; choose other ports: CLUSTER_PORT=9001 make cluster"
done
command -v curl >/dev/null || die "curl is missing"
bash "$root/tests/deps.sh" || exit 1

echo "$me: building the release binary"
(cd "$root" && ${CARGO:-cargo} build --release --locked)
bin="$root/target/release/leasehold"
# The path as a newcomer types it from the checkout.
cli="target/release/leasehold"

dir=$(mktemp -d "${TMPDIR:-/tmp}/leasehold-cluster.XXXXXX")
teardown() {
  # A second Ctrl-C, or the terminal closing, must not stop the teardown halfway.
  trap '' INT TERM HUP
  trap - EXIT
  set +e
  echo
  echo "$me: stopping the nodes and etcd, removing $dir"
  nodes_stop "$dir" || true
  bash "$root/tests/cluster/etcd.sh" stop "$dir/etcd" 2>/dev/null || true
  rm -rf "$dir"
  echo "$me: done"
}
trap teardown EXIT
trap 'exit 0' INT TERM HUP

echo "$me: starting a 3-member etcd in $dir/etcd"
bash "$root/tests/cluster/etcd.sh" start "$dir/etcd"
endpoints=$(<"$dir/etcd/endpoints")
echo "$me: starting node-1..3 on ports ${ports[*]}"
nodes_start "$dir" "$bin" "$endpoints" 1 info "${ports[@]}"
leader=$(nodes_wait_leader "$dir" 30) || die "the cluster did not settle (see above)"
nodes_wait_forwarding "$dir" 15 || die "the followers do not forward to the leader (see above)"

urls=()
for n in 1 2 3; do urls+=("$(nodes_url "$dir" "$n")"); done
all=$(IFS=,; echo "${urls[*]}")
leader_url=${urls[leader - 1]}
follower_url=${urls[leader % 3]}
leader_pgid=$(nodes_pgid "$(nodes_pid "$dir" "$leader")")

# role_line N: node N's standing as one line, from its /readyz (or "down").
role_line() {
  local body pid
  pid=$(nodes_pid "$dir" "$1")
  if [ -z "$pid" ]; then echo "down"; return; fi
  body=$(nodes_readyz "${urls[$1 - 1]}")
  if [ -z "$body" ]; then echo "no answer (pgid $(nodes_pgid "$pid"))"; return; fi
  printf '%-9s epoch %s  applied %s  lag %s  (pgid %s)\n' "$(nodes_field "$body" role)" \
    "$(nodes_field "$body" epoch)" "$(nodes_field "$body" applied)" "$(nodes_field "$body" lag)" "$(nodes_pgid "$pid")"
}

# Each node's standing now: shown below, and the starting point of the changes printed after.
declare -A standing seen
for n in 1 2 3; do
  standing[$n]=$(role_line "$n")
  seen[$n]=$(awk '{print $1, $3, $NF}' <<<"${standing[$n]}")
done

cat <<TEXT

leasehold: 3 nodes on a 3-member etcd, everything in $dir

$(for n in 1 2 3; do printf '  node-%s  %s  %s\n' "$n" "${urls[n - 1]}" "${standing[$n]}"; done)
  etcd    $endpoints
  logs    $dir/node-N.log, $dir/etcd/etcd-N.log

Leader: $leader_url (node-$leader). Any node serves changes: the followers forward them to
the leader over the peer link.

Try, in another terminal (from this checkout):

  # /readyz on any node: its role, epoch, applied batches, lag and the leader's URL
  curl -s ${urls[0]}/readyz; echo

  # Take a lock on the leader, for 5 minutes: 200 with a ticket and a fence
  curl -s -X POST $leader_url/v1/locks/demo/acquire -d '{"ttl_ms":300000,"owner":"me"}'; echo

  # A change sent to a follower (node-$((leader % 3 + 1))): 200 as well, the leader's answer over
  # the peer link (a follower without the link would answer 503 not_leader)
  curl -si -X POST $follower_url/v1/locks/other/acquire -d '{"owner":"you"}'

  # The client given all three nodes (any of them answers)
  $cli status demo --server $all
  $cli lock job --server $all -- sh -c 'echo "ran under the lock, fence \$LEASEHOLD_FENCE"'

  # Failover by hand: kill node-$leader's whole process group (master, keeper, courier,
  # workers), as a lost host. Within about 3 s (election_ttl_ms) another node leads, and
  # the lock "demo" is still held: its lease is extended by the time without a leader.
  # The follower left links to the new leader and serves changes again.
  kill -9 -$leader_pgid
  curl -s $follower_url/readyz; echo
  $cli status demo --server $all

Changes of role are printed below as they happen. Ctrl-C stops everything and removes $dir.

TEXT

# Until Ctrl-C: print a node's standing whenever its role, epoch or pgid changes.
while :; do
  for n in 1 2 3; do
    line=$(role_line "$n")
    key=$(awk '{print $1, $3, $NF}' <<<"$line")
    [ "$key" != "${seen[$n]}" ] || continue
    seen[$n]=$key
    printf '%s  node-%s  %s\n' "$(date +%T)" "$n" "$line"
    if [ "$line" = down ]; then
      printf '          bring it back: setsid %s serve --config %s >>%s 2>&1 &\n' \
        "$cli" "$dir/node-$n.toml" "$dir/node-$n.log"
    fi
  done
  # In the background and waited for, so Ctrl-C or SIGTERM ends the pause at once.
  sleep 0.5 &
  wait $! || true
done
