// The Ramps page: active ramps first (where each stands and its latest decision in words), then the
// history (outcome, duration, who started it, the final reason). Refreshed every 2 s.

import { get, seg } from '/console/api.js';
import { badge, duration, every, fill, h, table, time } from '/console/ui.js';

/** Finished ramps listed (the newest). */
const HISTORY = 500;

function link(r) {
  return h('a', { href: `#/ramps/${seg(r.flag)}?id=${r.id}` }, r.flag);
}

function decision(d) {
  if (!d) return h('span', { class: 'muted' }, 'waiting for the first decision');
  return h('span', {}, badge(d.action), ' ', d.reason);
}

function activeRows(list, now) {
  return list.map((r) => [
    link(r),
    r.treatment,
    badge(r.state),
    `${r.step} of ${r.steps} · ${r.percent}%`,
    duration(now - r.step_started_ms),
    decision(r.latest),
  ]);
}

function historyRows(list) {
  return list.map((r) => [
    link(r),
    r.treatment,
    badge(r.state),
    time(r.started_ms),
    duration((r.finished_ms || r.started_ms) - r.started_ms),
    r.started_by || '–',
    r.change_id || '–',
    r.latest ? r.latest.reason : '–',
  ]);
}

function draw(main, data) {
  const active = data.ramps.filter((r) => r.state === 'running' || r.state === 'paused').reverse();
  const done = data.ramps.filter((r) => r.state !== 'running' && r.state !== 'paused').reverse();
  fill(main,
    h('h1', {}, 'Ramps'),
    h('p', { class: 'muted' }, 'Every ramp the control plane runs: the engine compares the treatment with the '
      + 'concurrent control each second and advances, holds, pauses or rolls back.'),
    h('h2', {}, `Active (${active.length})`),
    table('Active ramps', ['Flag', 'Treatment', 'State', 'Step', 'Time in step', 'Latest decision'],
      activeRows(active, data.now_ms), { id: 'active-ramps' }),
    h('h2', {}, `History (${done.length})`),
    table('Finished ramps, newest first',
      ['Flag', 'Treatment', 'Outcome', 'Started', 'Duration', 'Started by', 'Change', 'Final decision'],
      historyRows(done), { id: 'ramp-history' }));
}

export async function rampsPage(main) {
  document.title = 'Ramps · Rampart';
  const load = () => get(`/api/v1/ramps?limit=${HISTORY}`);
  draw(main, await load());
  performance.mark('rampart:ramps-rendered');
  main.dataset.ready = 'ramps';
  return every(2000, async () => {
    const data = await load();
    // Keep the reader's place: scroll position, and focus on the same link.
    const y = window.scrollY;
    const focused = main.contains(document.activeElement) ? document.activeElement.getAttribute('href') : null;
    draw(main, data);
    window.scrollTo(0, y);
    if (focused) {
      const again = main.querySelector(`a[href="${CSS.escape(focused)}"]`);
      if (again) again.focus({ preventScroll: true });
    }
  });
}
