#!/usr/bin/env python3
"""Uploads a file to StreamGate's /v1/uploads/ with tuspy, the official tus
Python client (tests/tus_clients.rs runs it).

Without --url it creates an upload; with --url it resumes that one from
the offset the server reports. With --chunks N it stops after N chunks
(the client goes away mid-way), else it sends the rest. Every PATCH
carries a sha1 Upload-Checksum. Prints one JSON line: the upload's url,
the offset it started from, the offset it reached and, once complete, the
video it became (StreamGate-Video-Id of a HEAD).
"""
import argparse
import json

import requests
from tusclient import client

parser = argparse.ArgumentParser()
parser.add_argument("--endpoint", required=True)
parser.add_argument("--token", required=True)
parser.add_argument("--file", required=True)
parser.add_argument("--chunk-size", type=int, required=True)
parser.add_argument("--chunks", type=int, default=0)
parser.add_argument("--url")
args = parser.parse_args()

auth = {"Authorization": f"Bearer {args.token}"}
tus = client.TusClient(args.endpoint, headers=auth)
if args.url:
    uploader = tus.uploader(
        file_path=args.file,
        url=args.url,
        chunk_size=args.chunk_size,
        upload_checksum=True,
    )
    uploader.offset = uploader.get_offset()
else:
    uploader = tus.uploader(
        file_path=args.file,
        chunk_size=args.chunk_size,
        metadata={"filename": "tuspy.mp4", "filetype": "video/mp4", "title": "tuspy clip"},
        upload_checksum=True,
    )
    uploader.set_url(uploader.create_url())
    uploader.offset = 0
start = uploader.offset
if args.chunks:
    for _ in range(args.chunks):
        uploader.upload_chunk()
else:
    uploader.upload()
head = requests.head(uploader.url, headers={"Tus-Resumable": "1.0.0", **auth}, timeout=60)
head.raise_for_status()
print(
    json.dumps(
        {
            "url": uploader.url,
            "start": start,
            "offset": uploader.offset,
            "head_offset": int(head.headers["Upload-Offset"]),
            "video_id": head.headers.get("StreamGate-Video-Id"),
        }
    )
)
