// The web app in a real browser: Debian's chromium driven by
// playwright-core (tests/web_app.rs runs it with NODE_PATH at the
// node_modules ci/deps installs).
//
//   node web_app.cjs BASE_URL CLIP ARTIFACTS_DIR
//
// On a phone-sized page: signs up, uploads CLIP through the page's file
// input, reloads the page half-way and chooses the file again (the upload
// goes on from the server's offset; the progress bar must take values
// between 0 and 100), waits for
// the video to be ready in the library (live states from the event
// stream) with its thumbnail, plays it (the <video>'s currentTime
// advances: HLS where the browser says it plays it, then the original as
// a browser without HLS does), renames it, deletes it, and reads the status page (nine
// services). Any page error, failed request of the app's own files or
// Content-Security-Policy violation fails it. On failure: a screenshot
// and the page's HTML in ARTIFACTS_DIR (the paths are printed), exit 1.
// On success: one JSON line of what it saw.
'use strict'
const fs = require('fs')
const path = require('path')
const { chromium } = require('playwright-core')

const [base, clip, artifacts] = process.argv.slice(2)
const executablePath = process.env.STREAMGATE_CHROMIUM || '/usr/bin/chromium'
const TITLE = 'Browser clip'
const RENAMED = 'Renamed in the browser'

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`)
}

async function main() {
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required'],
  })
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })
  const page = await context.newPage()
  const problems = []
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`))
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content.Security.Policy|Refused to/i.test(m.text())) problems.push(`console: ${m.text()}`)
  })
  page.on('response', (r) => {
    const u = new URL(r.url())
    if ((u.pathname === '/' || u.pathname.startsWith('/app/')) && r.status() >= 400) problems.push(`${r.status()} for ${u.pathname}`)
  })
  const seen = { progress: [], states: [] }
  try {
    // The page, with its policy.
    const doc = await page.goto(`${base}/`)
    check(doc.status() === 200, `GET / answered ${doc.status()}`)
    const csp = doc.headers()['content-security-policy'] || ''
    check(csp.includes("script-src 'self'"), `a strict CSP: ${csp}`)
    // What the app does not have stays the API's JSON 404.
    for (const p of ['/v1/nope', '/app/nope.js']) {
      const r = await fetch(`${base}${p}`)
      const type = r.headers.get('content-type') || ''
      check(r.status === 404 && type.startsWith('application/json') && (await r.json()).error, `${p}: a JSON 404 (${r.status} ${type})`)
    }

    // Sign up.
    await page.getByLabel('Email').fill(`web-${Date.now()}@example.com`)
    await page.getByLabel(/^Password/).fill('correct horse battery')
    await page.getByRole('button', { name: 'Sign up' }).click()
    await page.getByRole('heading', { name: 'Your videos' }).waitFor()
    await page.getByText('No videos yet').waitFor()

    // Upload through the file input. The first chunk goes through; the
    // second PATCH is held (never reaches the server) and the page is
    // reloaded meanwhile.
    let patches = 0
    await page.route('**/v1/uploads/*', (route) => {
      if (route.request().method() !== 'PATCH') return route.continue()
      patches += 1
      if (patches === 1) return route.continue()
      // Held: the reload cancels it.
    })
    const choose = async () => {
      await page.getByLabel('Video file').setInputFiles(clip)
      await page.getByLabel('Title (optional)').fill(TITLE)
      await page.getByRole('button', { name: 'Upload' }).click()
    }
    await choose()
    const until = Date.now() + 30_000
    while (patches < 2 && Date.now() < until) await page.waitForTimeout(50)
    check(patches >= 2, `the second chunk was sent (${patches} PATCHes)`)
    await page.reload()
    await page.unroute('**/v1/uploads/*')
    await page.getByRole('heading', { name: 'Your videos' }).waitFor()

    // The same file again: the page asks the server's offset and sends
    // the rest, the bar taking every value on the way.
    await page.evaluate(() => {
      const bar = document.getElementById('upload-progress')
      window.__progress = []
      new MutationObserver(() => window.__progress.push(bar.value)).observe(bar, { attributes: true, attributeFilter: ['value'] })
    })
    await choose()
    await page.locator('#upload-status', { hasText: 'Uploaded' }).waitFor({ timeout: 60_000 })
    seen.resumedFrom = Number(await page.locator('#upload-progress').getAttribute('data-resumed-from'))
    check(seen.resumedFrom === 1024 * 1024, `resumed after the first chunk (1 MiB): ${seen.resumedFrom}`)
    seen.progress = await page.evaluate(() => window.__progress)
    check(seen.progress.some((v) => v > 0 && v < 100), `the bar moved through values between 0 and 100: ${seen.progress}`)
    check(seen.progress[seen.progress.length - 1] === 100, `the bar ends at 100: ${seen.progress}`)
    check(seen.progress.every((v) => v === 0 || v >= 30), `the bar started from the resumed offset: ${seen.progress}`)

    // The library: its state, live, until ready; then the thumbnail.
    const item = page.locator('li.video', { has: page.getByRole('link', { name: TITLE }) })
    await item.waitFor()
    const videoId = await item.getAttribute('data-video-id')
    await page.evaluate((id) => {
      const state = document.querySelector(`li.video[data-video-id="${id}"] .state`)
      window.__states = [state.textContent]
      new MutationObserver(() => window.__states.push(state.textContent)).observe(state, { childList: true, characterData: true, subtree: true })
    }, videoId)
    await item.locator('.state[data-state="ready"]').waitFor({ timeout: 120_000 })
    seen.states = await page.evaluate(() => window.__states)
    await page.waitForFunction(
      (id) => {
        const img = document.querySelector(`li.video[data-video-id="${id}"] img.thumb`)
        return img && img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0
      },
      videoId,
      { timeout: 20_000 },
    )

    // Play it.
    await item.getByRole('link', { name: TITLE }).click()
    await page.getByRole('heading', { name: TITLE }).waitFor()
    const video = page.locator('video')
    await video.waitFor()
    seen.canPlayHls = await video.evaluate((v) => v.canPlayType('application/vnd.apple.mpegurl'))
    await video.evaluate((v) => {
      v.muted = true
      return v.play().catch(() => {}) // An HLS source may fail over to the original: then play again below.
    })
    await page.waitForFunction(
      () => {
        const v = document.querySelector('video')
        if (v.paused && v.readyState >= 2) v.play().catch(() => {})
        return v.currentTime > 0.5
      },
      null,
      { timeout: 30_000, polling: 250 },
    )
    seen.source = await video.getAttribute('data-source')
    seen.currentTime = await video.evaluate((v) => v.currentTime)

    // A browser without HLS (Chromium before its native HLS, Firefox):
    // the original, progressive, through its signed URL.
    await page.evaluate(() => {
      const canPlayType = HTMLMediaElement.prototype.canPlayType
      HTMLMediaElement.prototype.canPlayType = function (type) {
        return /mpegurl/i.test(type) ? '' : canPlayType.call(this, type)
      }
    })
    await page.getByRole('link', { name: 'Back to the library' }).click()
    await item.getByRole('link', { name: TITLE }).click()
    await page.locator('video[data-source="original"]').waitFor()
    await page.waitForFunction(
      () => {
        const v = document.querySelector('video')
        v.muted = true
        if (v.paused && v.readyState >= 2) v.play().catch(() => {})
        return v.currentTime > 0.5
      },
      null,
      { timeout: 30_000, polling: 250 },
    )
    seen.originalCurrentTime = await page.locator('video').evaluate((v) => v.currentTime)
    check(
      (await page.locator('video').getAttribute('src')).includes('/v1/play/'),
      'the original through a signed URL',
    )

    // Rename.
    await page.getByLabel('Title', { exact: true }).fill(RENAMED)
    await page.getByRole('button', { name: 'Save' }).click()
    await page.getByRole('heading', { name: RENAMED }).waitFor()
    const token = await page.evaluate(() => JSON.parse(localStorage.getItem('streamgate.session')).access_token)
    const api = (method, p) => fetch(`${base}${p}`, { method, headers: { Authorization: `Bearer ${token}` } })
    const record = await (await api('GET', `/v1/videos/${videoId}`)).json()
    check(record.title === RENAMED, `renamed on the server: ${JSON.stringify(record)}`)

    // Delete.
    page.once('dialog', (d) => d.accept())
    await page.getByRole('button', { name: 'Delete video' }).click()
    await page.getByRole('heading', { name: 'Your videos' }).waitFor()
    await page.getByText('No videos yet').waitFor()
    const gone = await api('GET', `/v1/videos/${videoId}`)
    check(gone.status === 404, `deleted on the server: ${gone.status}`)

    // The status page: nine services.
    await page.getByRole('link', { name: 'Status' }).click()
    await page.getByRole('heading', { name: 'Status' }).waitFor()
    await page.waitForFunction(() => document.querySelectorAll('#services tbody tr').length === 9, null, { timeout: 10_000 })
    await page.locator('#alerts').waitFor()

    check(problems.length === 0, `no page errors: ${problems.join('; ')}`)
    console.log(JSON.stringify({ ok: true, video_id: videoId, ...seen }))
  } catch (e) {
    fs.mkdirSync(artifacts, { recursive: true })
    const shot = path.join(artifacts, 'web_app-failure.png')
    const html = path.join(artifacts, 'web_app-failure.html')
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {})
    fs.writeFileSync(html, await page.content().catch(() => ''))
    console.error(`web app test failed: ${e.stack || e}`)
    if (problems.length) console.error(`page problems: ${problems.join('; ')}`)
    console.error(`seen: ${JSON.stringify(seen)}`)
    console.error(`screenshot: ${shot}\npage HTML: ${html}`)
    process.exitCode = 1
  } finally {
    await browser.close()
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
