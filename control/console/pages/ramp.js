// One ramp: where it stands, its latest decision in words, the percent over time with every
// decision marked, per-variant failing and slow shares (treatment against control) with the
// relative risk, the upper end of its confidence sequence and the thresholds the engine used, the
// decision log with its numbers, the events, and pause / resume / abort for operators. Live: new
// decisions are read every second (`/series?after_ms=`), without reloading the page.

import { get, post, seg } from '/console/api.js';
import { chart, colors } from '/console/charts.js';
import { announce, badge, confirmAction, duration, every, fill, h, num, share, table, time, when }
  from '/console/ui.js';

const MARKS = [
  ['ADVANCE', 'advance', 'ok'],
  ['COMPLETE', 'complete', 'ok'],
  ['ROLLBACK', 'rollback', 'bad'],
  ['PAUSE', 'pause', 'warn'],
];

const OPS = {
  pause: ['Pause', 'The engine stops deciding; the treatment stays at its percent until someone resumes or aborts.'],
  resume: ['Resume', 'The engine decides again; the dwell at this step starts over.'],
  abort: ['Abort', 'The treatment goes to 0% at every sidecar at once and the ramp ends. Trying again takes a new ramp.'],
};

/** Appends the columns of `more` to `pts`. */
function extend(pts, more) {
  for (const [k, v] of Object.entries(more)) {
    if (!pts[k]) pts[k] = [];
    pts[k].push(...v);
  }
}

const pct = (xs) => (xs || []).map((v) => (v === null ? null : v * 100));
const constant = (xs, v) => xs.map(() => v);

/** The charts' data from the series columns. */
function chartData(pts, s) {
  const x = pts.at_ms.map((t) => t / 1000);
  const marks = MARKS.map(([action]) => pts.action.map((a, i) => (a === action ? pts.percent[i] : null)));
  const delta = 1 + s.delta;
  return {
    percent: [x, pts.percent, ...marks],
    errors: [x, pct(pts.err_t), pct(pts.err_c)],
    errorsRisk: [x, pts.err_rr, pts.err_upper, constant(x, 1), constant(x, delta)],
    slow: [x, pct(pts.slow_t), pct(pts.slow_c)],
    slowRisk: [x, pts.slow_rr, pts.slow_upper, constant(x, 1), constant(x, delta)],
    evidence: [x, pts.err_e, pts.slow_e, constant(x, s.thresholds.errors ?? null),
      constant(x, s.thresholds.latency ?? null)],
  };
}

function riskSpec(c, title, id, data, delta) {
  return {
    title, id, data, yFormat: (v) => `${num(v)}×`, yLabel: 'treatment ÷ control',
    series: [
      { label: 'relative risk', stroke: c.treatment },
      { label: 'upper confidence bound', stroke: c.treatment, dash: [4, 4], width: 1 },
      { label: 'no difference (1×)', stroke: c.axis, width: 1 },
      { label: `advance below (1 + δ = ${num(delta)}×)`, stroke: c.threshold, dash: [8, 4], width: 1 },
    ],
    bands: [{ series: [2, 1], fill: c.band }],
  };
}

function buildCharts(el, data, s) {
  const c = colors();
  const ratePct = (v) => `${num(v, 3)}%`;
  const charts = {};
  charts.percent = chart(el, {
    title: 'Treatment share over time, every decision that changed something marked', id: 'chart-percent',
    data: data.percent, yFormat: (v) => `${num(v)}%`, yLabel: 'treatment %', yRange: [0, 100],
    series: [{ label: 'treatment %', stroke: c.percent, step: true, fill: c.band },
      ...MARKS.map(([, label, color]) => ({ label, stroke: c[color], markers: true,
        points: { show: true, size: 11, width: 2, fill: c[color], stroke: c[color] } }))],
  });
  charts.errors = chart(el, {
    title: 'Failing users over the ramp (5xx, upstream failures, timeouts), treatment against control',
    id: 'chart-errors', data: data.errors, yFormat: ratePct, yLabel: 'failing users',
    series: [{ label: 'treatment', stroke: c.treatment }, { label: 'control', stroke: c.control, dash: [6, 3] }],
  });
  charts.errorsRisk = chart(el, riskSpec(c,
    'Errors: relative risk and the upper end of its confidence sequence (shaded)', 'chart-errors-risk',
    data.errorsRisk, 1 + s.delta));
  charts.slow = chart(el, {
    title: 'Slow users over the ramp (slower than the step\'s threshold), treatment against control',
    id: 'chart-slow', data: data.slow, yFormat: ratePct, yLabel: 'slow users',
    series: [{ label: 'treatment', stroke: c.treatment }, { label: 'control', stroke: c.control, dash: [6, 3] }],
  });
  charts.slowRisk = chart(el, riskSpec(c,
    'Latency: relative risk of being slow and the upper end of its confidence sequence (shaded)',
    'chart-slow-risk', data.slowRisk, 1 + s.delta));
  charts.evidence = chart(el, {
    title: 'Evidence of harm (e-values, log scale): a rollback when one reaches its threshold', id: 'chart-evidence',
    data: data.evidence, log: true, yFormat: (v) => num(v, 1), yLabel: 'e-value',
    series: [
      { label: 'errors', stroke: c.treatment },
      { label: 'latency', stroke: c.control },
      { label: 'errors threshold (1 / α share)', stroke: c.treatment, dash: [8, 4], width: 1 },
      { label: 'latency threshold', stroke: c.control, dash: [8, 4], width: 1 },
    ],
  });
  return charts;
}

function guardText(g) {
  if (!g) return '–';
  return `T ${g.treatment_units} (${share(g.treatment_rate, 2)}) · C ${g.control_units} (${share(g.control_rate, 2)})`
    + ` · RR ${g.relative_risk === null ? 'n/a' : `${num(g.relative_risk)}×`}`
    + ` < ${g.relative_risk_upper === null ? '∞' : `${num(g.relative_risk_upper)}×`}`
    + ` · e ${num(g.harm_e, 1)} / ${num(g.harm_threshold, 0)}`;
}

function summary(st, now) {
  const rows = [
    ['State', h('span', { id: 'ramp-state' }, badge(st.state))],
    ['Step', `${st.step} of ${st.steps.length} (${st.steps.join(' → ')}%): treatment at ${st.percent}%`],
    ['Time in step', st.state === 'running' || st.state === 'paused' ? duration(now - st.step_started_ms) : '–'],
    ['Started', [time(st.started_ms), ` by ${st.started_by || 'unknown'}`]],
    ['Finished', st.finished_ms ? [time(st.finished_ms), ` after ${duration(st.finished_ms - st.started_ms)}`] : '–'],
    ['Change', st.change_id ? `${st.change_id}${st.commit_ms ? `, committed ${when(st.commit_ms)}` : ''}` : '–'],
    ['Policy', `α ${st.policy.alpha}, advance below ${1 + st.policy.delta}× after ${st.policy.min_dwell} and `
      + `${st.policy.min_samples} users per step${st.policy.error_budget !== null && st.policy.error_budget !== undefined
        ? `, or within ${st.policy.error_budget} excess failing users/h` : ''}`],
    ['Slow threshold', st.slow_threshold_us ? `${num(st.slow_threshold_us / 1000, 1)} ms` : 'not set yet'],
  ];
  if (st.rollback_ms) {
    rows.push(['Rollback', [time(st.rollback_ms), st.rollback_acked_ms
      ? `; every sidecar served it ${duration(st.rollback_acked_ms - st.rollback_ms)} later`
      : '; waiting for the sidecars to confirm']]);
    rows.push(['Bad-variant requests', st.exposed_requests ?? '–']);
  }
  if (st.interventions) rows.push(['Operator interventions', String(st.interventions)]);
  return h('dl', { class: 'facts', id: 'ramp-summary' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function planText(st) {
  const p = st.plan;
  if (!p) return null;
  const t = (x) => (x === null || x === undefined ? 'never at this traffic' : duration(x * 1000));
  return [h('h2', {}, 'Expected at the observed traffic'),
    h('p', {}, `${num(p.units_per_second, 1)} users/s, ${share(p.control_failing, 3)} of control users failing: `
      + `a 2× error regression would roll back in about ${t(p.detect_2x_errors_s)}, a 2× latency regression in `
      + `${t(p.detect_2x_latency_s)}; a treatment as good as the control reaches 100% in about ${t(p.to_full_s)}.`)];
}

function latest(st) {
  const ds = st.decisions || [];
  const d = ds[ds.length - 1];
  if (!d) return h('p', { class: 'muted' }, 'No decision yet: the engine decides every second once traffic flows.');
  return [h('p', { class: 'decision' }, badge(d.action), ' ', h('span', { id: 'latest-reason' }, d.reason)),
    h('p', { class: 'muted' }, when(d.at_ms), ` · step ${d.step} at ${d.percent}%`)];
}

function decisionLog(st) {
  const rows = [...(st.decisions || [])].reverse().map((d) => [
    time(d.at_ms), String(d.step), `${d.percent}%`, badge(d.action), d.reason,
    guardText(d.numbers && d.numbers.errors), guardText(d.numbers && d.numbers.latency),
    d.numbers ? `${d.numbers.treatment_units} / ${d.numbers.control_units}` : '–',
  ]);
  return table('Decisions: every one that changed something and the latest holds, newest first',
    ['Time', 'Step', 'Percent', 'Action', 'Reason', 'Errors (failing users)', 'Latency (slow users)',
      'Users T / C'], rows, { id: 'decision-log', class: 'log' });
}

function events(st) {
  return table('Events, oldest first', ['Time', 'Event', 'Detail'],
    (st.events || []).map((e) => [time(e.at_ms), e.kind.replaceAll('_', ' '), e.detail]), { id: 'events' });
}

function operations(st, session, flag, refresh) {
  const active = st.state === 'running' || st.state === 'paused';
  if (!active) return null;
  if (session.role !== 'operator' && session.role !== 'admin') {
    return h('p', { class: 'muted' }, 'Pausing, resuming and aborting need the operator role.');
  }
  const result = h('p', { class: 'op-result', role: 'status' });
  const button = (op) => {
    const [label, what] = OPS[op];
    const allowed = op === 'abort' || (op === 'pause' ? st.state === 'running' : st.state === 'paused');
    return h('button', { id: `op-${op}`, class: op === 'abort' ? 'danger' : '', disabled: !allowed,
      onclick: async () => {
        const ok = await confirmAction(`${label} the ramp of ${flag}?`, what, label);
        if (!ok) return;
        try {
          const after = await post(`/api/v1/ramps/${seg(flag)}/${op}`);
          fill(result, `${label}: the ramp is now ${after.state.replaceAll('_', ' ')} at ${after.percent}%.`);
          announce(`${flag}: ${after.state.replaceAll('_', ' ')}`);
          await refresh();
        } catch (e) {
          fill(result, h('span', { class: 'problem' }, `${label} refused: ${e.message}`));
        }
      } }, label);
  };
  return h('div', { class: 'ops', role: 'group', 'aria-label': 'Operate the ramp' },
    button('pause'), button('resume'), button('abort'), result);
}

export async function rampPage(main, flag, params, session) {
  const q = params.get('id') ? `?id=${encodeURIComponent(params.get('id'))}` : '';
  let st = await get(`/api/v1/ramps/${seg(flag)}${q}`);
  const base = `/api/v1/ramps/${seg(flag)}/series?id=${st.id}`;
  const s = await get(base);
  const pts = s.points;
  let lastMs = s.last_ms;
  document.title = `${flag} ramp · Rampart`;

  const head = h('div', { id: 'ramp-head' });
  const ops = h('div', { id: 'ramp-ops' });
  const latestBox = h('div', { id: 'latest-decision' });
  const plan = h('div', { id: 'plan' });
  const chartsBox = h('div', { class: 'charts' });
  const log = h('div', {});
  const ev = h('div', {});
  const status = h('div', {});
  fill(main,
    h('p', { class: 'crumbs' }, h('a', { href: '#/ramps' }, 'Ramps'), ' / ', flag),
    h('h1', {}, `${flag} → ${st.treatment}`, h('span', { class: 'muted' }, ` (ramp ${st.id}, control ${st.control})`)),
    status, head, ops,
    h('section', { 'aria-labelledby': 'latest-h' }, h('h2', { id: 'latest-h' }, 'Latest decision'), latestBox),
    plan,
    h('section', { 'aria-labelledby': 'charts-h' }, h('h2', { id: 'charts-h' }, 'Evidence over time'),
      h('p', { class: 'muted', id: 'series-note' }), chartsBox),
    h('section', { 'aria-labelledby': 'log-h' }, h('h2', { id: 'log-h' }, 'Decision log'), log),
    h('section', { 'aria-labelledby': 'ev-h' }, h('h2', { id: 'ev-h' }, 'Events'), ev));

  const note = () => fill(document.getElementById('series-note'),
    `Shares and relative risks are over the ramp so far, as the engine saw them at each tick `
    + `(${pts.at_ms.length} ticks shown${s.total > s.kept ? `, every n-th hold of ${s.total} kept` : ''}). `
    + 'The shaded band runs from the estimate to the upper end of the confidence sequence the engine tests: '
    + 'the treatment advances once that end is under 1 + δ, and rolls back when the evidence of harm reaches its threshold.');

  // Parts with focusable controls are redrawn only when they change, so keyboard focus stays put.
  let drawn = {};
  const once = (key, value, fn) => {
    if (drawn[key] !== value) {
      drawn[key] = value;
      fn();
    }
  };
  const draw = () => {
    fill(head, summary(st, Date.now()));
    once('ops', st.state, () => fill(ops, operations(st, session, flag, refresh)));
    fill(latestBox, latest(st));
    fill(plan, planText(st));
    const ds = st.decisions || [];
    once('log', `${ds.length}:${ds.length ? ds[ds.length - 1].at_ms : 0}`, () => fill(log, decisionLog(st)));
    once('events', (st.events || []).length, () => fill(ev, events(st)));
  };
  let charts = null;
  const decisive = (x) => (x.decisions || []).filter((d) => d.action !== 'HOLD').length;

  async function refresh() {
    const more = await get(lastMs === null ? base : `${base}&after_ms=${lastMs}`);
    if (more.kept > 0) {
      extend(pts, more.points);
      lastMs = more.last_ms;
      s.thresholds = more.thresholds;
    }
    const before = st;
    st = await get(`/api/v1/ramps/${seg(flag)}?id=${st.id}`);
    if (st.state !== before.state || decisive(st) !== decisive(before)) {
      const d = (st.decisions || []).filter((x) => x.action !== 'HOLD').pop();
      announce(`${flag}: ${st.state.replaceAll('_', ' ')} at ${st.percent}%${d ? `. ${d.action}: ${d.reason}` : ''}`);
    }
    draw();
    if (more.kept > 0 && charts) {
      const data = chartData(pts, s);
      for (const [k, c] of Object.entries(charts)) c.setData(data[k]);
      note();
    }
  }

  draw();
  note();
  charts = buildCharts(chartsBox, chartData(pts, s), s);
  main.dataset.ready = 'ramp';
  return every(1000, refresh, status);
}
