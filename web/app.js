// StreamGate's web app: sign up / log in, upload (tus, resumable), the
// library with live states (server-sent events), the player, rename and
// delete, and the platform's status. Routes are the URL's hash: #/ (the
// library), #/video/<id>, #/status.

import { ApiError, logIn, logOut, onSession, raw, request, session, signUp } from './api.js'
import { follow } from './events.js'
import { upload } from './tus.js'
import { bytes, duration, h, replace, settled, shown, when } from './views.js'

const main = document.getElementById('main')
const toastBox = document.getElementById('toast')
const logoutButton = document.getElementById('logout')
/** The page shown now: aborting it closes its streams and timers. */
let page = new AbortController()
/** The library on screen, if it is (uploads add to it when they finish). */
let library = null
let signedIn = Boolean(session())

function toast(text) {
  toastBox.textContent = text
  clearTimeout(toast.timer)
  toast.timer = setTimeout(() => {
    toastBox.textContent = ''
  }, 5000)
}

function heading(text) {
  return h('h1', { tabindex: '-1' }, text)
}

function failure(e) {
  return h('p', { class: 'error', role: 'alert' }, e instanceof Error ? e.message : String(e))
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => {
      clearTimeout(t)
      resolve()
    })
  })

function route(focus = false) {
  page.abort()
  page = new AbortController()
  library = null
  const s = session()
  signedIn = Boolean(s)
  logoutButton.hidden = !s
  const hash = location.hash || '#/'
  let view
  if (!s) view = authView()
  else if (hash === '#/status') view = statusView(page.signal)
  else {
    const m = /^#\/video\/([A-Za-z0-9_-]{1,64})$/.exec(hash)
    view = m ? playerView(m[1], page.signal) : libraryView(page.signal)
  }
  Promise.resolve(view).then(() => {
    if (focus) main.querySelector('h1')?.focus()
  })
}

// ---------------------------------------------------------------- sign in

function authView() {
  const error = h('p', { class: 'error', role: 'alert' })
  const form = h(
    'form',
    { class: 'card auth' },
    heading('Sign in to StreamGate'),
    h('label', { for: 'email' }, 'Email'),
    h('input', { type: 'email', id: 'email', name: 'email', autocomplete: 'username', required: true }),
    h('label', { for: 'password' }, 'Password (8 to 128 characters)'),
    h('input', {
      type: 'password', id: 'password', name: 'password', autocomplete: 'current-password',
      required: true, minlength: '8', maxlength: '128',
    }),
    h('label', { for: 'display-name' }, 'Display name (new accounts, optional)'),
    h('input', { type: 'text', id: 'display-name', name: 'display_name', autocomplete: 'nickname', maxlength: '64' }),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', value: 'login' }, 'Log in'),
      h('button', { type: 'submit', value: 'signup', class: 'secondary' }, 'Sign up'),
    ),
    error,
  )
  form.addEventListener('submit', async (e) => {
    e.preventDefault()
    const data = new FormData(form)
    const buttons = form.querySelectorAll('button')
    buttons.forEach((b) => (b.disabled = true))
    error.textContent = ''
    try {
      if (e.submitter?.value === 'signup') {
        await signUp(data.get('email'), data.get('password'), data.get('display_name'))
        toast('Account created: you are signed in')
      } else {
        await logIn(data.get('email'), data.get('password'))
      }
      route(true)
    } catch (err) {
      error.textContent = err.message
      buttons.forEach((b) => (b.disabled = false))
    }
  })
  replace(main, form)
}

// ---------------------------------------------------------------- library

class Library {
  constructor(list, empty, signal) {
    this.list = list
    this.empty = empty
    this.signal = signal
    /** id -> {video, job, el, parts} */
    this.items = new Map()
    this.feed = null
    this.urls = []
    signal.addEventListener('abort', () => {
      this.feed?.abort()
      this.urls.forEach((u) => URL.revokeObjectURL(u))
    })
  }

  put(video, { first = false } = {}) {
    let item = this.items.get(video.id)
    if (!item) {
      item = this.make(video)
      this.items.set(video.id, item)
      if (first) this.list.prepend(item.el)
      else this.list.append(item.el)
      this.showEmpty()
    }
    item.video = video
    if (settled(video)) item.job = null
    this.paint(item)
  }

  make(video) {
    const parts = {
      thumb: h('img', { class: 'thumb', alt: '', width: '320', height: '180' }),
      title: h('a', { class: 'title', href: `#/video/${video.id}` }),
      state: h('span', { class: 'state', 'aria-live': 'polite' }),
      bar: h('progress', { max: 100, value: 0, hidden: true }),
      facts: h('p', { class: 'muted' }),
    }
    const el = h(
      'li',
      { class: 'video', dataset: { videoId: video.id } },
      parts.thumb,
      h('div', { class: 'body' }, parts.title, h('div', {}, parts.state), parts.bar, parts.facts),
    )
    return { el, parts, video, job: null, thumbLoaded: false }
  }

  paint(item) {
    const { video, job, parts } = item
    const title = video.title || 'Untitled'
    parts.title.textContent = title
    const s = shown(video, job)
    parts.state.dataset.state = s.state
    if (parts.state.textContent !== s.label) parts.state.textContent = s.label
    parts.bar.hidden = s.percent === undefined
    if (s.percent !== undefined) {
      parts.bar.value = s.percent
      parts.bar.setAttribute('aria-label', `Transcoding ${title}`)
    }
    parts.facts.textContent = `${bytes(video.size_bytes)} · ${when(video.created_at_ms)}`
    if (video.state === 'ready' && !item.thumbLoaded) {
      item.thumbLoaded = true
      this.thumbnail(item)
    }
  }

  async thumbnail(item) {
    try {
      const res = await raw('GET', `/v1/videos/${item.video.id}/thumbnail.jpg`, { signal: this.signal })
      const url = URL.createObjectURL(await res.blob())
      this.urls.push(url)
      item.parts.thumb.src = url
    } catch {
      item.thumbLoaded = false // Tried again at the next update.
    }
  }

  remove(id) {
    this.items.get(id)?.el.remove()
    this.items.delete(id)
    this.showEmpty()
  }

  showEmpty() {
    this.empty.textContent = this.items.size === 0 ? 'No videos yet: upload one above.' : ''
  }

  onEvent(name, data) {
    const item = this.items.get(data.video_id || data.id)
    if (!item) return
    if (name === 'video') this.put(data)
    else if (name === 'job') {
      item.job = data
      this.paint(item)
    } else if (name === 'gone') this.remove(item.video.id)
    else if (name === 'error') {
      // Not followed again until the page is loaded again.
      item.stuck = true
      item.parts.state.textContent = `Updates unavailable: ${data.error}`
    }
  }

  /** Follows the newest videos not yet ready or failed (8 at a time). */
  follow() {
    this.feed?.abort()
    if (this.signal.aborted) return
    const pending = [...this.items.values()]
      .filter((i) => !settled(i.video) && !i.stuck)
      .sort((a, b) => b.video.created_at_ms - a.video.created_at_ms)
      .slice(0, 8)
      .map((i) => i.video.id)
    if (pending.length === 0) return
    const feed = new AbortController()
    this.signal.addEventListener('abort', () => feed.abort(), { once: true })
    this.feed = feed
    ;(async () => {
      let wait = 1000
      while (!feed.signal.aborted) {
        try {
          const reason = await follow(pending, (n, d) => this.onEvent(n, d), feed.signal)
          if (reason === 'settled') break
          wait = 1000
        } catch (e) {
          if (feed.signal.aborted) return
          if (e instanceof ApiError && e.status === 401) return route()
          wait = Math.min(wait * 2, 30000)
        }
        await sleep(wait, feed.signal)
      }
      if (!feed.signal.aborted) this.follow()
    })()
  }
}

function uploadForm() {
  const bar = h('progress', { id: 'upload-progress', max: 100, value: 0 })
  const status = h('p', { id: 'upload-status', 'aria-live': 'polite' })
  const button = h('button', { type: 'submit' }, 'Upload')
  const form = h(
    'form',
    { class: 'card', 'aria-labelledby': 'upload-heading' },
    h('h2', { id: 'upload-heading' }, 'Upload a video'),
    h('label', { for: 'file' }, 'Video file'),
    h('input', { type: 'file', id: 'file', name: 'file', accept: 'video/*', required: true }),
    h('label', { for: 'title' }, 'Title (optional)'),
    h('input', { type: 'text', id: 'title', name: 'title', maxlength: '200' }),
    h('div', { class: 'actions' }, button),
    h('label', { for: 'upload-progress' }, 'Upload progress'),
    bar,
    status,
  )
  form.addEventListener('submit', async (e) => {
    e.preventDefault()
    const file = form.elements.file.files[0]
    if (!file) return
    const title = form.elements.title.value.trim() || file.name
    button.disabled = true
    bar.value = 0
    let spoken = -1
    status.textContent = `Uploading ${file.name}…`
    try {
      const videoId = await upload(file, {
        userId: session()?.user_id,
        title,
        onProgress(sent, total, resumedFrom) {
          const percent = Math.floor((sent / total) * 100)
          bar.value = percent
          bar.dataset.resumedFrom = String(resumedFrom)
          // Spoken in tens, not at every event.
          if (Math.floor(percent / 10) !== spoken) {
            spoken = Math.floor(percent / 10)
            const from = resumedFrom > 0 ? ` (resumed at ${bytes(resumedFrom)})` : ''
            status.textContent = `Uploading ${file.name}: ${percent} % of ${bytes(total)}${from}`
          }
        },
      })
      bar.value = 100
      status.textContent = `Uploaded ${file.name}: it is queued for transcoding.`
      form.reset()
      toast('Upload complete')
      if (library && videoId) {
        const video = await request('GET', `/v1/videos/${videoId}`)
        library.put(video, { first: true })
        library.follow()
      }
    } catch (err) {
      status.textContent = `Upload failed: ${err.message}. Choose the same file again to resume.`
    } finally {
      button.disabled = false
    }
  })
  return form
}

async function libraryView(signal) {
  const list = h('ul', { class: 'videos', 'aria-label': 'Your videos' })
  const empty = h('p', { class: 'muted' })
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Show more')
  const error = h('div')
  replace(
    main,
    heading('Your videos'),
    uploadForm(),
    h('h2', {}, 'Library'),
    error,
    empty,
    list,
    h('div', { class: 'actions' }, more),
  )
  const lib = new Library(list, empty, signal)
  library = lib
  let token = ''
  const load = async () => {
    const q = new URLSearchParams({ owner: 'me', page_size: '24' })
    if (token) q.set('page_token', token)
    const page = await request('GET', `/v1/videos?${q}`, { signal })
    page.videos.forEach((v) => lib.put(v))
    token = page.next_page_token
    more.hidden = !token
    lib.showEmpty()
    lib.follow()
  }
  more.addEventListener('click', () => load().catch((e) => replace(error, failure(e))))
  try {
    await load()
  } catch (e) {
    if (!signal.aborted) replace(error, failure(e))
  }
}

// ---------------------------------------------------------------- player

async function playerView(id, signal) {
  replace(main, heading('Loading…'))
  let video
  try {
    video = await request('GET', `/v1/videos/${id}`, { signal })
  } catch (e) {
    if (!signal.aborted) replace(main, heading('Video'), failure(e), h('p', {}, h('a', { href: '#/' }, 'Back to the library')))
    return
  }
  const title = heading(video.title || 'Untitled')
  const stage = h('div', { class: 'player' })
  const facts = h('dl', { class: 'facts' })
  const setFacts = (v) =>
    replace(
      facts,
      ...[
        ['State', shown(v).label],
        ['Visibility', v.visibility],
        ['Size', bytes(v.size_bytes)],
        ['Duration', duration(v.duration_ms)],
        ['Renditions', v.renditions.map((r) => r.name).join(', ') || '—'],
        ['Uploaded', when(v.created_at_ms)],
      ].map(([k, val]) => [h('dt', {}, k), h('dd', {}, val)]),
    )
  setFacts(video)

  const play = async (v) => {
    if (v.state !== 'ready') {
      replace(stage, h('p', { class: 'state', dataset: { state: shown(v).state }, 'aria-live': 'polite' }, `${shown(v).label}: it plays once it is ready.`))
      return false
    }
    const grant = await request('POST', `/v1/videos/${id}/playback`, { json: {}, signal })
    const player = h('video', { controls: true, playsinline: true, preload: 'metadata', poster: grant.thumbnail })
    player.setAttribute('aria-label', v.title || 'Video')
    const note = h('p', { class: 'muted' })
    const progressive = (why) => {
      player.src = grant.original
      player.dataset.source = 'original'
      note.textContent = `Playing the original file: ${why}.`
    }
    if (player.canPlayType('application/vnd.apple.mpegurl') !== '') {
      player.src = grant.master
      player.dataset.source = 'hls'
      note.textContent = 'Playing HLS: the browser picks the rendition.'
      // A browser that says "maybe" and then cannot: the original instead.
      player.addEventListener('error', () => progressive('this browser could not play the HLS stream'), { once: true })
    } else {
      progressive('this browser does not play HLS by itself')
    }
    replace(stage, player, note)
    return true
  }

  const edit = h('form', { class: 'card', 'aria-labelledby': 'edit-heading' })
  const status = h('p', { role: 'status' })
  replace(
    edit,
    h('h2', { id: 'edit-heading' }, 'Edit'),
    h('label', { for: 'new-title' }, 'Title'),
    h('input', { type: 'text', id: 'new-title', name: 'title', value: video.title, required: true, maxlength: '200' }),
    h('label', { for: 'visibility' }, 'Who may see it'),
    h(
      'select',
      { id: 'visibility', name: 'visibility' },
      ['private', 'unlisted', 'public'].map((v) => h('option', { value: v }, v)),
    ),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', class: 'danger', id: 'delete' }, 'Delete video'),
    ),
    status,
  )
  edit.elements.visibility.value = video.visibility
  edit.addEventListener('submit', async (e) => {
    e.preventDefault()
    const body = { title: edit.elements.title.value.trim(), visibility: edit.elements.visibility.value }
    try {
      video = await request('PATCH', `/v1/videos/${id}`, { json: body })
      title.textContent = video.title || 'Untitled'
      setFacts(video)
      status.textContent = 'Saved.'
      toast('Saved')
    } catch (err) {
      status.textContent = `Not saved: ${err.message}`
    }
  })
  edit.querySelector('#delete').addEventListener('click', async () => {
    if (!confirm(`Delete “${video.title || 'Untitled'}”? This cannot be undone.`)) return
    try {
      await request('DELETE', `/v1/videos/${id}`)
      toast('Deleted')
      location.hash = '#/'
    } catch (err) {
      status.textContent = `Not deleted: ${err.message}`
    }
  })

  replace(main, title, stage, h('h2', {}, 'Details'), facts, edit, h('p', {}, h('a', { href: '#/' }, 'Back to the library')))
  try {
    if (!(await play(video))) {
      // Not ready yet: follow it, and play once it is.
      while (!signal.aborted && !settled(video)) {
        try {
          await follow([id], (name, data) => {
            if (name === 'video') {
              video = data
              setFacts(video)
            }
            if (name === 'job' && !settled(video)) {
              replace(stage, h('p', { class: 'state', 'aria-live': 'polite' }, `${shown(video, data).label}: it plays once it is ready.`))
            }
          }, signal)
        } catch (e) {
          if (signal.aborted) return
        }
        if (!settled(video)) await sleep(3000, signal)
      }
      if (!signal.aborted) await play(video)
    }
  } catch (e) {
    if (!signal.aborted) replace(stage, failure(e))
  }
}

// ---------------------------------------------------------------- status

async function statusView(signal) {
  const body = h('div')
  const refresh = h('button', { type: 'button', class: 'secondary' }, 'Refresh')
  replace(main, heading('Status'), body, h('div', { class: 'actions' }, refresh))
  const load = async () => {
    try {
      const [status, alerts] = await Promise.all([
        request('GET', '/v1/status', { signal }),
        request('GET', '/v1/alerts', { signal }),
      ])
      const rows = status.services.map((s) =>
        h(
          'tr',
          { dataset: { service: s.name } },
          h('th', { scope: 'row' }, s.name),
          h('td', {}, h('span', { class: 'health', dataset: { health: s.health } }, s.health.replace('_', ' '))),
          h('td', {}, when(s.last_seen_at_ms)),
        ),
      )
      const alertList = alerts.alerts.length
        ? h(
            'ul',
            { id: 'alerts' },
            alerts.alerts.map((a) =>
              h('li', {}, h('strong', {}, `${a.severity}: `), `${a.title} (${a.service}, since ${when(a.raised_at_ms)})`),
            ),
          )
        : h('p', { id: 'alerts' }, 'No alerts are firing.')
      replace(
        body,
        h(
          'p',
          {},
          'Overall: ',
          h('strong', { class: 'health', dataset: { health: status.overall } }, status.overall.replace('_', ' ')),
          ` · ${status.firing_alerts} alert${status.firing_alerts === 1 ? '' : 's'} firing · as of ${when(status.generated_at_ms)}`,
        ),
        h(
          'table',
          { id: 'services' },
          h('caption', { class: 'muted' }, 'The nine services, as the monitor sees them'),
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Service'), h('th', { scope: 'col' }, 'Health'), h('th', { scope: 'col' }, 'Last seen'))),
          h('tbody', {}, rows),
        ),
        h('h2', {}, 'Open alerts'),
        alertList,
      )
    } catch (e) {
      if (!signal.aborted) replace(body, failure(e))
    }
  }
  refresh.addEventListener('click', load)
  const timer = setInterval(load, 15000)
  signal.addEventListener('abort', () => clearInterval(timer))
  await load()
}

// ---------------------------------------------------------------- start

window.addEventListener('hashchange', () => route(true))
logoutButton.addEventListener('click', async () => {
  await logOut()
  location.hash = '#/'
  route(true)
})
onSession((s) => {
  // Signed out elsewhere (a refresh refused): back to the sign-in form.
  if (Boolean(s) !== signedIn) route()
})
route()
