// The hub's JSON API: the bearer token (sessionStorage only) and one fetch wrapper.

const KEY = 'agentcom.token';

export function getToken() {
  try {
    return sessionStorage.getItem(KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(token) {
  try {
    sessionStorage.setItem(KEY, token);
  } catch {
    /* storage unavailable: the token lives for this page only */
  }
  memToken = token;
}

export function clearToken() {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    /* nothing stored */
  }
  memToken = '';
}

let memToken = '';
function token() {
  return getToken() || memToken;
}

let unauthorized = () => {};
/** Called once per refused token (401). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}
export function notifyUnauthorized() {
  unauthorized();
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function authHeaders(extra) {
  return Object.assign({ Authorization: 'Bearer ' + token() }, extra || {});
}

/**
 * Calls the API and answers the parsed JSON body. Throws ApiError (status 0 for a network
 * failure); an AbortError passes through unchanged.
 */
export async function api(path, opts = {}) {
  const init = {
    method: opts.method || 'GET',
    headers: authHeaders({ Accept: 'application/json' }),
    cache: 'no-store',
    signal: opts.signal,
  };
  if (opts.body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'the hub cannot be reached');
  }
  let data = null;
  let text = '';
  try {
    text = await res.text();
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
  }
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (res.status === 401) {
    unauthorized();
    throw new ApiError(401, 'unauthenticated', 'the token was refused');
  }
  if (!res.ok) {
    const err = data && data.error;
    throw new ApiError(
      res.status,
      (err && err.code) || 'http_' + res.status,
      (err && err.message) || 'HTTP ' + res.status,
    );
  }
  return data && typeof data === 'object' ? data : {};
}

export const enc = encodeURIComponent;
