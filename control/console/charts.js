// Charts over the vendored uPlot (window.uPlot): time on x (seconds), the given series on y, sized
// to their container (and resized with it). Each chart is a <figure> with a caption; the numbers
// are also in the page's tables, the accessible form of the same data.

import { h } from '/console/ui.js';

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/** The palette, from the stylesheet (light or dark). */
export function colors() {
  return {
    treatment: css('--treatment'), control: css('--control'), band: css('--band'),
    threshold: css('--threshold'), ok: css('--ok'), bad: css('--bad'), warn: css('--warn'),
    axis: css('--muted'), grid: css('--grid'), percent: css('--percent'),
  };
}

/**
 * A chart in `parent`. `spec`: {title, id, series: [{label, stroke, dash, width, step, points,
 * fill, scale}], data: [xs, ...ys], log (y on a log scale), yLabel, yFormat, bands, height}.
 * Returns {plot, setData(data)}.
 */
export function chart(parent, spec) {
  const box = h('div', { class: 'chart-box' });
  const fig = h('figure', { class: 'chart', id: spec.id },
    h('figcaption', {}, spec.title), box);
  parent.append(fig);
  const c = colors();
  const fmt = spec.yFormat || ((v) => v);
  const series = [{ label: 'time', value: (u, v) => (v === null ? '–' : new Date(v * 1000).toLocaleTimeString()) }];
  for (const s of spec.series) {
    const one = {
      label: s.label,
      stroke: s.stroke,
      width: s.width || 2,
      dash: s.dash,
      fill: s.fill,
      spanGaps: s.spanGaps !== false,
      value: (u, v) => (v === null || v === undefined ? '–' : fmt(v)),
      points: s.points || { show: false },
    };
    if (s.step) one.paths = uPlot.paths.stepped({ align: 1 });
    if (s.markers) one.paths = () => null;
    series.push(one);
  }
  const width = () => Math.max(260, box.clientWidth || parent.clientWidth || 600);
  const opts = {
    width: width(),
    height: spec.height || 220,
    series,
    bands: spec.bands,
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true }, y: spec.log ? { distr: 3 } : { range: spec.yRange } },
    axes: [
      { stroke: c.axis, grid: { stroke: c.grid }, ticks: { stroke: c.grid } },
      { stroke: c.axis, grid: { stroke: c.grid }, ticks: { stroke: c.grid }, label: spec.yLabel,
        size: 64, values: (u, vals) => vals.map((v) => (v === null ? '' : fmt(v))) },
    ],
  };
  const plot = new uPlot(opts, spec.data, box);
  const ro = new ResizeObserver(() => plot.setSize({ width: width(), height: opts.height }));
  ro.observe(box);
  return { plot, setData: (d) => plot.setData(d) };
}
