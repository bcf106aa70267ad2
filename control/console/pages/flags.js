// The Flags page (every flag: state, variants, default, owner and description from its metadata,
// the ramp that owns it, which sidecars serve its current definition) and a flag's page (its
// definition, ramps, sidecars and change history with the definition each change produced).

import { get, seg } from '/console/api.js';
import { badge, every, fill, h, table, time } from '/console/ui.js';

const meta = (def, key) => (def.metadata && def.metadata[key] !== undefined ? String(def.metadata[key]) : '–');

function served(sidecars, changed) {
  const connected = sidecars.filter((p) => p.connected);
  if (!connected.length) return h('span', { class: 'muted' }, 'no sidecar connected');
  const current = connected.filter((p) => p.flags_version >= changed);
  const text = `${current.length} of ${connected.length} sidecars`;
  return h('span', { title: connected.map((p) => `${p.proxy_id}: version ${p.flags_version}`).join(', ') },
    current.length === connected.length ? text : h('strong', {}, `${text} (others behind)`),
    h('span', { class: 'muted' }, ` · ${connected.map((p) => `${p.proxy_id} v${p.flags_version}`).join(', ')}`));
}

export async function flagsPage(main) {
  document.title = 'Flags · Rampart';
  const load = async () => {
    const [flags, ramps, proxies] = await Promise.all([
      get('/api/v1/flags'), get('/api/v1/ramps?limit=0'), get('/api/v1/proxies')]);
    const owning = new Map(ramps.ramps.filter((r) => r.state === 'running' || r.state === 'paused')
      .map((r) => [r.flag, r]));
    const defs = Object.entries((flags.flags && flags.flags.flags) || {});
    const rows = defs.map(([key, def]) => {
      const r = owning.get(key);
      return [
        h('a', { href: `#/flags/${seg(key)}` }, key),
        badge(def.state),
        Object.keys(def.variants || {}).join(', '),
        def.defaultVariant === null || def.defaultVariant === undefined ? '(caller\'s default)' : def.defaultVariant,
        meta(def, 'owner'),
        meta(def, 'description'),
        r ? h('a', { href: `#/ramps/${seg(key)}?id=${r.id}` }, `${r.state} at ${r.percent}% → ${r.treatment}`)
          : (def.ramp ? `${def.ramp.percent}% → ${def.ramp.treatment} (no ramp running)` : '–'),
        served(proxies.proxies, (flags.changed_versions || {})[key] || 1),
      ];
    });
    return [h('h1', {}, 'Flags'),
      h('p', { class: 'muted' }, `Flags version ${flags.version} is the current one.`),
      table(`${defs.length} flags`, ['Flag', 'State', 'Variants', 'Default', 'Owner', 'Description', 'Ramp',
        'Serving its current definition'], rows, { id: 'flags' })];
  };
  fill(main, await load());
  main.dataset.ready = 'flags';
  return every(3000, async () => {
    const next = await load();
    if (!main.contains(document.activeElement) || document.activeElement === main) fill(main, next);
  });
}

export async function flagPage(main, key) {
  document.title = `${key} · Flags · Rampart`;
  const f = await get(`/api/v1/flags/${seg(key)}`);
  const history = f.history.map((c) => [
    time(c.at_ms), c.actor, c.action.replaceAll('_', ' '), c.version === null ? '–' : String(c.version), c.detail,
    c.definition === null ? h('span', { class: 'muted' }, c.version === null ? '–' : 'not defined')
      : h('details', {}, h('summary', {}, 'definition'), h('pre', {}, JSON.stringify(c.definition, null, 2))),
  ]);
  const sidecars = f.sidecars.map((p) => [p.proxy_id, p.service, p.connected ? 'connected' : 'disconnected',
    String(p.flags_version), p.serves_current ? 'yes' : h('strong', {}, 'no: behind')]);
  const ramps = [...f.ramps].reverse().map((r) => [
    h('a', { href: `#/ramps/${seg(key)}?id=${r.id}` }, `ramp ${r.id}`), r.treatment, badge(r.state), `${r.percent}%`,
    time(r.started_ms)]);
  fill(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/flags' }, 'Flags'), ' / ', key),
    h('h1', {}, key),
    f.definition
      ? [h('p', {}, badge(f.definition.state), ` Owner: ${meta(f.definition, 'owner')}. `,
        meta(f.definition, 'description') === '–' ? '' : meta(f.definition, 'description')),
      h('h2', {}, `Definition (flags version ${f.version})`),
      h('pre', { class: 'definition', tabindex: 0 }, JSON.stringify(f.definition, null, 2))]
      : h('p', { class: 'problem' }, 'This flag is no longer defined.'),
    h('h2', {}, 'Ramps'),
    table('Ramps of this flag, newest first', ['Ramp', 'Treatment', 'State', 'Percent', 'Started'], ramps),
    h('h2', {}, 'Sidecars'),
    table(`Sidecars (the flag last changed in version ${f.changed_version})`,
      ['Sidecar', 'Service', 'Stream', 'Flags version', 'Serves the current definition'], sidecars),
    h('h2', {}, 'Change history'),
    table('Changes, newest first (from the audit trail)', ['Time', 'Who', 'Action', 'Version', 'Detail', 'Definition'],
      history, { id: 'flag-history' }));
  main.dataset.ready = 'flag';
  return null;
}
