// The console's only way to the control plane: the public JSON API, with the operator's bearer
// token (kept in this tab's sessionStorage) when the API has operators.

const KEY = 'rampart.token';

/** The API answered 401: the page asks for a token. */
export class AuthError extends Error {
  constructor(message) {
    super(message);
    this.name = 'AuthError';
  }
}

/** Any other refusal, with the API's short reason. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value.trim());
  else sessionStorage.removeItem(KEY);
}

async function call(method, path) {
  const headers = { Accept: 'application/json' };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, `the control plane cannot be reached (${e.message})`);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (resp.status === 401) throw new AuthError((body && body.error) || 'an operator token is required');
  if (!resp.ok) throw new ApiError(resp.status, (body && body.error) || `HTTP ${resp.status}`);
  return body;
}

export const get = (path) => call('GET', path);
export const post = (path) => call('POST', path);

/** `encodeURIComponent` for one path segment. */
export const seg = (s) => encodeURIComponent(s);
