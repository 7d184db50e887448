#!/usr/bin/env bash
# Builds every fuzz target of hull-vmm and runs each for SECONDS (default 30), starting from
# generated seeds plus whatever corpus earlier runs kept in vmm/fuzz/corpus/. Fails if a
# target crashes, leaks, times out or runs out of memory; libFuzzer's reproducer is then in
# vmm/fuzz/artifacts/<target>/. Prints execs/s and total execs per target.
#
#   vmm/fuzz/run.sh [SECONDS]
#
# Stable toolchain: cargo fuzz passes -Zsanitizer=address, which only nightly accepts;
# RUSTC_BOOTSTRAP=1 makes stable rustc accept it (the sanitizer runtimes ship with the
# stable x86_64-unknown-linux-gnu std). HULL_FUZZ_SANITIZER=none builds without ASan
# (faster, still catches panics, overflows and hangs) if a toolchain lacks the runtime.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-30}
sanitizer=${HULL_FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || {
    echo "fuzz: cargo-fuzz is not installed (scripts/setup-host.sh installs it)" >&2; exit 1; }

# The targets' temporary sockets go here, and nowhere else.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work

# The harness's own checks first (seed layout = target layout, the init sequence activates).
cargo test --locked --quiet >&2
cargo run --locked --quiet --bin gen-seeds -- "$work/seeds"
summary=()
for src in fuzz_targets/*.rs; do
    t=$(basename "$src" .rs)
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$work/$t.log"
    echo "fuzz: $t for ${secs}s (sanitizer: $sanitizer)" >&2
    # -a: debug assertions (and overflow checks), so guest-driven arithmetic that overflows
    # is a crash rather than a silent wrap.
    if ! cargo fuzz run --sanitizer "$sanitizer" -a "$t" "corpus/$t" "$work/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=20000 \
        -print_final_stats=1 2>"$log"; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t FAILED; reproducer in vmm/fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    summary+=("$t: $runs execs in ${secs}s, $rate execs/s, $cov")
done
printf 'fuzz: %s\n' "${summary[@]}"
