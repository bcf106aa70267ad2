#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind: unlike CPU time on
# a shared VM (±10% between runs minutes apart), the count repeats within a fraction of a percent,
# so two builds can be told apart by one run each. Kernel time is not counted (see `compare`'s
# CPU-µs for the whole cost).
#
# The target serves compare's set-up in front of the load tool's upstream: `rampart proxy` with
# compare's 10 flags (5 of them 50% ramps; FLAGS=0 for none), or nginx with the same 10 constant
# headers (`proxy_set_header`, `keepalive 64` upstream, one process), or `bare`: the load tool's
# `bare-proxy`, hyper's HTTP/1.1 server and client with those 10 headers and nothing else (the
# floor under any hyper-based proxy; plain HTTP only). 5 000 requests warm it up,
# the counters are zeroed, then N requests (32 connections, closed loop, a random user each) are
# counted. Prints the instructions per request and the functions with the most of them.
#
#   benches/compare/instructions.sh target/release/rampart
#   FLAGS=0 benches/compare/instructions.sh target/release/rampart
#   benches/compare/instructions.sh nginx
#   benches/compare/instructions.sh bare
#   TLS=1 N=10000 TOP=40 benches/compare/instructions.sh target/release/rampart
#   KEEP=/tmp/a.out benches/compare/instructions.sh target/release/rampart   # keep callgrind's file
#
# Needs valgrind (Debian: apt-get install valgrind), python3 for nginx (to pick a free port) and
# openssl with TLS=1. Loopback only; every process started is stopped by its PID.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
loadtest=$(realpath "$here/../../target/release/rampart-loadtest")
source "$here/../../scripts/proxy-fixture.sh"
command -v callgrind_control >/dev/null || { echo "$0: needs valgrind" >&2; exit 1; }
n=${N:-20000}

"$loadtest" upstream --listen 127.0.0.1:0 --max-lifetime 30m 2>"$work/upstream.log" &
started $!
upstream=$(wait_for "$work/upstream.log" "upstream listening on" 10 | awk '{print $NF}')
scheme=http
[[ -z ${TLS:-} ]] || scheme=https
grind=(valgrind --tool=callgrind --dump-instr=no --compress-strings=no "--callgrind-out-file=$work/callgrind.out")

if [[ $1 == nginx ]]; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    listen="127.0.0.1:$port"
    mkdir -p "$work/nginx"
    ssl=""
    if [[ -n ${TLS:-} ]]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
            -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
        ssl=" ssl; ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem; ssl_protocols TLSv1.3 TLSv1.2"
    fi
    headers=$(for i in $(seq 0 9); do
        if ((i % 2 == 0)); then v=on; else v=off; fi
        printf 'proxy_set_header x-flag-f%s "%s"; ' "$i" "$v"
    done)
    d=$work/nginx
    cat >"$d/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $d/nginx.pid; error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_requests 1000000;
    client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
    upstream app { server $upstream; keepalive 64; }
    server {
        listen $listen$ssl;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; $headers }
    }
}
EOF
    "${grind[@]}" nginx -p "$d" -c "$d/nginx.conf" >"$work/target.log" 2>&1 &
    target=$!
    started "$target"
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    label="$(nginx -v 2>&1 | sed 's/.*: //'), 10 constant headers"
elif [[ $1 == bare ]]; then
    [[ -z ${TLS:-} ]] || { echo "$0: bare is plain HTTP only" >&2; exit 1; }
    "${grind[@]}" "$loadtest" bare-proxy --upstream "$upstream" --max-lifetime 30m >"$work/target.log" 2>&1 &
    target=$!
    started "$target"
    listen=$(wait_for "$work/target.log" "bare proxy listening on" 120 | awk '{print $NF}')
    label="rampart-loadtest bare-proxy ($("$loadtest" --version)), 10 constant headers"
else
    bin=$(realpath "$1")
    if [[ ${FLAGS:-10} == 0 ]]; then echo "flags: {}" >"$work/flags.yaml"; else write_flags "$work/flags.yaml"; fi
    proxy_config "$upstream" "$work/flags.yaml" off "${TLS:-}" >"$work/proxy.toml"
    RUST_LOG=info NO_COLOR=1 "${grind[@]}" "$bin" proxy --config "$work/proxy.toml" >"$work/target.log" 2>&1 &
    target=$!
    started "$target"
    listen=$(wait_for "$work/target.log" "rampart proxy serving" 120 | sed -E 's/.* listen=([^ ]+).*/\1/')
    label="$("$bin" --version), ${FLAGS:-10} flags"
fi

load() {
    "$loadtest" load --url "$scheme://$listen/" --insecure --closed --connections 32 --warmup 0s --duration 10m \
        --requests "$1" --random-user-id
}
load 5000 >/dev/null
callgrind_control -z "$target" >/dev/null 2>&1
served=$(load "$n" | grep "closed loop")
callgrind_control -d "$target" >/dev/null 2>&1
dump=""
for _ in $(seq 1 100); do
    dump=$(ls "$work"/callgrind.out.* 2>/dev/null | head -1)
    [[ -n $dump ]] && grep -q "^totals:" "$dump" && break
    sleep 0.1
done
[[ -z ${KEEP:-} ]] || cp "$dump" "$KEEP"
count=$(grep -oE '^closed loop[^:]*: [0-9]+ requests' <<<"$served" | grep -oE '[0-9]+ requests' | grep -oE '[0-9]+')
total=$(grep -m1 "^totals:" "$dump" | awk '{print $2}')
echo "$label, $scheme, $(date -u +%FT%TZ)"
echo "$served"
echo "user-space instructions: $total for $count requests = $((total / count)) per request"
echo "most instructions (self, per request):"
# Self cost per function: a cost line after `calls=` is the callee's inclusive cost, skipped.
awk -v n="$count" '
    /^fn=/ { fn = substr($0, 4); sub(/'"'"'[0-9]+$/, "", fn); next }
    /^calls=/ { skip = 1; next }
    /^[0-9+*-]/ { if (skip) { skip = 0; next } if (fn != "") self[fn] += $2 }
    END { for (f in self) printf "%8.0f  %s\n", self[f] / n, f }
' "$dump" | sort -k1,1nr | head -"${TOP:-15}" | cut -c1-160
