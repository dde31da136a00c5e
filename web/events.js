// Server-sent events from /v1/events, read with fetch() so the request
// carries the bearer token (EventSource cannot send one).

import { raw } from './api.js'

/** Parses an event stream's text: calls onEvent(name, data) per event. */
export function parser(onEvent) {
  let buffer = ''
  return (chunk) => {
    buffer += chunk
    let cut
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut)
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, '')
      let name = 'message'
      const data = []
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const field = colon < 0 ? line : line.slice(0, colon)
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (field === 'event') name = value
        else if (field === 'data') data.push(value)
      }
      if (data.length) onEvent(name, data.join('\n'))
    }
  }
}

/**
 * Follows the videos `ids` until the server ends the stream or `signal`
 * aborts; `onEvent(name, json)` for each event. Resolves the `end` event's
 * reason ('settled', 'expired'), or null if the stream just closed.
 */
export async function follow(ids, onEvent, signal) {
  const path = `/v1/events?videos=${ids.map(encodeURIComponent).join(',')}`
  const res = await raw('GET', path, { headers: { Accept: 'text/event-stream' }, signal })
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
  let reason = null
  const feed = parser((name, text) => {
    let data
    try {
      data = JSON.parse(text)
    } catch {
      return
    }
    if (name === 'end') reason = data.reason
    else onEvent(name, data)
  })
  try {
    while (true) {
      const { value, done } = await reader.read()
      if (done) break
      feed(value)
    }
  } finally {
    reader.releaseLock()
  }
  return reason
}
