// One real OpenFeature Node client against a running Rampart sidecar, driven by
// tests/openfeature_clients.rs: `node check.mjs <rpc|in-process|ofrep> <port> <units>`.
// Prints one JSON line of results, then `{"waiting": true}`; after a line on stdin (the test
// changed the flags) polls until the change is seen and prints `{"changed_ms": n}`.
import { createInterface } from 'node:readline';
import { OpenFeature } from '@openfeature/server-sdk';
import { FlagdProvider } from '@openfeature/flagd-provider';
import { OFREPProvider } from '@openfeature/ofrep-provider';

const [mode, port, units] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const provider = mode === 'ofrep'
  ? new OFREPProvider({ baseUrl: `http://127.0.0.1:${port}` })
  : new FlagdProvider({ host: '127.0.0.1', port, resolverType: mode });
await OpenFeature.setProviderAndWait(provider);
const client = OpenFeature.getClient();

const pick = (d) => ({ value: d.value, variant: d.variant ?? null, reason: d.reason ?? null, errorCode: d.errorCode ?? null, metadata: d.flagMetadata ?? {} });
const ctx = { targetingKey: 'someone' };
const results = {
  // Asked first: the RPC provider's cache is keyed by flag, not by type.
  mismatch: pick(await client.getStringDetails('off-switch', 'fallback', ctx)),
  bool: pick(await client.getBooleanDetails('off-switch', true, ctx)),
  string: pick(await client.getStringDetails('text', 'fallback', ctx)),
  int: pick(await client.getNumberDetails('count', 42, ctx)),
  float: pick(await client.getNumberDetails('ratio', 0.25, ctx)),
  object: pick(await client.getObjectDetails('theme', {}, ctx)),
  missing: pick(await client.getBooleanDetails('no-such-flag', true, ctx)),
  disabled: pick(await client.getBooleanDetails('old-banner', false, ctx)),
  ramp: [],
};
for (let i = 0; i < units; i++) {
  const d = await client.getBooleanDetails('checkout', false, { targetingKey: `user-${i}` });
  results.ramp.push(d.variant ?? null);
}
console.log(JSON.stringify(results));
console.log(JSON.stringify({ waiting: true }));

const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once('line', resolve));
const started = Date.now();
while (Date.now() - started < 5000) {
  if (await client.getBooleanValue('off-switch', false, ctx)) break;
  await new Promise((r) => setTimeout(r, 5));
}
console.log(JSON.stringify({ changed_ms: Date.now() - started, seen: await client.getBooleanValue('off-switch', false, ctx) }));
await OpenFeature.close();
process.exit(0);
