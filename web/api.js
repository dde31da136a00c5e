// The API client: the session (tokens in localStorage), requests with the
// bearer token, and a refresh (once, shared by concurrent requests) when
// the access token is about to expire or a request answers 401.

const KEY = 'streamgate.session'
let refreshing = null
const listeners = new Set()

export class ApiError extends Error {
  constructor(status, message) {
    super(message)
    this.status = status
  }
}

export function session() {
  try {
    return JSON.parse(localStorage.getItem(KEY)) || null
  } catch {
    return null
  }
}

function save(tokens) {
  const s = {
    user_id: tokens.user_id,
    access_token: tokens.access_token,
    refresh_token: tokens.refresh_token,
    access_expires_at_ms: tokens.access_expires_at_ms,
  }
  localStorage.setItem(KEY, JSON.stringify(s))
  listeners.forEach((f) => f(s))
}

export function clearSession() {
  localStorage.removeItem(KEY)
  listeners.forEach((f) => f(null))
}

/** Calls `f(session or null)` whenever the session changes. */
export function onSession(f) {
  listeners.add(f)
}

async function errorOf(res) {
  let message = `${res.status} ${res.statusText}`
  try {
    const body = await res.json()
    if (body && typeof body.error === 'string') message = body.error
  } catch {
    // Not JSON: the status line says it.
  }
  return new ApiError(res.status, message)
}

async function account(path, body) {
  const res = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  })
  if (!res.ok) throw await errorOf(res)
  const tokens = await res.json()
  save(tokens)
  return tokens
}

export function signUp(email, password, displayName) {
  const body = { email, password }
  if (displayName) body.display_name = displayName
  return account('/v1/auth/signup', body)
}

export function logIn(email, password) {
  return account('/v1/auth/login', { email, password })
}

export async function logOut() {
  const s = session()
  if (s) {
    try {
      await request('POST', '/v1/auth/logout', { json: { refresh_token: s.refresh_token } })
    } catch {
      // Signed out here whatever the server said.
    }
  }
  clearSession()
}

async function refresh(stale) {
  // Another tab may have refreshed already: its tokens are in storage.
  const now = session()
  if (now && now.access_token !== stale) return now
  if (!now) throw new ApiError(401, 'signed out')
  const res = await fetch('/v1/auth/refresh', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ refresh_token: now.refresh_token }),
  })
  if (!res.ok) {
    const e = await errorOf(res)
    if (res.status === 401) clearSession()
    throw e
  }
  const tokens = await res.json()
  save({ ...tokens, user_id: tokens.user_id || now.user_id })
  return session()
}

/** A current access token (refreshed when it has under 30 s left). */
export async function accessToken(stale) {
  let s = session()
  if (!s) throw new ApiError(401, 'sign in first')
  const expiring = s.access_expires_at_ms && s.access_expires_at_ms - Date.now() < 30_000
  if (stale === s.access_token || expiring) {
    refreshing ??= refresh(s.access_token).finally(() => {
      refreshing = null
    })
    s = await refreshing
  }
  return s.access_token
}

/**
 * A request with the bearer token; on 401 the token is refreshed and the
 * request sent once more. Returns the Response (ok), or throws ApiError.
 */
export async function raw(method, path, { json, headers = {}, body, signal } = {}) {
  let token = await accessToken()
  for (let attempt = 0; ; attempt++) {
    const h = { ...headers, Authorization: `Bearer ${token}` }
    let payload = body
    if (json !== undefined) {
      h['Content-Type'] = 'application/json'
      payload = JSON.stringify(json)
    }
    const res = await fetch(path, { method, headers: h, body: payload, signal })
    if (res.status === 401 && attempt === 0) {
      token = await accessToken(token)
      continue
    }
    if (!res.ok) throw await errorOf(res)
    return res
  }
}

/** `raw`, the body read as JSON (null for 204). */
export async function request(method, path, options) {
  const res = await raw(method, path, options)
  if (res.status === 204) return null
  return res.json()
}
