#!/usr/bin/env python3
"""An independent live-stream receiver (CONTRACT §5) for tests/stream.rs,
written with Python's `websockets` (Debian: python3-websockets), not with
the Rust WebSocket stack the daemon uses.

Usage: stream_receiver.py OUT_DIR TOKEN
Prints the port it listens on (127.0.0.1), then serves until killed. For
each recording it keeps the audio it holds and, on `stop`, writes
OUT_DIR/<recording_id>.pcm (the interleaved s16le it holds, from frame 0)
and OUT_DIR/<recording_id>.json (the start and stop messages, the request
headers it checked, and the offsets that did not continue what it held).
"""

import asyncio
import json
import os
import struct
import sys

import websockets

OUT, TOKEN = sys.argv[1], sys.argv[2]
HELD = {}  # recording_id -> bytearray


async def handler(ws, path=None):
    h = ws.request_headers
    checks = {
        "subprotocol": ws.subprotocol,
        "authorization_ok": h.get("Authorization") == "Bearer " + TOKEN,
        "user_agent": h.get("User-Agent", ""),
    }
    rec, log = None, {"starts": [], "stops": [], "violations": []}
    async for m in ws:
        if isinstance(m, str):
            v = json.loads(m)
            if v["type"] == "start":
                rec = v["recording_id"]
                held = HELD.setdefault(rec, bytearray())
                log["starts"].append(v)
                await ws.send(json.dumps({"type": "ready", "offset": len(held) // 4}))
            elif v["type"] == "stop":
                log["stops"].append(v)
                log["checks"] = checks
                with open(os.path.join(OUT, rec + ".pcm.tmp"), "wb") as f:
                    f.write(HELD[rec])
                with open(os.path.join(OUT, rec + ".json.tmp"), "w") as f:
                    json.dump(log, f)
                os.rename(os.path.join(OUT, rec + ".pcm.tmp"), os.path.join(OUT, rec + ".pcm"))
                os.rename(os.path.join(OUT, rec + ".json.tmp"), os.path.join(OUT, rec + ".json"))
                await ws.send(json.dumps({"type": "done"}))
                await ws.close()
                return
        else:
            (offset,) = struct.unpack(">Q", m[:8])
            held = HELD[rec]
            if offset != len(held) // 4:
                log["violations"].append([offset, len(held) // 4])
            if offset * 4 <= len(held):
                held[offset * 4:] = m[8:]


async def main():
    async with websockets.serve(
        handler, "127.0.0.1", 0, subprotocols=["pbx-edge.stream.v1"]
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


asyncio.run(main())
