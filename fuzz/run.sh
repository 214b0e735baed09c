#!/usr/bin/env bash
# make fuzz: installs what is missing (a C toolchain from apt, cargo-afl from crates.io,
# which builds AFL++ from the source it ships), builds every fuzz target, runs each in turn
# for FUZZ_SECONDS seeded from fuzz/seeds/<target>/, then prints one table: executions,
# execs/s, crashes and hangs per target. Exits 1 if any target crashed, naming the inputs.
#
# FUZZ_SECONDS  seconds per target (default 150: 12.5 minutes over the five targets)
# FUZZ_TARGETS  which targets, space-separated (default: all)
# FUZZ_TIMEOUT_MS  an input running longer than this is a hang (default 1000)
#
# One target at a time, one core each (the machine is shared). Work goes to fuzz/out/
# (git-ignored), replaced on every run; crashing inputs stay there until the next run.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_SECONDS=${FUZZ_SECONDS:-150}
FUZZ_TARGETS=${FUZZ_TARGETS:-"http_parse http_conn ipc_frame journal_record config_load"}
FUZZ_TIMEOUT_MS=${FUZZ_TIMEOUT_MS:-1000}

say() { printf 'fuzz: %s\n' "$*" >&2; }

# --- install what is missing (quiet when it is all there) ---------------------------------
if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
    say "installing a C toolchain (build-essential) to build AFL++"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null
fi
# cargo-afl must match the afl crate the targets link (its runtime is built per version).
afl_version=$(awk '$0 == "name = \"afl\"" { getline; gsub(/[^0-9.]/, "", $3); print $3 }' Cargo.lock)
if ! cargo afl --version 2>/dev/null | grep -q "^cargo-afl $afl_version "; then
    say "installing cargo-afl $afl_version"
    cargo install --quiet --locked --force cargo-afl --version "$afl_version"
fi
# AFL++ itself, built once per Rust toolchain; an existing build is left as it is.
if ! config_out=$(cargo afl config --build 2>&1) && ! grep -q "already built" <<<"$config_out"; then
    printf '%s\n' "$config_out" >&2
    say "building AFL++ failed"
    exit 2
fi

# --- build ---------------------------------------------------------------------------------
say "building the targets (cargo afl build --release)"
cargo afl build --release --locked --quiet

# --- run each target -----------------------------------------------------------------------
export AFL_NO_UI=1                # plain log lines, not a terminal screen
export AFL_SKIP_CPUFREQ=1         # the governor is not ours to change
export AFL_NO_AFFINITY=1          # do not pin a core of a shared machine
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1  # core_pattern is not ours either

# One value of a target's fuzzer_stats.
field() { awk -v k="$1" '$1 == k { print $3 }' "$stats"; }

mkdir -p out
failed=()
rows=()
for target in $FUZZ_TARGETS; do
    [[ -d "seeds/$target" ]] || { say "no seeds for $target"; exit 2; }
    rm -rf "out/$target"
    say "$target: ${FUZZ_SECONDS}s (log: fuzz/out/$target.log)"
    status=0
    cargo afl fuzz -V "$FUZZ_SECONDS" -t "$FUZZ_TIMEOUT_MS" -i "seeds/$target" -o "out/$target" \
        "target/release/$target" >"out/$target.log" 2>&1 || status=$?
    stats="out/$target/default/fuzzer_stats"
    if [[ ! -f "$stats" ]]; then
        # afl-fuzz refused to start (a seed crashing or hanging is one reason): say why.
        tail -n 20 "out/$target.log" >&2
        say "$target: afl-fuzz exited with $status before fuzzing"
        failed+=("$target: did not run (see fuzz/out/$target.log)")
        continue
    fi
    run_s=$(field run_time) execs=$(field execs_done) crashes=$(field saved_crashes) hangs=$(field saved_hangs)
    rate=$(awk -v e="$execs" -v s="$run_s" 'BEGIN { printf "%.0f", (s > 0 ? e / s : 0) }')
    rows+=("$(printf '%-16s %8s %14s %10s %8s %6s' "$target" "$run_s" "$execs" "$rate" "$crashes" "$hangs")")
    for f in "out/$target/default/crashes"/id:*; do
        [[ -e "$f" ]] && failed+=("$target crashed on fuzz/$f")
    done
    for f in "out/$target/default/hangs"/id:*; do
        [[ -e "$f" ]] && say "$target hung on fuzz/$f"
    done
done

printf '\n%-16s %8s %14s %10s %8s %6s\n' target seconds executions execs/s crashes hangs
printf '%s\n' "${rows[@]}"
if ((${#failed[@]})); then
    printf '\n'
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
