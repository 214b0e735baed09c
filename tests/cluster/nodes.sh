# Three leasehold nodes in cluster mode on loopback, for the scripts that source this file
# (not run on its own): tests/cluster/run.sh (`make cluster`) and benches/cluster.sh
# (`make bench-cluster`). It owns each node's configuration, start, lookup and stop; the etcd
# members belong to tests/cluster/etcd.sh.
#
# What a node directory DIR holds, for node N (1-3): `node-N.toml` (its configuration,
# readable by its owner only: it holds the cluster's secret), `node-N/` (its data_dir) and
# `node-N.log` (its stderr, appended to across restarts).
# The nodes have a peer link (docs/cluster.md, "The peer link"): each listens for the others
# on a free loopback port of its own, with one secret generated for the run, so a follower
# forwards every request to the leader and any node answers as the leader would.
# Each node's master runs in a session of its own (setsid), so it leads a process group with
# its keeper, courier and workers: `kill -9 -PGID` takes the whole node down at once, as a
# lost host would. A node is found by its master's command line (`--config DIR/node-N.toml`
# in /proc), so a reused pid is never signalled and a node restarted by hand is found too.
#
# Sourcing scripts set `-euo pipefail`; the functions below expect it.

nodes_count=3

# nodes_ms: the clock in milliseconds, for deadlines.
nodes_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# nodes_pause_ms MS: one step of a polling loop (a poll with a deadline, not a wait on luck).
nodes_pause_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

# nodes_port_busy PORT: true when something listens on 127.0.0.1:PORT.
nodes_port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# nodes_url DIR N: node N's URL (its advertise_url), from its configuration.
nodes_url() { sed -n 's/^advertise_url = "\(.*\)"$/\1/p' "$1/node-$2.toml"; }

# nodes_free_ports COUNT [TAKEN...]: COUNT distinct loopback ports nothing listens on and
# not among TAKEN, drawn at random below the kernel's ephemeral range (as tests/cluster/etcd.sh
# draws etcd's), so the ports connections take cannot collide with them.
nodes_free_ports() {
  local want=$1 eph_lo eph_hi lo hi p picked=() tries=0
  shift
  read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range
  if ((eph_lo > 16000)); then lo=$((eph_lo > 27000 ? eph_lo - 12000 : 15000)); hi=$((eph_lo - 1))
  elif ((eph_hi < 60000)); then lo=$((eph_hi + 1)); hi=65000
  else lo=10000; hi=65000; fi
  while ((${#picked[@]} < want)); do
    ((++tries < 1000)) || { echo "nodes.sh: found no $want free loopback ports in $lo-$hi" >&2; return 1; }
    p=$((lo + SRANDOM % (hi - lo + 1)))
    [[ " ${picked[*]} $* " != *" $p "* ]] || continue
    ! nodes_port_busy "$p" || continue
    picked+=("$p")
  done
  echo "${picked[*]}"
}

# nodes_start DIR BIN ENDPOINTS WORKERS LOG_LEVEL PORT1 PORT2 PORT3: writes the three
# configurations and starts the nodes, node N listening on 127.0.0.1:PORTN for clients and
# on a free port of its own for the peer link; the secret (32 random hex digits) is the same
# for the three. ENDPOINTS are etcd's client URLs, comma-separated (tests/cluster/etcd.sh
# writes them so).
nodes_start() {
  local dir=$1 bin=$2 endpoints=$3 workers=$4 log_level=$5 n port list secret free peer_ports
  shift 5
  list=\"${endpoints//,/\", \"}\"
  free=$(nodes_free_ports $nodes_count "$@") || return 1
  read -ra peer_ports <<<"$free"
  secret=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
  for n in $(seq 1 $nodes_count); do
    port=$1
    shift
    (
      umask 077
      cat >"$dir/node-$n.toml" <<CONF
# node-$n of a loopback cluster (tests/cluster/nodes.sh)
[server]
listen = ["127.0.0.1:$port"]
workers = $workers
data_dir = "$dir/node-$n"
log_level = "$log_level"

[cluster]
etcd_endpoints = [$list]
node_name = "node-$n"
advertise_url = "http://127.0.0.1:$port"
peer_listen = "127.0.0.1:${peer_ports[n - 1]}"
secret = "$secret"
CONF
    )
    nodes_launch "$dir" "$bin" "$n"
  done
}

# nodes_launch DIR BIN N: starts node N from its configuration, in a session of its own.
nodes_launch() {
  echo "nodes.sh: $(date -u +%FT%T.%3NZ) starting node-$3" >>"$1/node-$3.log"
  setsid "$2" serve --config "$1/node-$3.toml" </dev/null >>"$1/node-$3.log" 2>&1 &
  disown
}

# nodes_pid DIR N: the pid of node N's master if it runs (it leads the node's process group,
# so this is also the group's id); else nothing. The children run under names of their own
# (lh-keeper, lh-worker-0, ...) without the configuration's path, so only the master matches.
nodes_pid() {
  local dir=${1//./\\.}
  pgrep -f -- "serve --config $dir/node-$2\\.toml\$" | head -n 1 || true
}

# nodes_pgid PID: the process group of PID.
nodes_pgid() { awk '{print $5}' "/proc/$1/stat" 2>/dev/null; }

# nodes_readyz URL: the body of URL/readyz (nothing when it does not answer 200 within 1 s).
nodes_readyz() { curl -fs --max-time 1 "$1/readyz" 2>/dev/null || true; }

# nodes_field JSON KEY: the value of "KEY" in a flat JSON text (a string or a number).
nodes_field() { sed -n "s/.*\"$2\":\"\{0,1\}\([^\",}]*\).*/\1/p" <<<"$1"; }

# nodes_wait_leader DIR DEADLINE_S: until every node answers /readyz, exactly one says it
# leads and the others name it as their leader. Prints the leader's number. Returns 1 (with
# what each node said on stderr) when the deadline passes, or at once when a node has exited.
nodes_wait_leader() {
  local dir=$1 until_ms=$(($(nodes_ms) + $2 * 1000)) pause=50 n leaders agree
  local bodies=()
  while :; do
    bodies=() leaders=() agree=0
    for n in $(seq 1 $nodes_count); do
      if [ -z "$(nodes_pid "$dir" "$n")" ]; then
        echo "node-$n exited; the end of $dir/node-$n.log:" >&2
        tail -n 15 "$dir/node-$n.log" | sed 's/^/    /' >&2
        return 1
      fi
      bodies[n]=$(nodes_readyz "$(nodes_url "$dir" "$n")")
      [ "$(nodes_field "${bodies[n]}" role)" != leader ] || leaders+=("$n")
    done
    if ((${#leaders[@]} == 1)); then
      for n in $(seq 1 $nodes_count); do
        [ "$(nodes_field "${bodies[n]}" leader)" != "$(nodes_url "$dir" "${leaders[0]}")" ] || agree=$((agree + 1))
      done
      if ((agree == nodes_count)); then echo "${leaders[0]}"; return 0; fi
    fi
    if (($(nodes_ms) >= until_ms)); then
      echo "no single leader that every node names within $2 s; /readyz said:" >&2
      for n in $(seq 1 $nodes_count); do echo "    node-$n: ${bodies[n]:-no answer}" >&2; done
      return 1
    fi
    nodes_pause_ms "$pause"
    pause=$((pause * 2 > 500 ? 500 : pause * 2))
  done
}

# nodes_forwards URL: true when the node at URL serves a change: a release of a ticket no
# one holds answers 410 lease_lost from the leader (itself, or over the peer link), where a
# follower without a link to the leader answers 503 not_leader. It changes nothing.
nodes_forwards() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -X POST "$1/v1/locks/nodes-probe/release" \
    -d '{"ticket":"AAAAAAAAAAAAAAAAAAAAAA"}' 2>/dev/null) || true
  [ "$code" = 410 ]
}

# nodes_wait_forwarding DIR DEADLINE_S: until every node serves changes (nodes_forwards),
# the followers through their peer link to the leader. Returns 1 (naming the nodes that do
# not) when the deadline passes.
nodes_wait_forwarding() {
  local dir=$1 until_ms=$(($(nodes_ms) + $2 * 1000)) pause=50 n late
  while :; do
    late=()
    for n in $(seq 1 $nodes_count); do
      nodes_forwards "$(nodes_url "$dir" "$n")" || late+=("node-$n")
    done
    ((${#late[@]})) || return 0
    if (($(nodes_ms) >= until_ms)); then
      echo "${late[*]} still refuse changes $2 s after the leader was named (no peer link to it?); see $dir/node-N.log" >&2
      return 1
    fi
    nodes_pause_ms "$pause"
    pause=$((pause * 2 > 500 ? 500 : pause * 2))
  done
}

# nodes_stop DIR: SIGTERM to every running node's master (it stops its children), SIGKILL to
# the process groups of those still running after 15 s; waits until all are gone.
nodes_stop() {
  local dir=$1 n pid left until_ms
  for n in $(seq 1 $nodes_count); do
    pid=$(nodes_pid "$dir" "$n")
    [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
  done
  for sig in KILL none; do
    until_ms=$(($(nodes_ms) + 15000))
    while :; do
      left=()
      for n in $(seq 1 $nodes_count); do
        pid=$(nodes_pid "$dir" "$n")
        [ -z "$pid" ] || left+=("$pid")
      done
      ((${#left[@]})) || return 0
      (($(nodes_ms) < until_ms)) || break
      nodes_pause_ms 100
    done
    [ "$sig" = KILL ] || { echo "nodes.sh: masters ${left[*]} survive SIGKILL" >&2; return 1; }
    echo "nodes.sh: masters ${left[*]} still run 15 s after SIGTERM; killing their process groups" >&2
    for pid in "${left[@]}"; do kill -KILL -- "-$(nodes_pgid "$pid")" 2>/dev/null || true; done
  done
}
