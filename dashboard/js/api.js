// The admin API, called with the signed-in admin's ID token. The page has no privileges of its
// own: what the API refuses, the page cannot show.

/** An answer other than 2xx, in the API's error shape: `{"error": {"code", "message"}}`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * A client of the API. `session()` is the current session ({ token(forceRefresh) }, or null);
 * `onExpired(error)` is told when a token is refused even after a refresh, `onForbidden(error)`
 * when the caller is not an admin.
 */
export function createApi({ session, onExpired, onForbidden }) {
  async function send(method, path, { query, body, headers = {} }, forceRefresh) {
    const current = session();
    if (!current) throw new ApiError(401, 'unauthenticated', 'Not signed in.');
    let token;
    try {
      token = await current.token(forceRefresh);
    } catch {
      // The SDK could not renew the sign-in (revoked, or the account is gone).
      const error = new ApiError(401, 'unauthenticated', 'Your sign-in could not be renewed.');
      onExpired(error);
      throw error;
    }
    const init = {
      method,
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json', ...headers },
      cache: 'no-store',
    };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    try {
      return await fetch(withQuery(path, query), init);
    } catch {
      throw new ApiError(0, 'network', 'The service did not answer. Check the connection and try again.');
    }
  }

  async function request(method, path, options = {}) {
    let response = await send(method, path, options, false);
    // An ID token expires after an hour: get a fresh one and try once more.
    if (response.status === 401 && session()?.refreshable) {
      response = await send(method, path, options, true);
    }
    if (response.ok) return response.json();
    const error = await errorOf(response);
    if (response.status === 401) onExpired(error);
    if (response.status === 403) onForbidden(error);
    throw error;
  }

  return {
    get: (path, query) => request('GET', path, { query }),
    put: (path, body, headers) => request('PUT', path, { body, headers }),
    post: (path, body, headers) => request('POST', path, { body, headers }),
    delete: (path, query, headers) => request('DELETE', path, { query, headers }),
  };
}

/** `path?query`, leaving out empty values. */
function withQuery(path, query = {}) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `${path}?${text}` : path;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not the API's JSON: a proxy's page, say. The status still tells.
  }
  const error = body?.error;
  return new ApiError(
    response.status,
    error?.code ?? 'http_error',
    error?.message ?? `The service answered ${response.status} ${response.statusText}.`,
  );
}

/** A fresh key for one change, so that its retry counts once. */
export function idempotencyKey() {
  const random = crypto.getRandomValues(new Uint8Array(16));
  const hex = Array.from(random, (byte) => byte.toString(16).padStart(2, '0')).join('');
  return { 'Idempotency-Key': `dashboard-${hex}` };
}
