// The DORA page: over a chosen window (7, 30 or 90 days), the four DORA metrics with their trend by
// week, time to detect and bad-variant requests (in all and per rollback), and the
// developer-confidence figures. The figures are `GET /api/v1/dora` exactly as `rampart dora`
// prints them; the trend and rollbacks come from `GET /api/v1/dora/weekly`.

import { get, seg } from '/console/api.js';
import { chart, colors } from '/console/charts.js';
import { day, duration, fill, h, num, seconds, share, table, time } from '/console/ui.js';

const SPANS = ['7d', '30d', '90d'];

/** Seconds as the CLI prints them, with a readable duration beside long ones. */
function secs(s) {
  if (s === null || s === undefined) return '–';
  return s >= 60 ? `${seconds(s)} (${duration(s * 1000)})` : seconds(s);
}

function card(id, label, value, raw, note) {
  return h('section', { class: 'card', 'aria-labelledby': `${id}-h` },
    h('h2', { id: `${id}-h` }, label),
    h('p', { class: 'figure', id, 'data-value': JSON.stringify(raw ?? null) }, value),
    note ? h('p', { class: 'muted' }, note) : null);
}

function trend(el, id, title, weeks, pick, fmt, stroke) {
  const x = weeks.map((w) => w.end_ms / 1000);
  chart(el, {
    id, title, height: 140, data: [x, weeks.map(pick)], yFormat: fmt,
    series: [{ label: title, stroke, points: { show: true, size: 7 }, spanGaps: false }],
  });
}

export async function doraPage(main, params) {
  const span = SPANS.includes(params.get('window')) ? params.get('window') : '30d';
  document.title = `DORA (${span}) · Rampart`;
  const [d, weekly] = await Promise.all([get(`/api/v1/dora?window=${span}`),
    get(`/api/v1/dora/weekly?window=${span}`)]);
  const choose = h('fieldset', { class: 'window' }, h('legend', {}, 'Window'),
    SPANS.map((w) => h('label', {}, h('input', { type: 'radio', name: 'window', value: w, checked: w === span,
      onchange: () => { location.hash = `#/dora?window=${w}`; } }), ` last ${w.replace('d', ' days')}`)));
  const finished = d.completed + d.rolled_back;
  const cards = h('div', { class: 'cards', id: 'dora-figures' },
    card('dora-frequency', 'Deployment frequency', `${d.deployment_frequency_per_day.toFixed(2)} per day`,
      d.deployment_frequency_per_day, `${d.completed} completed; ${d.deployments} deployments started`),
    card('dora-lead', 'Lead time for changes', secs(d.lead_time_s), d.lead_time_s, 'median, commit → 100%'),
    card('dora-cfr', 'Change failure rate', share(d.change_failure_rate), d.change_failure_rate,
      `${d.rolled_back} rolled back of ${finished} finished`),
    card('dora-recovery', 'Recovery time', secs(d.recovery_time_s), d.recovery_time_s,
      'median, first exposure → rollback served by every sidecar'),
    card('dora-detect', 'Time to detect', secs(d.time_to_detect_s), d.time_to_detect_s,
      'median, first exposure → rollback decision'),
    card('dora-bad', 'Bad-variant requests', String(d.bad_variant_requests), d.bad_variant_requests,
      'served by rolled-back treatments before the rollback took effect'));
  const k = d.confidence;
  const confidence = h('div', { class: 'cards', id: 'confidence-figures' },
    card('dora-completion', 'Completion rate', share(k.completion_rate), k.completion_rate,
      'completed ÷ finished (completed, rolled back, aborted)'),
    card('dora-abandon', 'Abandon rate', share(k.abandon_rate), k.abandon_rate, `${d.aborted} aborted by an operator`),
    card('dora-interventions', 'Human interventions per ramp', num(k.interventions_per_ramp),
      k.interventions_per_ramp, 'operator pauses, resumes, aborts and edits of the ramp\'s flag'),
    card('dora-no-touch', 'No human touch', share(k.untouched_share), k.untouched_share,
      'ramps finished with no human intervention'),
    card('dora-time-to-100', 'Time to 100%', secs(k.median_time_to_100_s), k.median_time_to_100_s,
      'median, start → 100%'),
    card('dora-rollbacks-by', 'Rollbacks', `${k.automatic_rollbacks} automatic, ${k.human_rollbacks} by people`,
      k.automatic_rollbacks, 'by the engine / aborted by a person after exposure'));
  const c = colors();
  const charts = h('div', { class: 'trends' });
  const weeks = weekly.weeks;
  const weekRows = [...weeks].reverse().map((w) => [
    day(w.end_ms), String(w.deployments), String(w.completed), String(w.rolled_back),
    `${w.deployment_frequency_per_day.toFixed(2)}/day`, secs(w.lead_time_s), share(w.change_failure_rate),
    secs(w.recovery_time_s), secs(w.time_to_detect_s), String(w.bad_variant_requests)]);
  const rollbacks = weekly.rollbacks.map((r) => [
    h('a', { href: `#/ramps/${seg(r.flag)}?id=${r.id}` }, `${r.flag} → ${r.treatment}`),
    r.change_id || '–', r.rollback_ms ? time(r.rollback_ms) : '–', seconds(r.time_to_detect_s),
    seconds(r.recovery_time_s), String(r.bad_variant_requests), r.reason || '–']);
  fill(main,
    h('h1', {}, 'DORA'),
    h('p', { class: 'muted' }, 'Every ramp is a deployment. The same figures as ',
      h('code', {}, `rampart dora --window ${span}`), '.'),
    choose,
    cards,
    h('h2', {}, 'Trend by week'),
    charts,
    table('Weeks, newest first (each the ramps that started or finished in it)',
      ['Week ending', 'Started', 'Completed', 'Rolled back', 'Frequency', 'Lead time', 'Change failure rate',
        'Recovery', 'Time to detect', 'Bad-variant requests'], weekRows, { id: 'dora-weeks' }),
    h('h2', {}, 'Developer confidence'),
    confidence,
    h('h2', {}, 'Rollbacks'),
    table(`Rollbacks in the last ${span.replace('d', ' days')}, newest first`,
      ['Change', 'Id', 'Rolled back', 'Time to detect', 'Recovery', 'Bad-variant requests', 'Reason'], rollbacks,
      { id: 'dora-rollbacks' }));
  trend(charts, 'trend-frequency', 'Deployment frequency (per day)', weeks, (w) => w.deployment_frequency_per_day,
    (v) => num(v), c.control);
  trend(charts, 'trend-lead', 'Lead time (median)', weeks, (w) => w.lead_time_s,
    (v) => duration(v * 1000), c.control);
  trend(charts, 'trend-cfr', 'Change failure rate', weeks, (w) => w.change_failure_rate,
    (v) => share(v, 0), c.treatment);
  trend(charts, 'trend-recovery', 'Recovery time (median)', weeks, (w) => w.recovery_time_s,
    (v) => duration(v * 1000), c.treatment);
  main.dataset.ready = 'dora';
  return null;
}
