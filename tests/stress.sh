#!/usr/bin/env bash
# The end-to-end suite (`cargo test --test it`) several times in a row with CPU load beside
# it, to find tests that fail on a busy machine for no bug (flakes). `make test-stress`.
#
#   tests/stress.sh            RUNS=5 by default; RUNS=10 tests/stress.sh for more
#
# The load: `stress-ng --cpu <cores>` (one busy process per core; installed from Debian's
# package when missing, which needs root), or, when stress-ng cannot be had, a second copy
# of the suite running in a loop beside the measured one. Each run's output is kept in
# target/stress/run-N.log. Prints one line per run (passed, or the names of the tests that
# failed) and a summary of every test that failed with how often; exits 1 if any run
# failed, 0 if all passed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
runs=${RUNS:-5}
cargo=${CARGO:-cargo}
logs="$root/target/stress"
mkdir -p "$logs"

load_pid=""
stop_load() {
  # Only what this script started: stress-ng (which stops its own workers on SIGTERM), or
  # the process group of the second copy of the suite.
  if [ -n "$load_pid" ]; then
    kill -TERM -- "-$load_pid" 2>/dev/null || kill -TERM "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
    load_pid=""
  fi
}
trap stop_load EXIT INT TERM

echo "building the suite"
"$cargo" test --locked --test it --no-run -q || { echo "the suite does not build" >&2; exit 2; }

if ! command -v stress-ng >/dev/null; then
  echo "installing stress-ng from Debian's packages"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng; } >/dev/null 2>&1 || true
fi
cores=$(nproc)
if command -v stress-ng >/dev/null; then
  load="stress-ng --cpu $cores"
  setsid stress-ng --cpu "$cores" --quiet >/dev/null 2>&1 &
  load_pid=$!
else
  load="a second copy of the suite in a loop"
  setsid bash -c "while :; do '$cargo' test --locked --test it -q >/dev/null 2>&1; done" &
  load_pid=$!
fi
echo "load beside the suite: $load ($cores cores)"

failed_runs=0
all_failures=()
for run in $(seq 1 "$runs"); do
  log="$logs/run-$run.log"
  started=$(date +%s)
  "$cargo" test --locked --test it >"$log" 2>&1
  status=$?
  took=$(($(date +%s) - started))
  mapfile -t failures < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | sort)
  summary=$(grep -E '^test result: ' "$log" | tail -1 | sed 's/^test result: //; s/; finished in .*//')
  if [ "$status" -eq 0 ]; then
    echo "run $run/$runs: passed in ${took} s ($summary)"
  else
    failed_runs=$((failed_runs + 1))
    if [ "${#failures[@]}" -eq 0 ]; then
      echo "run $run/$runs: FAILED in ${took} s with exit status $status and no failing test named; see $log"
      all_failures+=("(run $run: exit status $status)")
    else
      echo "run $run/$runs: FAILED in ${took} s: ${failures[*]} ($log)"
      all_failures+=("${failures[@]}")
    fi
  fi
done
stop_load

if [ "$failed_runs" -eq 0 ]; then
  echo "stress: $runs of $runs runs passed under load; no flaky test"
  exit 0
fi
echo "stress: $failed_runs of $runs runs failed under load; what failed:"
printf '%s\n' "${all_failures[@]}" | sort | uniq -c | sort -rn |
  while read -r times name; do echo "  $name: in $times of $runs runs"; done
exit 1
