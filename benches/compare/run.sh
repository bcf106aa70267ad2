#!/usr/bin/env bash
# Side-by-side comparison: the upstream direct, Rampart, nginx and HAProxy, interleaved rounds,
# load generator on CPU 0, proxies and upstream on CPU 1. A thin wrapper around
# `rampart-loadtest compare` (see loadtest/README.md); arguments are passed through.
#
#   benches/compare/run.sh                          # 3 rounds × 8 s, rates 1000,5000 req/s
#   benches/compare/run.sh --rounds 5 --duration 10s --rates 1000,5000,10000
#   SKIP_BUILD=1 benches/compare/run.sh …           # use the binaries already in target/release
#
# Writes benches/compare/results-<date>.{json,md} (or --out PATH). nginx (nginx-light) and
# haproxy are optional: each is skipped with a notice when absent.
# results-2026-11-26-wrk.md and perf-*-2026-11-26.txt are from the earlier wrk-based script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[[ -n ${SKIP_BUILD:-} ]] || { cargo build --release --quiet && cargo build --release --quiet -p rampart-loadtest; }
exec target/release/rampart-loadtest compare "$@"
