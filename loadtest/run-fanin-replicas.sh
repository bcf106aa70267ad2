#!/usr/bin/env bash
# Fan-in against two control-plane replicas on one PostgreSQL: a throwaway PostgreSQL server
# (initdb + pg_ctl in a temporary directory, on PG_PORT), two `rampart control` replicas on it,
# and two `rampart-loadtest fanin` processes, each sending half the simulated sidecars to one
# replica. Prints each load tool's figures (applied reports, ack latency, its replica's CPU time and
# peak RSS); every process started here is stopped by its PID.
#
#   STREAMS=10000 SERIES=20 DURATION=30s loadtest/run-fanin-replicas.sh
#   NO_BUILD=1 …   # use the binaries already built
#
# CPUs: the replicas share CONTROL_CPU (default 1), PostgreSQL PG_CPU (default 1), the load tools
# LOAD_CPU (default 0): on a 2-core machine everything shares the two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/fanin-flags.sh
source loadtest/fanin-flags.sh

STREAMS=${STREAMS:-1000}
SERIES=${SERIES:-20}
DURATION=${DURATION:-30s}
PG_PORT=${PG_PORT:-15432}
CONTROL_CPU=${CONTROL_CPU:-1}
PG_CPU=${PG_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
TARGET=${CARGO_TARGET_DIR:-target}
RAMPART=${RAMPART:-$TARGET/release/rampart}
LOADTEST=${LOADTEST:-$TARGET/release/rampart-loadtest}

[[ -n ${NO_BUILD:-} ]] || { cargo build --release --quiet && cargo build --release --quiet -p rampart-loadtest; }

bin=$(command -v initdb >/dev/null 2>&1 && dirname "$(readlink -f "$(command -v initdb)")" || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d)
as_pg=()
if [[ $(id -u) -eq 0 ]]; then
    chown postgres: "$work"
    as_pg=(runuser -u postgres --)
fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    "${as_pg[@]}" "$bin/pg_ctl" stop -D "$work/data" -m immediate >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

"${as_pg[@]}" "$bin/initdb" -D "$work/data" -U rampart --auth=trust --no-sync >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$work'
max_connections = 50
shared_buffers = 128MB
synchronous_commit = on
CONF
"${as_pg[@]}" taskset -c "$PG_CPU" "$bin/pg_ctl" start -D "$work/data" -l "$work/postgres.log" -w >/dev/null
"${as_pg[@]}" "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U rampart rampart
store="postgres://rampart@127.0.0.1:$PG_PORT/rampart"

fanin_flags "$SERIES" >"$work/flags.json"

control_pids=()
for i in 1 2; do
    cat >"$work/r$i.toml" <<TOML
grpc_listen = "127.0.0.1:1840$i"
http_listen = "127.0.0.1:1841$i"
flags = "$work/flags.json"
store = "$store"
replica = "r$i"
TOML
    RUST_LOG=${RUST_LOG:-warn} taskset -c "$CONTROL_CPU" "$RAMPART" control --config "$work/r$i.toml" \
        2>"$work/r$i.log" &
    pids+=($!)
    control_pids+=($!)
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:1841$i/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
done
curl -fsS http://127.0.0.1:18411/api/v1/replicas
echo
echo "two replicas (pids ${control_pids[*]}) on CPU $CONTROL_CPU, PostgreSQL on CPU $PG_CPU, load tools on CPU $LOAD_CPU; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "built from: $("$RAMPART" --version)"

status=0
load_pids=()
for i in 1 2; do
    taskset -c "$LOAD_CPU" "$LOADTEST" fanin \
        --control "http://127.0.0.1:1840$i" --metrics "http://127.0.0.1:1841$i/metrics" \
        --control-pid "${control_pids[$((i - 1))]}" --streams "$((STREAMS / 2))" --series "$SERIES" \
        --interval 1s --duration "$DURATION" "$@" >"$work/load$i.out" 2>&1 &
    load_pids+=($!)
done
for pid in "${load_pids[@]}"; do
    wait "$pid" || status=$?
done
for i in 1 2; do
    echo "=== replica r$i: its half of the simulated sidecars ($((STREAMS / 2)))"
    cat "$work/load$i.out"
    echo "--- r$i: $(grep -E '^(VmHWM|VmRSS|Threads)' /proc/"${control_pids[$((i - 1))]}"/status | tr -s '\t ' ' ' | paste -sd ';')"
    curl -fsS "http://127.0.0.1:1841$i/metrics" |
        grep -E '^rampart_control_(reports_|commit_failures|sequence_jumps|ingest_saturated|leader)' || true
done
pg_pid=$(head -1 "$work/data/postmaster.pid")
echo "--- PostgreSQL (postmaster $pg_pid and its backends): CPU seconds $(ps --ppid "$pg_pid" -p "$pg_pid" -o times= | paste -sd+ | bc)"
exit $status
