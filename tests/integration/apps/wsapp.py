#!/usr/bin/python3
"""WebSocket echo app for jobgate's integration tests (python3-websockets 10.x).

--unix PATH, --port N (127.0.0.1) or --env ($JOBGATE_SOCKET / $JOBGATE_PORT).
  ws path /         echoes every message (text or binary), in order
  ws path /headers  sends one text message: JSON list of [name, value] of the upgrade
                    request as received, then closes
  plain GET /hello  "hello\n" (no upgrade), to check the app is reachable
"""
import argparse
import http
import asyncio
import json
import os
import sys

import websockets


async def handler(ws, path=None):
    path = path if path is not None else ws.path
    if path == "/headers":
        await ws.send(json.dumps([[k, v] for k, v in ws.request_headers.raw_items()]))
        await ws.close()
        return
    async for msg in ws:
        await ws.send(msg)


async def process_request(path, headers):
    if path == "/hello":
        return (http.HTTPStatus.OK, [("Content-Type", "text/plain")], b"hello\n")
    return None


async def main():
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--unix")
    g.add_argument("--port", type=int)
    g.add_argument("--env", action="store_true")
    args = ap.parse_args()
    if args.env:
        args.unix = os.environ.get("JOBGATE_SOCKET") or None
        args.port = None if args.unix else int(os.environ["JOBGATE_PORT"])
    kw = dict(max_size=None, process_request=process_request)
    if args.unix:
        if os.path.exists(args.unix):
            os.unlink(args.unix)
        server = await websockets.unix_serve(handler, args.unix, **kw)
        desc = "unix:" + args.unix
    else:
        server = await websockets.serve(handler, "127.0.0.1", args.port, **kw)
        desc = f"tcp:127.0.0.1:{args.port}"
    print(f"wsapp: listening on {desc}", file=sys.stderr, flush=True)
    async with server:
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
