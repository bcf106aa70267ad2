// The console's router: `#/ramps`, `#/ramps/{flag}?id=N`, `#/flags`, `#/flags/{key}`,
// `#/sidecars`, `#/dora?window=30d`. Each page renders into <main> and returns a function that
// stops its timers; a 401 from the API shows the token form instead.

import { AuthError, get, setToken, token } from '/console/api.js';
import { fill, h } from '/console/ui.js';
import { rampsPage } from '/console/pages/ramps.js';
import { rampPage } from '/console/pages/ramp.js';
import { flagsPage, flagPage } from '/console/pages/flags.js';
import { sidecarsPage } from '/console/pages/sidecars.js';
import { doraPage } from '/console/pages/dora.js';

const main = document.getElementById('main');
let stop = null;
/** The caller's role (`viewer`, `operator`, `admin`), from `/api/v1/whoami`. */
export const session = { role: null, name: null, auth: false };

function route() {
  const hash = location.hash.replace(/^#/, '') || '/ramps';
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params };
}

async function who() {
  const box = document.getElementById('who');
  try {
    const w = await get('/api/v1/whoami');
    Object.assign(session, w);
    fill(box, w.auth ? [`${w.name} (${w.role})`, ' ', h('button', { class: 'link', onclick: signOut }, 'Sign out')]
      : h('span', { class: 'muted', title: 'The API has no operators: anyone who reaches it may operate.' },
        'open API'));
  } catch (e) {
    fill(box);
    if (!(e instanceof AuthError)) throw e;
  }
}

function signOut() {
  setToken(null);
  Object.assign(session, { role: null, name: null, auth: false });
  render();
}

function signIn(message) {
  delete main.dataset.ready;
  document.title = 'Sign in · Rampart';
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true,
    spellcheck: 'false', 'aria-describedby': 'token-help' });
  const form = h('form', { class: 'signin', onsubmit: (ev) => {
    ev.preventDefault();
    setToken(input.value);
    render();
  } },
  h('h1', {}, 'Sign in'),
  message ? h('p', { class: 'problem', role: 'alert' }, message) : null,
  h('label', { for: 'token' }, 'Operator token'),
  input,
  h('p', { id: 'token-help', class: 'muted' },
    'The token of your line in the control plane\'s api_tokens_file. It is kept in this tab only '
    + '(sessionStorage) and sent to this control plane\'s API.'),
  h('button', { type: 'submit' }, 'Sign in'));
  fill(main, form);
  input.focus();
}

async function render() {
  if (stop) stop();
  stop = null;
  // `data-ready` names the page once it has rendered: cleared first, so it never names a page
  // from before this render (a sign-in form, a reload in progress).
  delete main.dataset.ready;
  const { parts, params } = route();
  const section = parts[0] || 'ramps';
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    if (session.role === null) await who();
    const pages = {
      ramps: () => (parts[1] ? rampPage(main, parts[1], params, session) : rampsPage(main)),
      flags: () => (parts[1] ? flagPage(main, parts[1]) : flagsPage(main)),
      sidecars: () => sidecarsPage(main),
      dora: () => doraPage(main, params),
    };
    const page = pages[section];
    if (!page) {
      fill(main, h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/ramps' }, 'Ramps')));
      return;
    }
    stop = await page();
  } catch (e) {
    if (e instanceof AuthError) {
      authFailed(e);
      return;
    }
    fill(main, h('h1', {}, 'Error'), h('p', { class: 'problem', role: 'alert' }, e.message));
  }
}

/** A 401: a token that was sent is refused (and forgotten); without one, the form asks for it. */
function authFailed(e) {
  if (stop) stop();
  stop = null;
  const had = token();
  setToken(null);
  session.role = null;
  signIn(had ? `That token was refused: ${e.message}.` : null);
}

// A page's periodic read got a 401 (a token revoked meanwhile).
window.addEventListener('rampart:auth', (ev) => authFailed(ev.detail));
window.addEventListener('hashchange', () => {
  render();
  main.focus({ preventScroll: true });
});
render();
