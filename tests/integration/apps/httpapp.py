#!/usr/bin/python3
"""A small HTTP/1.1 app server for jobgate's integration tests (asyncio, stdlib only).

Listens on a UNIX socket (--unix PATH), a TCP port on 127.0.0.1 (--port N; 0 picks
one and prints "PORT N"), or where jobgate says (--env: $JOBGATE_SOCKET, else
$JOBGATE_PORT). Keep-alive, Content-Length and chunked bodies both ways,
Expect: 100-continue, HEAD.

  GET  /                 "index\n"
  GET  /hello            "hello\n"
  GET  /bytes?n=N[&chunked=1]   N bytes of the pattern (byte i == i % 256), 64 KiB writes
  POST /echo             the body back, streaming; chunked in -> chunked out
  POST /sink[?delay=S]   reads the body (after sleeping S s) -> {"bytes","sha256","framing",...}
  ANY  /headers          JSON list of [name, value] as received (order, duplicates);
                         X-Request-Method / X-Request-Target / X-Request-Version echo the line
  GET  /status/204, /status/304 (with ETag and a Content-Length of 1234), /status/N
  GET  /hop              a response carrying hop-by-hop fields
  GET  /eofbody?n=N      N pattern bytes framed by closing the connection
  GET  /early            103 Early Hints, then 200
  GET  /trailers         a chunked response with a trailer field
  GET  /bighead?n=N      a response with an N-byte header field
  GET  /stall            never answers
  GET  /env              {"argv","env" (JOBGATE_*),"listen","pid"}
  GET  /exit?code=N      answers, then exits with status N
  GET  /garbage          answers with a malformed status line and closes
  GET  /close            closes without answering
"""
import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import stat
import sys
import urllib.parse

BLOCK = bytes(range(256)) * 256  # 64 KiB; the stream is byte i == i % 256
MAX_HEAD = 1 << 20


class BadRequest(Exception):
    pass


class Request:
    def __init__(self, method, target, version, headers):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # list of (name, value), as received
        u = urllib.parse.urlsplit(target)
        self.path = u.path
        self.query = dict(urllib.parse.parse_qsl(u.query))

    def get(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def get_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Body:
    """The request body as a stream; sends 100 Continue before the first read."""

    def __init__(self, reader, writer, req):
        self.reader = reader
        self.writer = writer
        self.expect = (req.get("Expect") or "").lower() == "100-continue"
        self.continued = False
        self.trailers = []
        te = ",".join(req.get_all("Transfer-Encoding")).lower()
        cl = req.get("Content-Length")
        if "chunked" in te:
            self.framing, self.left = "chunked", None
        elif cl is not None:
            self.framing, self.left = "length", int(cl)
        else:
            self.framing, self.left = "none", 0
        self.done = self.framing == "none" or self.left == 0
        self.started = False

    async def _continue(self):
        if self.expect and not self.continued and not self.done:
            self.continued = True
            self.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self.writer.drain()

    async def chunks(self):
        self.started = True
        await self._continue()
        if self.framing == "length":
            while self.left > 0:
                d = await self.reader.read(min(self.left, 1 << 20))
                if not d:
                    raise BadRequest("EOF in body")
                self.left -= len(d)
                yield d
        elif self.framing == "chunked" and not self.done:
            while True:
                line = await self.reader.readuntil(b"\r\n")
                size = int(line[:-2].split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = await self.reader.readuntil(b"\r\n")
                        if t == b"\r\n":
                            break
                        self.trailers.append(t[:-2].decode("latin-1"))
                    break
                left = size
                while left > 0:
                    d = await self.reader.read(min(left, 1 << 20))
                    if not d:
                        raise BadRequest("EOF in chunk")
                    left -= len(d)
                    yield d
                if await self.reader.readexactly(2) != b"\r\n":
                    raise BadRequest("chunk not followed by CRLF")
        self.done = True

    async def read_all(self):
        out = bytearray()
        async for d in self.chunks():
            out += d
        return bytes(out)

    async def drain(self):
        async for _ in self.chunks():
            pass


def head(status, reason, headers):
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def respond(w, req, status, reason, headers, body=b""):
    headers = list(headers)
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        if status not in (204, 304):
            headers.append(("Content-Length", str(len(body))))
    w.write(head(status, reason, headers))
    if req.method != "HEAD" and status not in (204, 304):
        w.write(body)
    await w.drain()


def chunk(d):
    return b"%x\r\n" % len(d) + d + b"\r\n"


async def handle(req, body, r, w, args):
    """Returns False to close the connection afterwards."""
    p, m = req.path, req.method
    text = [("Content-Type", "text/plain")]
    if p == "/":
        await respond(w, req, 200, "OK", text, b"index\n")
    elif p == "/hello":
        await respond(w, req, 200, "OK", text, b"hello\n")
    elif p == "/bytes":
        n = int(req.query.get("n", "0"))
        chunked = req.query.get("chunked") == "1"
        hs = [("Content-Type", "application/octet-stream")]
        hs.append(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(n)))
        w.write(head(200, "OK", hs))
        if m != "HEAD":
            left = n
            while left > 0:
                d = BLOCK[: min(left, len(BLOCK))]
                left -= len(d)
                w.write(chunk(d) if chunked else d)
                await w.drain()
            if chunked:
                w.write(b"0\r\n\r\n")
        await w.drain()
    elif p == "/echo":
        await body._continue()  # the 100 must precede the final head
        if body.framing == "chunked":
            w.write(head(200, "OK", [("Content-Type", "application/octet-stream"),
                                     ("Transfer-Encoding", "chunked")]))
            async for d in body.chunks():
                w.write(chunk(d))
                await w.drain()
            w.write(b"0\r\n\r\n")
            await w.drain()
        else:
            n = body.left if body.framing == "length" else 0
            w.write(head(200, "OK", [("Content-Type", "application/octet-stream"),
                                     ("Content-Length", str(n))]))
            async for d in body.chunks():
                w.write(d)
                await w.drain()
            await w.drain()
    elif p == "/sink":
        delay = float(req.query.get("delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        h = hashlib.sha256()
        n = 0
        async for d in body.chunks():
            h.update(d)
            n += len(d)
        out = {"bytes": n, "sha256": h.hexdigest(), "framing": body.framing,
               "content_length": req.get("Content-Length"),
               "transfer_encoding": req.get_all("Transfer-Encoding"),
               "trailers": body.trailers}
        await respond(w, req, 200, "OK", [("Content-Type", "application/json")],
                      json.dumps(out).encode())
    elif p == "/headers":
        await body.drain()
        await respond(w, req, 200, "OK", [("Content-Type", "application/json"),
                                          ("X-Request-Method", req.method),
                                          ("X-Request-Target", req.target),
                                          ("X-Request-Version", req.version)],
                      json.dumps([[k, v] for k, v in req.headers]).encode())
    elif p == "/status/204":
        w.write(head(204, "No Content", [("X-Status", "204")]))
        await w.drain()
    elif p == "/status/304":
        # RFC 9110 8.6: a 304 may carry the Content-Length of the 200 it stands for.
        w.write(head(304, "Not Modified", [("ETag", '"v1"'), ("Content-Length", "1234")]))
        await w.drain()
    elif p.startswith("/status/"):
        code = int(p.rsplit("/", 1)[1])
        await respond(w, req, code, "Status", text, f"status {code}\n".encode())
    elif p == "/hop":
        w.write(head(200, "OK", [("Content-Type", "text/plain"),
                                 ("Connection", "X-App-Hop"),
                                 ("X-App-Hop", "secret-hop"),
                                 ("Keep-Alive", "timeout=99, max=99"),
                                 ("Proxy-Connection", "keep-alive"),
                                 ("X-App-End", "end-to-end"),
                                 ("Content-Length", "4")]))
        if m != "HEAD":
            w.write(b"hop\n")
        await w.drain()
    elif p == "/eofbody":
        # close-delimited: no Content-Length, no chunked; the body ends when the app closes
        n = int(req.query.get("n", "100000"))
        w.write(head(200, "OK", [("Content-Type", "application/octet-stream")]))
        left = n
        while left > 0:
            d = BLOCK[: min(left, len(BLOCK))]
            left -= len(d)
            w.write(d)
            await w.drain()
        return False
    elif p == "/early":
        w.write(head(103, "Early Hints", [("Link", "</style.css>; rel=preload")]))
        await w.drain()
        await asyncio.sleep(0.05)
        await respond(w, req, 200, "OK", text, b"after hints\n")
    elif p == "/trailers":
        w.write(head(200, "OK", [("Content-Type", "text/plain"), ("Trailer", "X-Checksum"),
                                 ("Transfer-Encoding", "chunked")]))
        w.write(chunk(b"hello ") + chunk(b"trailers\n") + b"0\r\nX-Checksum: 42\r\n\r\n")
        await w.drain()
    elif p == "/bighead":
        n = int(req.query.get("n", "16000"))
        await respond(w, req, 200, "OK", text + [("X-Big", "h" * n)], b"big head\n")
    elif p == "/stall":
        await asyncio.sleep(3600)
        return False
    elif p == "/env":
        out = {"argv": sys.argv, "listen": args.listen_desc, "pid": os.getpid(),
               "env": {k: v for k, v in os.environ.items() if k.startswith("JOBGATE_")
                       and k != "JOBGATE_TEST_TAG"}}
        await respond(w, req, 200, "OK", [("Content-Type", "application/json")],
                      json.dumps(out).encode())
    elif p == "/exit":
        code = int(req.query.get("code", "0"))
        await respond(w, req, 200, "OK", text + [("Connection", "close")], b"bye\n")
        asyncio.get_running_loop().call_later(0.2, os._exit, code)
        return False
    elif p == "/garbage":
        w.write(b"THIS IS NOT HTTP\r\n\r\n")
        await w.drain()
        return False
    elif p == "/close":
        return False
    else:
        await respond(w, req, 404, "Not Found", text, b"no such test endpoint\n")
    return True


def parse_head(data):
    lines = data[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("request line")
    headers = []
    for ln in lines[1:]:
        k, sep, v = ln.partition(":")
        if not sep:
            raise BadRequest("field line")
        headers.append((k, v.strip(" \t")))
    return Request(parts[0], parts[1], parts[2], headers)


async def serve_conn(r, w, args):
    try:
        while True:
            try:
                data = await r.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            req = parse_head(data)
            body = Body(r, w, req)
            keep = await handle(req, body, r, w, args)
            if not keep:
                return
            conn = ",".join(req.get_all("Connection")).lower()
            if "close" in conn or (req.version == "HTTP/1.0" and "keep-alive" not in conn):
                return
            if not body.done:
                if body.expect and not body.continued:
                    return  # the client may never send it
                await body.drain()
    except (BadRequest, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
        try:
            w.write(head(400, "Bad Request", [("Content-Length", "0"), ("Connection", "close")]))
            await w.drain()
        except Exception:
            pass
    except (ConnectionError, BrokenPipeError):
        pass
    finally:
        try:
            w.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--unix")
    g.add_argument("--port", type=int)
    g.add_argument("--env", action="store_true")
    ap.add_argument("--term-file", help="on SIGTERM write this file and exit with --term-code")
    ap.add_argument("--term-code", type=int, default=0)
    ap.add_argument("--pidfile")
    args = ap.parse_args()
    if args.env:
        if os.environ.get("JOBGATE_SOCKET"):
            args.unix = os.environ["JOBGATE_SOCKET"]
        elif os.environ.get("JOBGATE_PORT"):
            args.port = int(os.environ["JOBGATE_PORT"])
        else:
            sys.exit("httpapp: --env but neither JOBGATE_SOCKET nor JOBGATE_PORT is set")
    loop = asyncio.get_running_loop()
    if args.term_file:
        def on_term():
            with open(args.term_file, "w") as f:
                f.write("SIGTERM\n")
            os._exit(args.term_code)
        loop.add_signal_handler(signal.SIGTERM, on_term)

    cb = lambda r, w: serve_conn(r, w, args)  # noqa: E731
    if args.unix:
        try:
            if stat.S_ISSOCK(os.lstat(args.unix).st_mode):
                os.unlink(args.unix)
        except FileNotFoundError:
            pass
        server = await asyncio.start_unix_server(cb, path=args.unix, limit=MAX_HEAD)
        args.listen_desc = "unix:" + args.unix
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        port_was_zero = args.port == 0
        sock.bind(("127.0.0.1", args.port))
        server = await asyncio.start_server(cb, sock=sock, limit=MAX_HEAD)
        args.port = sock.getsockname()[1]
        args.listen_desc = f"tcp:127.0.0.1:{args.port}"
        if port_was_zero:
            print(f"PORT {args.port}", flush=True)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    print(f"httpapp: listening on {args.listen_desc}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
