# Sourced by scripts/link-order and benches/compare/memory.sh: the pieces both use to run
# `rampart proxy` with `rampart-loadtest compare`'s flags in front of the load tool's upstream.
# Loopback only; every process started through `started` is stopped by its PID on exit.

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Records PID $1 to stop on exit.
started() { pids+=("$1"); }

# Waits up to $3 seconds for the log $1 to contain $2, then prints that line.
wait_for() {
    for _ in $(seq 1 $(($3 * 10))); do
        if grep -m1 "$2" "$1"; then return 0; fi
        sleep 0.1
    done
    echo "$(basename "$0"): '$2' not in $1 after $3 s" >&2
    exit 1
}

# compare's 10 flags into $1: even ones static `on`, odd ones a 50% ramp.
write_flags() {
    {
        echo "flags:"
        for i in $(seq 0 9); do
            printf '  f%s:\n    state: ENABLED\n    variants: { "on": true, "off": false }\n' "$i"
            if ((i % 2 == 0)); then
                echo '    defaultVariant: "on"'
            else
                printf '    defaultVariant: "off"\n    ramp: { treatment: "on", percent: 50 }\n'
            fi
        done
    } >"$1"
}

# A proxy.toml on free loopback ports: upstream $1, flags file $2, flag queries $3 ("off" or an
# address), TLS on the listener when $4 is non-empty (a self-signed certificate in $work).
proxy_config() {
    printf 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nupstream = "http://%s"\nflags = "%s"\n\n[context]\ntargetingKey = ["header:x-user-id"]\n\n[queries]\ngrpc = "%s"\nofrep = "%s"\n' \
        "$1" "$2" "$3" "$3"
    if [[ -n $4 ]]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
            -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
        printf '\n[tls]\ncert = "%s"\nkey = "%s"\n' "$work/cert.pem" "$work/key.pem"
    fi
}
