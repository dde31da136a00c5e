#!/usr/bin/env python3
"""A NATS subscriber outside the project (nats-py): prints every message on
SUBJECT as one line, `<subject> <payload>` (the payload as sent: StreamGate's
JSON event envelope), until killed or for --seconds.

    nats_tap.py [--url nats://127.0.0.1:4222] [--seconds N] SUBJECT

Prints `ready` once subscribed, so a caller can wait for it before acting.
Used by tests/cluster.rs.
"""

import argparse
import asyncio
import signal
import sys

import nats


async def tap(url: str, subject: str, seconds: float) -> None:
    client = await nats.connect(url, name="streamgate-nats-tap")
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)

    async def on_message(msg):
        print(msg.subject, msg.data.decode("utf-8", "replace"), flush=True)

    await client.subscribe(subject, cb=on_message)
    await client.flush()
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), timeout=seconds if seconds > 0 else None)
    except asyncio.TimeoutError:
        pass
    await client.drain()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subject", help="e.g. `>` or `<prefix>.streamgate.v1.>`")
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--seconds", type=float, default=0, help="stop after; 0: until killed")
    args = parser.parse_args()
    asyncio.run(tap(args.url, args.subject, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
