// Small DOM helpers: elements built with text nodes only (no HTML strings, so no data from the API
// can become markup), formats shared by the pages, the live announcer and the confirmation dialog.

/** `h('a', {href: '#'}, 'text', child)`: attributes (`class`, `on*` handlers, `data-*`, boolean
 *  `true`), children as strings, nodes, arrays, or null (skipped). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table with a caption and column headers; `rows` are arrays of cells (strings or nodes). */
export function table(caption, headers, rows, attrs) {
  return h('div', { class: 'scroll', tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', attrs || {},
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.length
        ? rows.map((r) => h('tr', {}, r.map((c, i) => (i === 0 ? h('th', { scope: 'row' }, c) : h('td', {}, c)))))
        : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'None.')))));
}

/** "3 h 4 min", "12 s", "850 ms". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  const s = ms / 1000;
  if (s < 1) return `${Math.round(ms)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr} h ${m % 60} min`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

/** Seconds as the CLI prints them: "12.3 s", or "–". */
export function seconds(s) {
  return s === null || s === undefined ? '–' : `${Number(s).toFixed(1)} s`;
}

/** A share (0..1) as the CLI prints it: "12.5%", or "–". */
export function share(x, digits = 1) {
  return x === null || x === undefined ? '–' : `${(x * 100).toFixed(digits)}%`;
}

/** Local date and time, to the second. */
export function when(ms) {
  if (!ms) return '–';
  const d = new Date(ms);
  return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** A <time>: the clock alone for today, else the date and clock; the full moment in its title. */
export function time(ms) {
  const d = new Date(ms);
  const today = d.toDateString() === new Date().toDateString();
  const short = today
    ? d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  return h('time', { datetime: d.toISOString(), title: when(ms) }, short);
}

/** A date without the time of day. */
export function day(ms) {
  return new Date(ms).toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
}

/** A number with up to `digits` decimals, or "–". */
export function num(x, digits = 2) {
  if (x === null || x === undefined) return '–';
  if (Math.abs(x) >= 1e6) return Number(x).toExponential(1);
  return Number(x).toFixed(digits).replace(/\.?0+$/, '') || '0';
}

/** A state or decision as a labelled badge (colour is never the only cue: the word is there). */
export function badge(word) {
  const text = String(word || '–').replaceAll('_', ' ');
  return h('span', { class: `badge b-${String(word || '').toLowerCase()}` }, text);
}

/** Says `text` to screen readers (the page's polite live region). */
export function announce(text) {
  const el = document.getElementById('announce');
  el.textContent = '';
  // A fresh text node after a tick is announced even when it repeats.
  setTimeout(() => { el.textContent = text; }, 50);
}

/** Asks to confirm in a modal dialog (Escape or Cancel: no); resolves true when confirmed. */
export function confirmAction(title, text, label) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = label;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      if (opener && opener.focus) opener.focus();
      resolve(dialog.returnValue === 'ok');
    }, { once: true });
    dialog.returnValue = '';
    dialog.showModal();
  });
}

/** An error box for a failed read. */
export function problem(e) {
  return h('p', { class: 'problem', role: 'alert' }, `Could not load: ${e.message}`);
}

/** Runs `fn` every `ms` from now on while the tab is visible (one run at a time); returns the
 *  stop function. A 401 hands over to the sign-in form; other failures show in `status`. */
export function every(ms, fn, status) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
        if (status) fill(status);
      } catch (e) {
        if (e.name === 'AuthError') {
          stopped = true;
          window.dispatchEvent(new CustomEvent('rampart:auth', { detail: e }));
          return;
        }
        if (status) fill(status, problem(e));
      }
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  timer = setTimeout(run, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
