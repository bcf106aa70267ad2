#!/usr/bin/env bash
# Where a sidecar's resident memory is, by mapping: `rampart proxy` with compare's configuration
# (10 flags, 5 of them 50% ramps, flag queries off) in front of the load tool's upstream, both on
# CPU 1; resident memory by mapping once it serves (idle), then after a closed loop of 32
# connections from CPU 0 (8 s, a random user per request): VmRSS, VmHWM and Rss of each mapping of
# the binary (code, read-only data, relocated data), the heap (mimalloc's arena) and libc.
#
#   benches/compare/memory.sh target/release/rampart          # plain HTTP
#   TLS=1 benches/compare/memory.sh target/release/rampart    # TLS on the listener
#   CONNECTIONS=64 benches/compare/memory.sh target/release/rampart   # 32 by default
#
# Loopback only; both processes are stopped by their PIDs.
set -euo pipefail
bin=$(realpath "$1")
here=$(dirname "${BASH_SOURCE[0]}")
loadtest=$(realpath "$here/../../target/release/rampart-loadtest")
source "$here/../../scripts/proxy-fixture.sh"

# Rss (kB) by mapping: the binary's segments by permission, anonymous memory, each library.
by_mapping() {
    awk -v bin="$bin" '
        /^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "") ? "anonymous" : ($6 == bin ? "binary " $2 : $6); next }
        /^Rss:/ { rss[name] += $2 }
        END { for (n in rss) if (rss[n] > 0) printf "  %6d kB  %s\n", rss[n], n }
    ' "/proc/$1/smaps" | sort -k1,1nr
}

taskset -c 1 "$loadtest" upstream --listen 127.0.0.1:0 --max-lifetime 5m 2>"$work/upstream.log" &
started $!
upstream=$(wait_for "$work/upstream.log" "upstream listening on" 10 | awk '{print $NF}')
write_flags "$work/flags.yaml"
proxy_config "$upstream" "$work/flags.yaml" off "${TLS:-}" >"$work/proxy.toml"
scheme=http
[[ -z ${TLS:-} ]] || scheme=https
RUST_LOG=info NO_COLOR=1 taskset -c 1 "$bin" proxy --config "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
proxy=$!
started "$proxy"
listen=$(wait_for "$work/proxy.log" "rampart proxy serving" 10 | sed -E 's/.* listen=([^ ]+).*/\1/')

echo "$("$bin" --version), ${scheme}, $(date -u +%FT%TZ)"
# How much of the layout this binary got: names of link-order.txt it has (rerun
# scripts/link-order when few match).
order=$here/../../link-order.txt
if command -v nm >/dev/null && [[ -f $order ]]; then
    found=$(nm "$bin" 2>/dev/null | awk 'NR == FNR { want[$1]; next } $NF in want && !seen[$NF]++ { n++ } END { print n + 0 }' "$order" -)
    echo "layout: $found of $(wc -l <"$order") functions of link-order.txt are in the binary"
fi
sleep 1
echo "idle: $(grep VmRSS "/proc/$proxy/status" | tr -s ' \t' ' ')"
by_mapping "$proxy"
taskset -c 0 "$loadtest" load --url "$scheme://$listen/" --insecure --closed --connections "${CONNECTIONS:-32}" --warmup 1s \
    --duration 8s --random-user-id | grep "closed loop"
echo "after the closed loop: $(grep -E 'VmHWM|VmRSS' "/proc/$proxy/status" | tr -s ' \t' ' ' | paste -sd' ')"
by_mapping "$proxy"
