#!/usr/bin/env bash
# Runs every ramp scenario of loadtest/scenarios/ through the simulator (the real decision code)
# with RUNS runs each and a fixed seed; writes loadtest/results/scenarios.json and
# loadtest/results/scenarios.md, both stating the commit measured, the date, the runs and the seed.
#
#   loadtest/run-scenarios.sh [RUNS=1000]        SEED=1 THREADS=<cores> to override
set -euo pipefail

runs="${1:-1000}"
seed="${SEED:-1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

[[ "$runs" =~ ^[0-9]+$ && "$runs" -gt 0 ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }

commit="$(git rev-parse HEAD)"
# Tracked changes only: untracked files elsewhere in the tree do not change what is measured.
if ! git diff --quiet HEAD --; then
    commit="$commit-dirty"
fi

cargo build --release --quiet -p rampart-loadtest

out="loadtest/results"
mkdir -p "$out"
threads=()
if [[ -n "${THREADS:-}" ]]; then threads=(--threads "$THREADS"); fi

started=$(date +%s)
target/release/rampart-loadtest simulate \
    --scenario loadtest/scenarios \
    --runs "$runs" --seed "$seed" "${threads[@]}" \
    --commit "$commit" \
    --json-out "$out/scenarios.json" \
    --markdown-out "$out/scenarios.md" \
    --markdown
echo "wrote $out/scenarios.json and $out/scenarios.md ($runs runs per scenario, seed $seed, commit $commit, $(( $(date +%s) - started )) s)" >&2
