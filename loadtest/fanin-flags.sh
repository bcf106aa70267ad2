# Sourced by the fan-in scripts: `fanin_flags SERIES` prints the flags the simulated sidecars report
# about (loadtest-flag-NN, variants off/on, one flag per two series), so the control plane
# aggregates their series as a real sidecar's are.
fanin_flags() {
    local series=$1 f
    printf '{"flags": {'
    for ((f = 0; f < (series + 1) / 2; f++)); do
        ((f == 0)) || printf ','
        printf '"loadtest-flag-%02d": {"state": "ENABLED", "defaultVariant": "off", "variants": {"off": false, "on": true}}' "$f"
    done
    printf '}}\n'
}
