# Three leasehold nodes in cluster mode on loopback, for the scripts that source this file
# (not run on its own): tests/cluster/run.sh (`make cluster`) and benches/cluster.sh
# (`make bench-cluster`). It owns each node's configuration, start, lookup and stop; the etcd
# members belong to tests/cluster/etcd.sh.
#
# What a node directory DIR holds, for node N (1-3): `node-N.toml` (its configuration),
# `node-N/` (its data_dir) and `node-N.log` (its stderr, appended to across restarts).
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

# nodes_start DIR BIN ENDPOINTS WORKERS LOG_LEVEL PORT1 PORT2 PORT3: writes the three
# configurations and starts the nodes, node N listening on 127.0.0.1:PORTN. ENDPOINTS are
# etcd's client URLs, comma-separated (tests/cluster/etcd.sh writes them so).
nodes_start() {
  local dir=$1 bin=$2 endpoints=$3 workers=$4 log_level=$5 n port list
  shift 5
  list=\"${endpoints//,/\", \"}\"
  for n in $(seq 1 $nodes_count); do
    port=$1
    shift
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
CONF
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
