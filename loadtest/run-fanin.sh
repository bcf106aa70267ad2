#!/usr/bin/env bash
# Fan-in figure: a fresh control plane (pinned to CPU 1) takes 1 000 simulated sidecars × 20 series,
# one report per second each, for 30 s, from rampart-loadtest (pinned to CPU 0); prints the ack
# latency, the control plane's CPU time and peak RSS, and its ingest-delay and commit-batch histograms.
#
#   loadtest/run-fanin.sh [extra rampart-loadtest fanin flags…]
#   STREAMS=1000 SERIES=20 DURATION=30s INTERVAL=1s GRPC_PORT=18400 HTTP_PORT=18401 loadtest/run-fanin.sh
#   NO_BUILD=1 …   # use the binaries already in target/release
#   RAMPART=/path/to/rampart …   # another control-plane binary (e.g. a patched build)
#   STORE=postgres://… …   # the control plane's `store` (default: a fresh SQLite file in a temp dir)
#   CONTROL_EXTRA='key = value' …   # more lines for the control plane's config
#   NO_FLAGS=1 …   # no flags file: every series is of an unknown flag and dropped (not aggregated)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/fanin-flags.sh
source loadtest/fanin-flags.sh

STREAMS=${STREAMS:-1000}
SERIES=${SERIES:-20}
DURATION=${DURATION:-30s}
INTERVAL=${INTERVAL:-1s}
GRPC_PORT=${GRPC_PORT:-18400}
HTTP_PORT=${HTTP_PORT:-18401}
CONTROL_CPU=${CONTROL_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
TARGET=${CARGO_TARGET_DIR:-target}
RAMPART=${RAMPART:-$TARGET/release/rampart}
LOADTEST=${LOADTEST:-$TARGET/release/rampart-loadtest}
STORE=${STORE:-control.db}

[[ -n ${NO_BUILD:-} ]] || { cargo build --release --quiet && cargo build --release --quiet -p rampart-loadtest; }

work=$(mktemp -d)
control_pid=
cleanup() {
    if [[ -n $control_pid ]] && kill -0 "$control_pid" 2>/dev/null; then
        kill -TERM "$control_pid" 2>/dev/null || true
        wait "$control_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# The flags the simulated sidecars report about (loadtest-flag-NN, variants off/on), so their
# series are aggregated as a real sidecar's are.
flags_line=
if [[ -z ${NO_FLAGS:-} ]]; then
    fanin_flags "$SERIES" >"$work/flags.json"
    flags_line="flags = \"$work/flags.json\""
fi
cat >"$work/control.toml" <<TOML
grpc_listen = "127.0.0.1:$GRPC_PORT"
http_listen = "127.0.0.1:$HTTP_PORT"
store = "$STORE"
$flags_line
${CONTROL_EXTRA:-}
TOML

RUST_LOG=${RUST_LOG:-warn} taskset -c "$CONTROL_CPU" "$RAMPART" control --config "$work/control.toml" \
    2>"$work/control.log" &
control_pid=$!

for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$control_pid" 2>/dev/null; then cat "$work/control.log" >&2; exit 1; fi
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null

echo "control plane pid $control_pid on CPU $CONTROL_CPU; load tool on CPU $LOAD_CPU; $(nproc) CPUs; store $STORE; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "built from: $("$RAMPART" --version)"
status=0
taskset -c "$LOAD_CPU" "$LOADTEST" fanin \
    --control "http://127.0.0.1:$GRPC_PORT" --metrics "http://127.0.0.1:$HTTP_PORT/metrics" \
    --control-pid "$control_pid" --streams "$STREAMS" --series "$SERIES" --interval "$INTERVAL" --duration "$DURATION" \
    "$@" || status=$?

echo "--- control plane /metrics at the end"
curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" |
    grep -E '^rampart_control_(ingest_delay_seconds|commit_batch_reports|reports_|commit_failures|connected|sequence_jumps|ingest_)' || true
echo "--- control plane: $(grep -E '^(VmHWM|VmRSS|Threads)' /proc/$control_pid/status | tr -s '\t ' ' ' | paste -sd ';')"
if grep -qE 'WARN|ERROR' "$work/control.log"; then
    echo "--- control plane warnings/errors (first 10)"
    grep -E 'WARN|ERROR' "$work/control.log" | head -10
fi
exit "$status"
