// Building the page: a small element helper (text is always set as text,
// never parsed as HTML) and how states, sizes and times read.

/** An element: h('a', {href: '#/'}, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (k === 'dataset') Object.assign(el.dataset, v)
    else if (k in el && typeof v !== 'string') el[k] = v
    else el.setAttribute(k, v === true ? '' : v)
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue
    el.append(c instanceof Node ? c : String(c))
  }
  return el
}

/** Replaces `parent`'s children. */
export function replace(parent, ...children) {
  parent.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false))
}

/**
 * What the library shows of a video: {state, label, percent}. `job` is the
 * latest job update from the event stream, if any.
 */
export function shown(video, job) {
  switch (video.state) {
    case 'ready':
      return { state: 'ready', label: 'Ready' }
    case 'failed':
      return { state: 'failed', label: `Failed: ${video.failure_reason || 'unknown reason'}` }
  }
  if (job) {
    switch (job.state) {
      case 'leased':
        return { state: 'transcoding', label: `Transcoding ${job.progress_percent} %`, percent: job.progress_percent }
      case 'succeeded':
        return { state: 'transcoding', label: 'Transcoding 100 %', percent: 100 }
      case 'failed':
        return { state: 'queued', label: `Retrying: ${job.message || 'the attempt failed'}` }
      case 'queued':
        return { state: 'queued', label: job.attempts > 0 ? `Queued (attempt ${job.attempts + 1})` : 'Queued' }
      case 'dead_letter':
        return { state: 'failed', label: `Failed: ${job.message || 'gave up'}` }
      case 'cancelled':
        return { state: 'failed', label: 'Cancelled' }
    }
  }
  if (video.state === 'transcoding') return { state: 'transcoding', label: 'Transcoding', percent: 0 }
  return { state: 'queued', label: 'Queued' }
}

export function settled(video) {
  return video.state === 'ready' || video.state === 'failed'
}

export function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024
    i++
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : '—'
}

export function duration(ms) {
  if (!ms) return '—'
  const s = Math.round(ms / 1000)
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`
}
