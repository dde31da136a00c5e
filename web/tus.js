// Resumable uploads over tus 1.0.0 (/v1/uploads/), written for this app.
// The upload's URL is kept in localStorage under the file's name, size
// and modification time (and the user), so choosing the same file again,
// after a reload or a lost connection, asks the server its offset (HEAD)
// and sends only the rest. Each PATCH is a chunk sent with XMLHttpRequest,
// whose upload progress events move the bar.

import { accessToken, ApiError } from './api.js'

const TUS = { 'Tus-Resumable': '1.0.0' }
const MiB = 1024 * 1024
const RETRIES = 5

/** Chunks of a twentieth of the file, 1 to 16 MiB: the bar moves, and a cut loses little. */
export function chunkSize(size) {
  return Math.min(16 * MiB, Math.max(1 * MiB, Math.ceil(size / 20)))
}

function storageKey(userId, file) {
  return `streamgate.tus:${userId}:${file.name}:${file.size}:${file.lastModified}`
}

function b64(text) {
  const bytes = new TextEncoder().encode(text)
  let bin = ''
  for (const b of bytes) bin += String.fromCharCode(b)
  return btoa(bin)
}

function metadata(file, title) {
  const type = file.type && file.type.startsWith('video/') ? file.type : 'video/mp4'
  const pairs = [['filename', file.name], ['filetype', type]]
  if (title) pairs.push(['title', title])
  return pairs.map(([k, v]) => `${k} ${b64(v)}`).join(',')
}

async function fetchTus(method, url, headers = {}) {
  let token = await accessToken()
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(url, {
      method,
      headers: { ...TUS, ...headers, Authorization: `Bearer ${token}` },
    })
    if (res.status !== 401 || attempt > 0) return res
    token = await accessToken(token)
  }
}

async function failure(res) {
  let message = `${res.status} ${res.statusText}`
  try {
    const body = await res.json()
    if (body && body.error) message = body.error
  } catch {
    // The status line.
  }
  return new ApiError(res.status, message)
}

/** The server's offset of the upload at `url`, or null if it is gone. */
async function offsetOf(url) {
  const res = await fetchTus('HEAD', url)
  if (res.status === 404 || res.status === 410) return null
  if (!res.ok) throw new ApiError(res.status, `the upload's offset: ${res.status}`)
  return {
    offset: Number(res.headers.get('Upload-Offset')),
    videoId: res.headers.get('StreamGate-Video-Id'),
  }
}

/** One PATCH of `blob` at `offset`; resolves {status, offset, videoId}. */
function patch(url, token, offset, blob, onSent, signal) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest()
    xhr.open('PATCH', url)
    xhr.setRequestHeader('Tus-Resumable', '1.0.0')
    xhr.setRequestHeader('Authorization', `Bearer ${token}`)
    xhr.setRequestHeader('Upload-Offset', String(offset))
    xhr.setRequestHeader('Content-Type', 'application/offset+octet-stream')
    xhr.upload.onprogress = (e) => onSent(e.loaded)
    xhr.onload = () =>
      resolve({
        status: xhr.status,
        offset: Number(xhr.getResponseHeader('Upload-Offset')),
        videoId: xhr.getResponseHeader('StreamGate-Video-Id'),
        text: xhr.responseText,
      })
    xhr.onerror = () => reject(new ApiError(0, 'the connection failed'))
    xhr.onabort = () => reject(new DOMException('cancelled', 'AbortError'))
    if (signal) signal.addEventListener('abort', () => xhr.abort(), { once: true })
    xhr.send(blob)
  })
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/**
 * Uploads `file` (resuming an upload of the same file if the server still
 * has it); `onProgress(sent, total, resumedFrom)` as bytes go. Resolves
 * the video id.
 */
export async function upload(file, { userId, title, onProgress = () => {}, signal } = {}) {
  if (file.size === 0) throw new ApiError(400, 'the file is empty')
  const key = storageKey(userId, file)
  let url = localStorage.getItem(key)
  let offset = 0
  if (url) {
    const known = await offsetOf(url)
    if (known === null) {
      localStorage.removeItem(key)
      url = null
    } else if (known.videoId) {
      localStorage.removeItem(key)
      onProgress(file.size, file.size, file.size)
      return known.videoId
    } else {
      offset = known.offset
    }
  }
  if (!url) {
    const res = await fetchTus('POST', '/v1/uploads/', {
      'Upload-Length': String(file.size),
      'Upload-Metadata': metadata(file, title),
    })
    if (res.status !== 201) throw await failure(res)
    url = new URL(res.headers.get('Location'), location.href).pathname
    localStorage.setItem(key, url)
  }
  const resumedFrom = offset
  onProgress(offset, file.size, resumedFrom)
  const size = chunkSize(file.size)
  let failures = 0
  let stale
  while (true) {
    if (signal && signal.aborted) throw new DOMException('cancelled', 'AbortError')
    const end = Math.min(file.size, offset + size)
    let res
    try {
      const token = await accessToken(stale)
      stale = undefined
      res = await patch(url, token, offset, file.slice(offset, end), (sent) => onProgress(offset + sent, file.size, resumedFrom), signal)
    } catch (e) {
      if (e.name === 'AbortError' || ++failures > RETRIES) throw e
      await sleep(500 * 2 ** failures)
      const known = await offsetOf(url)
      if (known === null) {
        localStorage.removeItem(key)
        throw new ApiError(410, 'the upload expired on the server: choose the file again')
      }
      offset = known.offset
      continue
    }
    if (res.status === 401 && !stale) {
      stale = await accessToken()
      continue
    }
    if (res.status === 409 && Number.isFinite(res.offset)) {
      offset = res.offset // The server has a different offset: go on from it.
      continue
    }
    if (res.status !== 204) {
      let message = `${res.status}`
      try {
        message = JSON.parse(res.text).error || message
      } catch {
        // The status.
      }
      if (res.status >= 500 && ++failures <= RETRIES) {
        await sleep(500 * 2 ** failures)
        continue
      }
      throw new ApiError(res.status, message)
    }
    failures = 0
    offset = res.offset
    onProgress(offset, file.size, resumedFrom)
    if (offset >= file.size) {
      let videoId = res.videoId
      if (!videoId) videoId = (await offsetOf(url))?.videoId
      localStorage.removeItem(key)
      return videoId
    }
  }
}
