#!/usr/bin/env bash
# A 3-member etcd cluster on loopback for the cluster tests (Debian's etcd-server and
# etcd-client; `bash tests/deps.sh` installs them).
#
#   tests/cluster/etcd.sh start DIR          bootstrap 3 fresh members, wait until all are healthy
#   tests/cluster/etcd.sh stop DIR           SIGTERM every member, SIGKILL any left after 10 s
#   tests/cluster/etcd.sh kill DIR N...      SIGKILL members N... (1-3), a crash; wait until gone
#   tests/cluster/etcd.sh restart DIR N...   (re)start members N... on their ports and data,
#                                            wait until each is healthy (a quorum must be up)
#   tests/cluster/etcd.sh status DIR         each member: pid or down, and its health
#
# What DIR holds: `endpoints` (the client URLs, comma-separated, member order), `pids` (the
# pids of the running members, one a line), and for member N: `etcd-N/` (its data),
# `etcd-N.log` (its log, appended to across restarts), `etcd-N.pid` (while it runs) and
# `etcd-N.cmd` (its command line, one argument a line, which `restart` runs again).
# `stop` and `kill` end processes only; they remove no data and no log.
#
# Members run in sessions of their own (setsid) with no terminal and no inherited pipes, so they
# outlive this script and never hold a caller's output open. Every signal goes to a pid only
# after /proc shows it is still the etcd of that member's data dir, so a reused pid is never
# hit. Ports: 6 (client and peer for each member) drawn at random below the kernel's ephemeral
# range, so the ports that connections (and tests binding port 0) take cannot collide with them;
# a port something already listens on is skipped, and if a member still loses a bind race it
# exits at once, and `start` tears the attempt down and tries again with new ports.
#
# Environment: LEASEHOLD_ETCD_DEADLINE_S (default 30) bounds each wait for health or exit;
# LEASEHOLD_ETCD_HEARTBEAT_MS and LEASEHOLD_ETCD_ELECTION_MS (at start; see below).
# Exit status: 0 done, 1 failed (the reason on stderr, with the end of the member's log), 2 usage.
set -euo pipefail

members=3
attempts_max=5
deadline_s=${LEASEHOLD_ETCD_DEADLINE_S:-30}
term_grace_s=10 # stop and restart: SIGTERM, then SIGKILL for members still running after this
me="etcd.sh"

# Settings for tests on a loaded 2-core machine (flags passed to every member):
# - heartbeat 150 ms, election timeout 1500 ms (etcd's defaults are 100/1000, tuned for an idle
#   network). A member starved of CPU or stuck in a slow fsync can go quiet for some hundred
#   ms; the margin keeps that from starting elections the tests would see as flaky errors
#   ("leader changed") and stalls. The price is a slower etcd failover when a test kills the
#   etcd leader: a new leader writes 2.1-3.2 s after the kill on a loaded 2-core box (1.1-2.2 s
#   with the defaults, 2.2-4.9 s with 200/2000), about leasehold's default election_ttl_ms of
#   3000. LEASEHOLD_ETCD_HEARTBEAT_MS and LEASEHOLD_ETCD_ELECTION_MS override them.
# - pre-vote on: a member restarted, or stopped and resumed, rejoins without a higher term that
#   would depose a healthy leader.
# - zap logger to stderr (the 3.4 default, capnslog, is deprecated and may log to journald).
# - Left at etcd's defaults, on purpose: auto-compaction off (revisions stay until someone
#   compacts, so a watch from any old revision works; a test that wants compaction runs
#   `etcdctl compact` itself); snapshot-count 100000; max-request-bytes 1.5 MiB and
#   quota-backend-bytes 2 GiB (the limits a real cluster has); fsync on every commit (put DIR
#   on a tmpfs such as /dev/shm to make it cheap; a killed process loses nothing either way).
etcd_tuning=("--heartbeat-interval=${LEASEHOLD_ETCD_HEARTBEAT_MS:-150}"
  "--election-timeout=${LEASEHOLD_ETCD_ELECTION_MS:-1500}" --pre-vote=true
  --logger=zap --log-outputs=stderr)

die() { echo "$me: $*" >&2; exit 1; }
usage() {
  echo "usage: $me start DIR | stop DIR | kill DIR N... | restart DIR N... | status DIR" >&2
  exit 2
}

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# pause_ms MS: one backoff step of a polling loop.
pause_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

# log_tail N: the last lines of member N's log, indented, for an error message.
log_tail() { if [ -f "$dir/etcd-$1.log" ]; then tail -n 15 "$dir/etcd-$1.log" | sed 's/^/    /' >&2; fi; }

# member_pid N: member N's pid if that process is alive and is member N's etcd; else nothing.
member_pid() {
  local pid state
  [ -f "$dir/etcd-$1.pid" ] || return 0
  pid=$(<"$dir/etcd-$1.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  # A zombie (exited, not yet reaped by whoever inherited it) counts as gone.
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 0
  [ "$state" != Z ] || return 0
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -Fxq -- "--data-dir=$dir/etcd-$1" || return 0
  echo "$pid"
}

# write_pids: DIR/pids from the members' pid files (running members only).
write_pids() {
  local n pid
  : >"$dir/pids.tmp"
  for n in $(seq 1 $members); do
    pid=$(member_pid "$n")
    if [ -n "$pid" ]; then echo "$pid" >>"$dir/pids.tmp"; else rm -f "$dir/etcd-$n.pid"; fi
  done
  mv "$dir/pids.tmp" "$dir/pids"
}

# launch N: runs member N's recorded command line in a session of its own, detached.
launch() {
  local n=$1 cmd
  mapfile -t cmd <"$dir/etcd-$n.cmd"
  echo "$me: $(date -u +%FT%T.%3NZ) starting member $n: ${cmd[*]}" >>"$dir/etcd-$n.log"
  setsid "${cmd[@]}" </dev/null >>"$dir/etcd-$n.log" 2>&1 &
  local pid=$! until_ms=$(($(now_ms) + deadline_s * 1000))
  disown # not this script's job: no "Killed" notice when a test ends it
  echo "$pid" >"$dir/etcd-$n.pid"
  # Until the fork has become etcd (member_pid knows it by its command line) or has died.
  while [ -z "$(member_pid "$n")" ] && [ -e "/proc/$pid" ] &&
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
    (($(now_ms) < until_ms)) || die "member $n (pid $pid) did not become etcd within ${deadline_s} s"
    pause_ms 5
  done
}

# wait_gone DEADLINE_MS N...: until members N... have exited; prints the ones still running.
wait_gone() {
  local until_ms=$1 n left pause=10
  shift
  while :; do
    left=()
    for n in "$@"; do [ -z "$(member_pid "$n")" ] || left+=("$n"); done
    ((${#left[@]})) || return 0
    if (($(now_ms) >= until_ms)); then echo "${left[*]}"; return 1; fi
    pause_ms "$pause"
    pause=$((pause * 2 > 200 ? 200 : pause * 2))
  done
}

# signal_members SIGNAL N...: sends SIGNAL to the running members among N...
signal_members() {
  local sig=$1 n pid
  shift
  for n in "$@"; do
    pid=$(member_pid "$n")
    [ -z "$pid" ] || kill "-$sig" "$pid" 2>/dev/null || true
  done
}

# client_url N: member N's client URL, from its recorded command line.
client_url() { sed -n 's/^--advertise-client-urls=//p' "$dir/etcd-$1.cmd"; }

# healthy N...: true when every member N... answers `etcdctl endpoint health` (a quorum read).
healthy() {
  local urls=() n
  for n in "$@"; do urls+=("$(client_url "$n")"); done
  ETCDCTL_API=3 etcdctl --endpoints="$(IFS=,; echo "${urls[*]}")" --dial-timeout=1s \
    --command-timeout=2s endpoint health >/dev/null 2>&1
}

# wait_healthy N...: polls with backoff until members N... are healthy. Returns 0; or 1 with
# the reason on stderr when the deadline passes; or 3 when a member exited (bind lost: 4).
wait_healthy() {
  local until_ms=$(($(now_ms) + deadline_s * 1000)) pause=20 n
  while :; do
    for n in "$@"; do
      if [ -z "$(member_pid "$n")" ]; then
        # Its last run (the log after the last line launch wrote) failed to bind: a lost race.
        if awk -v mark="^$me: .* starting member $n:" '$0 ~ mark { run = "" } { run = run $0 "\n" }
              END { exit !(run ~ /address already in use/) }' "$dir/etcd-$n.log"; then
          return 4
        fi
        echo "$me: member $n (see $dir/etcd-$n.log) exited before it was healthy; its log ends:" >&2
        log_tail "$n"
        return 3
      fi
    done
    healthy "$@" && return 0
    if (($(now_ms) >= until_ms)); then
      local up=0 m
      for m in $(seq 1 $members); do [ -z "$(member_pid "$m")" ] || up=$((up + 1)); done
      echo "$me: members $* not healthy within ${deadline_s} s (LEASEHOLD_ETCD_DEADLINE_S);" \
        "$up of $members members run and health needs $((members / 2 + 1)); logs in $dir:" >&2
      for n in "$@"; do echo "  member $n:" >&2; log_tail "$n"; done
      return 1
    fi
    pause_ms "$pause"
    pause=$((pause * 2 > 500 ? 500 : pause * 2))
  done
}

# pick_ports COUNT: COUNT distinct loopback ports nothing listens on, below the ephemeral range.
pick_ports() {
  local want=$1 eph_lo eph_hi lo hi p picked=() tries=0
  read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range
  if ((eph_lo > 16000)); then lo=$((eph_lo > 27000 ? eph_lo - 12000 : 15000)); hi=$((eph_lo - 1))
  elif ((eph_hi < 60000)); then lo=$((eph_hi + 1)); hi=65000
  else lo=10000; hi=65000; fi
  while ((${#picked[@]} < want)); do
    ((++tries < 1000)) || die "found no $want free loopback ports in $lo-$hi"
    p=$((lo + SRANDOM % (hi - lo + 1)))
    [[ " ${picked[*]} " != *" $p "* ]] || continue
    # A connect that succeeds means something listens there.
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
    picked+=("$p")
  done
  echo "${picked[*]}"
}

cmd_start() {
  local n attempt ports initial token rc
  if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    die "etcd or etcdctl missing; run: sudo bash tests/deps.sh"
  fi
  for n in $(seq 1 $members); do
    [ -z "$(member_pid "$n")" ] || die "member $n already runs in $dir (pid $(member_pid "$n")); stop it first"
    [ ! -e "$dir/etcd-$n" ] ||
      die "$dir/etcd-$n exists: start bootstraps fresh members; use restart to bring back a stopped cluster, or a new DIR"
  done
  for attempt in $(seq 1 $attempts_max); do
    read -r -a ports <<<"$(pick_ports $((members * 2)))"
    # member N: client port ports[2(N-1)], peer port ports[2(N-1)+1]
    initial=""
    for n in $(seq 1 $members); do
      initial+="${initial:+,}etcd-$n=http://127.0.0.1:${ports[2 * n - 1]}"
    done
    # A token of its own, so members of two clusters started side by side never talk.
    token="leasehold-test-$$-$SRANDOM"
    for n in $(seq 1 $members); do
      local client="http://127.0.0.1:${ports[2 * n - 2]}" peer="http://127.0.0.1:${ports[2 * n - 1]}"
      printf '%s\n' "$(command -v etcd)" "--name=etcd-$n" "--data-dir=$dir/etcd-$n" \
        "--listen-client-urls=$client" "--advertise-client-urls=$client" \
        "--listen-peer-urls=$peer" "--initial-advertise-peer-urls=$peer" \
        "--initial-cluster=$initial" "--initial-cluster-token=$token" \
        "--initial-cluster-state=new" "${etcd_tuning[@]}" >"$dir/etcd-$n.cmd"
      launch "$n"
    done
    write_pids
    rc=0
    wait_healthy $(seq 1 $members) || rc=$?
    if ((rc == 0)); then
      for n in $(seq 1 $members); do client_url "$n"; done | paste -sd, >"$dir/endpoints"
      write_pids
      return 0
    fi
    # Failed: end this attempt's members and, as they never served, their data.
    signal_members KILL $(seq 1 $members)
    wait_gone $(($(now_ms) + deadline_s * 1000)) $(seq 1 $members) >/dev/null ||
      die "members of a failed start did not exit after SIGKILL"
    for n in $(seq 1 $members); do rm -rf "${dir:?}/etcd-$n"; done
    write_pids
    ((rc == 4)) || exit 1
    echo "$me: a port was taken between picking and binding (attempt $attempt of $attempts_max); new ports" >&2
  done
  die "lost the race for free ports $attempts_max times; logs in $dir"
}

# member_args N...: checks that each N is a member number with a recorded command line.
member_args() {
  local n
  (($#)) || usage
  for n in "$@"; do
    if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > members)); then die "no member '$n': members are 1 to $members"; fi
    [ -f "$dir/etcd-$n.cmd" ] || die "member $n was never started in $dir (no etcd-$n.cmd); run start first"
  done
}

# terminate N...: SIGTERM (and SIGCONT) to the running members among N..., SIGKILL to those
# still running after term_grace_s; waits until all are gone.
terminate() {
  local left=()
  signal_members TERM "$@"
  signal_members CONT "$@" # a member a test stopped (SIGSTOP) acts on SIGTERM once resumed
  read -r -a left <<<"$(wait_gone $(($(now_ms) + term_grace_s * 1000)) "$@" || true)"
  ((${#left[@]})) || return 0
  echo "$me: members ${left[*]} still running ${term_grace_s} s after SIGTERM; sending SIGKILL" >&2
  signal_members KILL "${left[@]}"
  wait_gone $(($(now_ms) + deadline_s * 1000)) "${left[@]}" >/dev/null || die "members ${left[*]} survive SIGKILL"
}

cmd_stop() {
  local n
  # One at a time: a leader told to stop hands leadership to a live peer first, and with all
  # three stopping at once the new leader waits ~8 s for a hand-off that cannot happen. In
  # turn, each hand-off is quick and the last member has no one to hand off to.
  for n in $(seq 1 $members); do terminate "$n"; done
  write_pids
}

cmd_kill() {
  local left
  member_args "$@"
  signal_members KILL "$@"
  left=$(wait_gone $(($(now_ms) + deadline_s * 1000)) "$@") || die "members $left survive SIGKILL"
  write_pids
}

cmd_restart() {
  local n rc=0
  member_args "$@"
  # A running member is stopped first, one at a time as in stop (SIGTERM, then SIGKILL after
  # term_grace_s).
  for n in "$@"; do terminate "$n"; done
  # Its data dir holds the membership, so etcd ignores the --initial-* flags on a restart.
  for n in "$@"; do launch "$n"; done
  write_pids
  wait_healthy "$@" || rc=$?
  write_pids
  ((rc == 0)) && return 0
  ((rc != 4)) || die "a port of members $* is taken by another process now; see their logs in $dir"
  exit 1
}

cmd_status() {
  local n pid h
  for n in $(seq 1 $members); do
    [ -f "$dir/etcd-$n.cmd" ] || { echo "member $n: never started"; continue; }
    pid=$(member_pid "$n")
    if [ -z "$pid" ]; then echo "member $n: down  $(client_url "$n")"; continue; fi
    if healthy "$n"; then h=healthy; else h=unhealthy; fi
    echo "member $n: pid $pid  $(client_url "$n")  $h"
  done
}

(($# >= 2)) || usage
action=$1
if [ "$action" = start ]; then mkdir -p -- "$2" || die "cannot create $2"; fi
[ -d "$2" ] || die "no directory $2"
dir=$(cd -- "$2" && pwd -P)
shift 2
case $action in
  start) (($# == 0)) || usage; cmd_start ;;
  stop) (($# == 0)) || usage; cmd_stop ;;
  kill) cmd_kill "$@" ;;
  restart) cmd_restart "$@" ;;
  status) (($# == 0)) || usage; cmd_status ;;
  *) usage ;;
esac
