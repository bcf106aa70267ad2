#!/usr/bin/env bash
# Side-by-side throughput/latency of: the upstream direct, nginx as a reverse proxy (10 constant
# x-flag-* headers), and `rampart proxy` (10 flags evaluated and injected).
#
#   benches/compare/run.sh            # needs: cargo, nginx (nginx-light), wrk, curl, taskset
#
# Everything listens on 127.0.0.1 (ports 18081-18084). wrk runs on CPU 0, the proxies and the
# upstream on CPU 1. Each target gets a warm-up, then ROUNDS interleaved closed-loop saturation runs
# (`wrk -t1 -c$CONNS -d$DURATION --latency`). Reported per target: median req/s, median p50/p99,
# the proxy's CPU time per request (utime+stime from /proc/PID/stat) and peak RSS (VmHWM).
# The table goes to stdout and to benches/compare/results-<date>.md.
#
# Knobs (environment): ROUNDS (3), DURATION (8s), CONNS (32), WARMUP (2s), SKIP_BUILD (unset),
# PROFILE=1 (perf-record each proxy during one extra run), KEEP_WORK=1 (keep the temp dir),
# RAMPART_BIN (a prebuilt binary instead of target/release/rampart; use with SKIP_BUILD=1).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2s}
LOADGEN_CPU=${LOADGEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}

P_UPSTREAM=18081
P_NGINX=18082
P_RAMPART=18083
P_ADMIN=18084

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CMDLINE="$0 $*"

for tool in cargo nginx wrk curl taskset; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y nginx-light wrk curl util-linux)" >&2; exit 1; }
done

# ---------------------------------------------------------------- build
if [[ -z "${SKIP_BUILD:-}" ]]; then
    (cd "$ROOT" && cargo build --release)
fi
RAMPART=${RAMPART_BIN:-"$ROOT/target/release/rampart"}
[[ -x "$RAMPART" ]] || { echo "no $RAMPART" >&2; exit 1; }

# ---------------------------------------------------------------- processes, stopped by PID
WORK=$(mktemp -d "${TMPDIR:-/tmp}/rampart-compare.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${KEEP_WORK:-}" ]]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in $P_UPSTREAM $P_NGINX $P_RAMPART $P_ADMIN; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p on 127.0.0.1 is already in use" >&2; exit 1
    fi
done

# nginx common settings: one process, no daemon, no access log, temp paths in the work dir.
nginx_conf() { # $1 = dir, $2 = http{} body
    local dir=$1
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
$2
}
EOF
}

# The upstream: "ok\n" on /, and /headers echoes the flag headers it received (sanity check).
ECHO=""
for i in $(seq 0 9); do ECHO+="f$i=\$http_x_flag_f$i "; done
nginx_conf "$WORK/upstream" "
    server {
        listen 127.0.0.1:$P_UPSTREAM;
        location = / { return 200 \"ok\n\"; }
        location = /headers { return 200 \"$ECHO\n\"; }
    }"

# The reverse-proxy nginx: keep-alive upstream connections, 10 constant flag headers.
SET_HEADERS=""
for i in $(seq 0 9); do
    if (( i % 2 == 0 )); then v="on"; else v="off"; fi
    SET_HEADERS+="            proxy_set_header x-flag-f$i \"$v\";"$'\n'
done
nginx_conf "$WORK/nginx" "
    upstream app {
        server 127.0.0.1:$P_UPSTREAM;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
$SET_HEADERS        }
    }"

# Rampart: 10 flags without JSONLogic targeting: even ones static, odd ones ramped 50%.
mkdir -p "$WORK/rampart"
{
    echo "flags:"
    for i in $(seq 0 9); do
        echo "  f$i:"
        echo "    state: ENABLED"
        echo "    variants: { \"on\": true, \"off\": false }"
        if (( i % 2 == 0 )); then
            echo "    defaultVariant: \"on\""
        else
            echo "    defaultVariant: \"off\""
            echo "    ramp: { treatment: \"on\", percent: 50 }"
        fi
    done
} >"$WORK/rampart/flags.yaml"
cat >"$WORK/rampart/rampart.toml" <<EOF
listen = "127.0.0.1:$P_RAMPART"
admin = "127.0.0.1:$P_ADMIN"
upstream = "http://127.0.0.1:$P_UPSTREAM"
flags = "flags.yaml"

[context]
targetingKey = ["header:x-user-id"]
EOF
"$RAMPART" check "$WORK/rampart/flags.yaml" >/dev/null

wait_http() { # $1 = url
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "not answering: $1" >&2; return 1
}

taskset -c "$SERVER_CPU" nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/logs/error.log" \
    >"$WORK/upstream/logs/stdout" 2>&1 &
PID_UPSTREAM=$!; PIDS+=("$PID_UPSTREAM")
taskset -c "$SERVER_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" \
    >"$WORK/nginx/logs/stdout" 2>&1 &
PID_NGINX=$!; PIDS+=("$PID_NGINX")
RUST_LOG=${RUST_LOG:-warn} taskset -c "$SERVER_CPU" "$RAMPART" proxy --config "$WORK/rampart/rampart.toml" \
    >"$WORK/rampart/stdout" 2>"$WORK/rampart/stderr" &
PID_RAMPART=$!; PIDS+=("$PID_RAMPART")

wait_http "http://127.0.0.1:$P_UPSTREAM/"
wait_http "http://127.0.0.1:$P_NGINX/"
wait_http "http://127.0.0.1:$P_ADMIN/readyz"
wait_http "http://127.0.0.1:$P_RAMPART/"

# Sanity: both proxies must deliver 10 x-flag-* headers to the upstream.
for p in $P_NGINX $P_RAMPART; do
    seen=$(curl -fsS -H 'x-user-id: u-123' "http://127.0.0.1:$p/headers")
    n=$(tr ' ' '\n' <<<"$seen" | grep -cE '^f[0-9]=.+$' || true)
    echo "port $p -> upstream saw $n/10 flag headers: $seen" >&2
    [[ "$n" == 10 ]] || { echo "proxy on port $p does not inject 10 flag headers" >&2; exit 1; }
done

# ---------------------------------------------------------------- measurement
TICK=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of PID $1 (fields 14, 15; the comm field has no spaces here)
    awk '{print $14 + $15}' "/proc/$1/stat"
}
to_us() { # wrk duration (e.g. 812.00us, 1.23ms, 1.01s) -> microseconds
    awk -v d="$1" 'BEGIN {
        n = d + 0
        if (d ~ /us$/) print n; else if (d ~ /ms$/) print n * 1000;
        else if (d ~ /m$/) print n * 60e6; else if (d ~ /s$/) print n * 1e6; else print n }'
}
cpu_line() { # "busy total steal" jiffies of CPU $1 from /proc/stat
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t, $9 }' /proc/stat
}
pct() { # $1 = "busy total steal" before, $2 = after, $3 = field (1 busy, 3 steal) -> percent
    awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { split(a, x, " "); split(b, y, " ");
        dt = y[2] - x[2]; printf "%.0f", (dt > 0 ? 100 * (y[f] - x[f]) / dt : 0) }'
}
median() { sort -g | awk '{a[NR] = $1} END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

TARGETS=(direct nginx rampart)
declare -A PORT=([direct]=$P_UPSTREAM [nginx]=$P_NGINX [rampart]=$P_RAMPART)
declare -A PID=([direct]=$PID_UPSTREAM [nginx]=$PID_NGINX [rampart]=$PID_RAMPART)
WRK=(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H 'x-user-id: u-123')
declare -A RPS P50 P99 REQS TICKS UPTICKS LGBUSY SVBUSY STEAL

q0l=$(cpu_line "$LOADGEN_CPU"); q0s=$(cpu_line "$SERVER_CPU"); sleep 1
IDLE_NOTE="cpu$LOADGEN_CPU busy $(pct "$q0l" "$(cpu_line "$LOADGEN_CPU")" 1)%, cpu$SERVER_CPU busy $(pct "$q0s" "$(cpu_line "$SERVER_CPU")" 1)% before the runs"
echo "background load: $IDLE_NOTE" >&2
case "$IDLE_NOTE" in *"busy "[2-9][0-9]%*|*"busy 100%"*) echo "warning: the machine is not idle; numbers will be noisy" >&2 ;; esac

for t in "${TARGETS[@]}"; do
    taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" -H 'x-user-id: u-123' "http://127.0.0.1:${PORT[$t]}/" >/dev/null
done

for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        pid=${PID[$t]}
        c0=$(cpu_ticks "$pid"); u0=$(cpu_ticks "$PID_UPSTREAM")
        l0=$(cpu_line "$LOADGEN_CPU"); s0=$(cpu_line "$SERVER_CPU")
        out=$("${WRK[@]}" "http://127.0.0.1:${PORT[$t]}/")
        l1=$(cpu_line "$LOADGEN_CPU"); s1=$(cpu_line "$SERVER_CPU")
        c1=$(cpu_ticks "$pid"); u1=$(cpu_ticks "$PID_UPSTREAM")
        lg=$(pct "$l0" "$l1" 1); sv=$(pct "$s0" "$s1" 1); st=$(pct "$s0" "$s1" 3)
        LGBUSY[$t]+="$lg "; SVBUSY[$t]+="$sv "; STEAL[$t]+="$st "
        echo "$out" >"$WORK/wrk-$t-$r.txt"
        rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        errs=$(grep -E 'Socket errors|Non-2xx' <<<"$out" || true)
        [[ -z "$errs" ]] || echo "warning: $t round $r: $errs" >&2
        RPS[$t]+="$rps "; P50[$t]+="$p50 "; P99[$t]+="$p99 "
        REQS[$t]=$(( ${REQS[$t]:-0} + reqs ))
        TICKS[$t]=$(( ${TICKS[$t]:-0} + c1 - c0 ))
        UPTICKS[$t]=$(( ${UPTICKS[$t]:-0} + u1 - u0 ))
        printf 'round %d %-8s %10.0f req/s  p50 %7.0f us  p99 %7.0f us  cpu%s busy %3d%%  cpu%s busy %3d%% (steal %d%%)\n' \
            "$r" "$t" "$rps" "$p50" "$p99" "$LOADGEN_CPU" "$lg" "$SERVER_CPU" "$sv" "$st" >&2
    done
done

hwm_mib() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

declare -A MRPS
for t in "${TARGETS[@]}"; do MRPS[$t]=$(tr ' ' '\n' <<<"${RPS[$t]}" | grep . | median); done

DATE=$(date +%F)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
RAMPART_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n "$(cd "$ROOT" && git status --porcelain 2>/dev/null)" ]] && RAMPART_REV+=" (dirty tree)"

report() {
    echo "# Rampart vs direct vs nginx — $DATE"
    echo
    echo "- date: $(date -Iseconds)"
    echo "- nproc: $(nproc); CPU: $CPU_MODEL; kernel $(uname -r); background load: $IDLE_NOTE"
    echo "- command: \`$CMDLINE\` (ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS)"
    echo "- load: \`taskset -c $LOADGEN_CPU wrk -t1 -c$CONNS -d$DURATION --latency -H 'x-user-id: u-123' URL\`, $ROUNDS interleaved rounds after a $WARMUP warm-up each"
    echo "- servers on CPU $SERVER_CPU (shared by proxy and upstream): upstream nginx ($NGINX_VERSION, 1 process, \`return 200 \"ok\\n\"\`),"
    echo "  nginx reverse proxy (1 process, keepalive 64, 10 constant \`proxy_set_header x-flag-fN\`),"
    echo "  rampart $RAMPART_REV (\`rampart proxy\`, workers = 1, 10 flags: 5 static, 5 \`ramp 50%\`, targetingKey from x-user-id)"
    echo "- req/s, p50, p99: median of rounds; CPU-µs/req: (utime+stime) of that process over all rounds / requests served;"
    echo "  upstream CPU-µs/req is the upstream nginx's share of the same requests; peak RSS: VmHWM at the end"
    echo
    echo "| target | req/s | p50 µs | p99 µs | CPU-µs/req | upstream CPU-µs/req | peak RSS MiB | vs direct | vs nginx |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        local p50 p99 cpu up rss
        p50=$(tr ' ' '\n' <<<"${P50[$t]}" | grep . | median)
        p99=$(tr ' ' '\n' <<<"${P99[$t]}" | grep . | median)
        cpu=$(awk -v k="${TICKS[$t]}" -v n="${REQS[$t]}" -v hz="$TICK" 'BEGIN {printf "%.2f", k * 1e6 / hz / n}')
        up=$(awk -v k="${UPTICKS[$t]}" -v n="${REQS[$t]}" -v hz="$TICK" 'BEGIN {printf "%.2f", k * 1e6 / hz / n}')
        rss=$(hwm_mib "${PID[$t]}")
        awk -v t="$t" -v r="${MRPS[$t]}" -v p50="$p50" -v p99="$p99" -v cpu="$cpu" -v up="$up" -v rss="$rss" \
            -v d="${MRPS[direct]}" -v n="${MRPS[nginx]}" \
            'BEGIN {printf "| %s | %.0f | %.0f | %.0f | %s | %s | %s | %.2f | %.2f |\n", t, r, p50, p99, cpu, up, rss, r / d, r / n}'
    done
    echo
    echo "Per round (req/s; busy % of the wrk CPU $LOADGEN_CPU; busy % and steal % of the server CPU $SERVER_CPU):"
    echo
    for t in "${TARGETS[@]}"; do
        echo "- $t: req/s ${RPS[$t]}; cpu$LOADGEN_CPU busy ${LGBUSY[$t]}; cpu$SERVER_CPU busy ${SVBUSY[$t]}; steal ${STEAL[$t]}"
    done
    echo
    [[ -z "$PROFILE_NOTE" ]] || { echo "$PROFILE_NOTE"; echo; }
    echo "For \`direct\` the CPU-µs/req column is the upstream nginx itself (so it equals the upstream column)."
}

# ---------------------------------------------------------------- optional profile (PROFILE=1)
# perf record of each proxy during one more wrk run; hardware cycles if the PMU is available
# (`perf stat -e instructions` supported), else the cpu-clock software event.
PROFILE_NOTE=""
declare -A SPLIT SYSCALLS
if [[ -n "${PROFILE:-}" ]] && command -v perf >/dev/null; then
    EVENT=cpu-clock
    pmu=$(perf stat -e instructions true 2>&1 || true)   # captured first: `| grep -q` + pipefail = SIGPIPE
    if [[ "$pmu" == *instructions* && "$pmu" != *"not supported"* ]]; then EVENT=cycles; fi
    for t in nginx rampart; do
        perf record -q -e "$EVENT" -g -p "${PID[$t]}" -o "$WORK/perf-$t.data" -- sleep 6 2>"$WORK/perf-$t.err" &
        perf_pid=$!
        sleep 0.5
        taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d5s -H 'x-user-id: u-123' "http://127.0.0.1:${PORT[$t]}/" >/dev/null
        wait "$perf_pid" || true
        perf report -i "$WORK/perf-$t.data" --stdio --no-children --sort symbol --percent-limit 0.7 -g none 2>/dev/null \
            | grep -v '^$' | sed -E 's/ +(-|[0-9.]+) +(-|[0-9.%]+) *$//; s/ +$//' >"$HERE/perf-$t-$DATE.txt" || true
        perf report -i "$WORK/perf-$t.data" --stdio --children --sort symbol --percent-limit 3 -g none 2>/dev/null \
            | grep -v '^$' | sed -E 's/ +(-|[0-9.]+) +(-|[0-9.%]+) *$//; s/ +$//' >"$HERE/perf-$t-children-$DATE.txt" || true
        # user vs kernel share of the samples
        SPLIT[$t]=$(perf report -i "$WORK/perf-$t.data" --stdio --no-children --sort symbol -g none 2>/dev/null |
            awk '$2 == "[k]" {k += $1} $2 == "[.]" {u += $1} END {printf "user %.0f%% / kernel %.0f%%", u, k}')
        # syscalls per request (one more run, counted with the raw_syscalls tracepoint)
        perf stat -x, -e raw_syscalls:sys_enter -p "${PID[$t]}" -o "$WORK/sys-$t.txt" -- sleep 5.5 2>/dev/null &
        perf_pid=$!
        sleep 0.2
        n=$(taskset -c "$LOADGEN_CPU" wrk -t1 -c"$CONNS" -d5s -H 'x-user-id: u-123' "http://127.0.0.1:${PORT[$t]}/" |
            awk '/requests in/ {print $1}')
        wait "$perf_pid" || true
        SYSCALLS[$t]=$(awk -F, -v n="$n" '/raw_syscalls/ {printf "%.2f", $1 / n}' "$WORK/sys-$t.txt")
    done
    PROFILE_NOTE="Profile: nginx samples ${SPLIT[nginx]}, ${SYSCALLS[nginx]} syscalls/req; rampart samples ${SPLIT[rampart]}, ${SYSCALLS[rampart]} syscalls/req (raw_syscalls:sys_enter: every syscall incl. epoll_wait, per request served). perf ($EVENT, -g) reports: perf-nginx-$DATE.txt, perf-rampart-$DATE.txt (self) and perf-*-children-$DATE.txt (inclusive)"
fi

OUT="$HERE/results-$DATE.md"
report | tee "$OUT"
echo "written: $OUT" >&2
