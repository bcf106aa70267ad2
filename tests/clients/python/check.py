"""One real OpenFeature Python client against a running Rampart sidecar, driven by
tests/openfeature_clients.rs: `check.py <rpc|in-process|ofrep> <port> <units>`.
Prints one JSON line of results, then {"waiting": true}; after a line on stdin (the test changed
the flags) polls until the change is seen and prints {"changed_ms": n}."""

import json
import sys
import time

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus

mode, port, units = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "ofrep":
    from openfeature.contrib.provider.ofrep import OFREPProvider

    provider = OFREPProvider(base_url=f"http://127.0.0.1:{port}")
else:
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType

    resolver = ResolverType.RPC if mode == "rpc" else ResolverType.IN_PROCESS
    provider = FlagdProvider(host="127.0.0.1", port=port, resolver_type=resolver)
api.set_provider(provider)
client = api.get_client()
deadline = time.monotonic() + 10
while client.get_provider_status() != ProviderStatus.READY and time.monotonic() < deadline:
    time.sleep(0.01)


def pick(d):
    code = d.error_code
    reason = d.reason
    return {
        "value": d.value,
        "variant": d.variant,
        "reason": getattr(reason, "value", reason),
        "errorCode": getattr(code, "value", code),
        "metadata": dict(d.flag_metadata or {}),
    }


ctx = EvaluationContext("someone")
results = {
    "mismatch": pick(client.get_string_details("off-switch", "fallback", ctx)),
    "bool": pick(client.get_boolean_details("off-switch", True, ctx)),
    "string": pick(client.get_string_details("text", "fallback", ctx)),
    "int": pick(client.get_integer_details("count", 42, ctx)),
    "float": pick(client.get_float_details("ratio", 0.25, ctx)),
    "object": pick(client.get_object_details("theme", {}, ctx)),
    "missing": pick(client.get_boolean_details("no-such-flag", True, ctx)),
    "disabled": pick(client.get_boolean_details("old-banner", False, ctx)),
    "ramp": [
        client.get_boolean_details("checkout", False, EvaluationContext(f"user-{i}")).variant
        for i in range(units)
    ],
}
print(json.dumps(results), flush=True)
print(json.dumps({"waiting": True}), flush=True)
sys.stdin.readline()
started = time.monotonic()
while time.monotonic() - started < 5:
    if client.get_boolean_value("off-switch", False, ctx):
        break
    time.sleep(0.005)
elapsed = int((time.monotonic() - started) * 1000)
print(json.dumps({"changed_ms": elapsed, "seen": client.get_boolean_value("off-switch", False, ctx)}), flush=True)
api.shutdown()
