// Uploads a file to StreamGate's /v1/uploads/ with tus-js-client, the
// official tus JavaScript client, under Node (tests/tus_clients.rs runs it
// with NODE_PATH at the node_modules ci/deps installs).
//
//   node tus_js_upload.cjs ENDPOINT TOKEN FILE CHUNK_SIZE ABORT_AFTER [URL]
//
// ABORT_AFTER > 0: once that many chunks are acknowledged, the upload is
// aborted half-way through sending the next one (the connection is cut
// mid-PATCH). With URL it resumes that upload (tus-js-client asks the
// server's offset with HEAD). Prints one JSON line: the url, the offset
// the server reported at the start, the bytes acknowledged, and once
// complete the video the upload became (StreamGate-Video-Id of a HEAD).
'use strict'
const fs = require('fs')
const tus = require('tus-js-client')

const [endpoint, token, file, chunkArg, abortArg, resumeUrl] = process.argv.slice(2)
const chunkSize = Number(chunkArg)
const abortAfter = Number(abortArg)
const auth = { Authorization: `Bearer ${token}` }
const data = fs.readFileSync(file)

async function head(url) {
  const res = await fetch(url, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0', ...auth } })
  if (!res.ok) throw new Error(`HEAD ${url}: ${res.status}`)
  return {
    offset: Number(res.headers.get('upload-offset')),
    videoId: res.headers.get('streamgate-video-id'),
  }
}

async function main() {
  const start = resumeUrl ? (await head(resumeUrl)).offset : 0
  let chunks = 0
  let accepted = start
  const result = await new Promise((resolve, reject) => {
    const upload = new tus.Upload(data, {
      endpoint,
      uploadUrl: resumeUrl || null,
      chunkSize,
      headers: auth,
      retryDelays: null,
      metadata: { filename: 'tus-js.mp4', filetype: 'video/mp4', title: 'tus-js-client clip' },
      onChunkComplete(_size, bytesAccepted) {
        chunks += 1
        accepted = bytesAccepted
      },
      onProgress(bytesSent) {
        // Half-way through the chunk after the last one wanted: cut.
        if (abortAfter > 0 && chunks >= abortAfter && bytesSent > accepted + chunkSize / 2) {
          upload.abort().then(() => resolve({ aborted: true, url: upload.url }), reject)
        }
      },
      onSuccess() {
        resolve({ aborted: false, url: upload.url })
      },
      onError: reject,
    })
    upload.start()
  })
  const after = await head(result.url)
  console.log(
    JSON.stringify({
      url: result.url,
      aborted: result.aborted,
      start,
      accepted,
      head_offset: after.offset,
      video_id: after.videoId,
    }),
  )
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
