// The Sidecars page: per service, each sidecar's stream state, the flags version it serves against
// the current one, its last report and how long it has been connected. Refreshed every 2 s.

import { get } from '/console/api.js';
import { badge, duration, every, fill, h, table, time } from '/console/ui.js';

function stream(p) {
  if (!p.connected) return badge('disconnected');
  if (p.unresponsive) return h('span', { title: 'did not confirm a rollback\'s flags version in time' },
    badge('unresponsive'));
  return badge('connected');
}

async function load() {
  const [proxies, flags] = await Promise.all([get('/api/v1/proxies'), get('/api/v1/flags')]);
  const now = Date.now();
  const services = new Map();
  for (const p of proxies.proxies) {
    if (!services.has(p.service)) services.set(p.service, []);
    services.get(p.service).push(p);
  }
  const out = [h('h1', {}, 'Sidecars'),
    h('p', { class: 'muted' }, `${proxies.proxies.filter((p) => p.connected).length} connected of `
      + `${proxies.proxies.length} known; the current flags version is ${flags.version}.`)];
  if (!services.size) out.push(h('p', {}, 'No sidecar has connected yet.'));
  for (const [service, list] of [...services.entries()].sort()) {
    const rows = list.map((p) => [
      p.proxy_id,
      stream(p),
      p.flags_version === flags.version ? `${p.flags_version} (current)` : h('strong', {}, `${p.flags_version} (behind)`),
      p.last_report_ms ? [time(p.last_report_ms), ` (${duration(now - p.last_report_ms)} ago)`] : 'none yet',
      p.connected ? duration(now - p.connected_ms) : '–',
      p.last_seq === undefined ? '–' : String(p.last_seq),
      p.replica || '–',
    ]);
    out.push(h('h2', {}, `Service ${service}`),
      table(`Sidecars of ${service}`, ['Sidecar', 'Stream', 'Flags version', 'Last report', 'Connected for',
        'Last report sequence', 'Replica'], rows, { class: 'sidecars' }));
  }
  return out;
}

export async function sidecarsPage(main) {
  document.title = 'Sidecars · Rampart';
  fill(main, await load());
  main.dataset.ready = 'sidecars';
  return every(2000, async () => {
    const next = await load();
    if (!main.contains(document.activeElement) || document.activeElement === main) fill(main, next);
  });
}
