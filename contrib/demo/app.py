#!/usr/bin/python3
"""A tiny web app for trying jobgate: `make demo` runs it behind a personal gateway.

    jobgate run -n demo -- /usr/bin/python3 contrib/demo/app.py --sock {socket}

It listens on a UNIX socket (or with --port on 127.0.0.1, for `jobgate run --tcp`) and
shows a page with the time, the Host it received, the X-Forwarded-* headers the gateway
added and a visit counter, so one can see the request went browser -> gateway -> job.
Standard library only; HTTP/1.1 with Content-Length on every answer, so the gateway can
keep its connections to the app alive.
"""

import argparse
import html
import os
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

STARTED = time.time()
_count_lock = threading.Lock()
_count = 0


def next_visit():
    global _count
    with _count_lock:
        _count += 1
        return _count


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Hello from your job</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; color: #222; }}
  h1 {{ font-size: 1.6rem; }}
  table {{ border-collapse: collapse; margin: 1.5rem 0; }}
  th, td {{ text-align: left; padding: .35rem .9rem .35rem 0; vertical-align: top; }}
  th {{ color: #666; font-weight: normal; }}
  td {{ font-family: ui-monospace, monospace; word-break: break-all; }}
  .count {{ font-size: 2.5rem; font-weight: bold; }}
  footer {{ color: #666; font-size: .9rem; }}
</style>
</head>
<body>
<h1>Hello from your job</h1>
<p>This page was served by <code>contrib/demo/app.py</code> (pid {pid} on {node}),
listening on {listen}, and reached you through jobgate.</p>
<p>Visit number <span class="count">{count}</span> &mdash; <a href="/">reload</a></p>
<table>
<tr><th>Time on the node</th><td>{now}</td></tr>
<tr><th>Host</th><td>{host}</td></tr>
<tr><th>X-Forwarded-For</th><td>{xff}</td></tr>
<tr><th>X-Forwarded-Proto</th><td>{xfp}</td></tr>
<tr><th>X-Forwarded-Host</th><td>{xfh}</td></tr>
<tr><th>Request</th><td>{method} {path}</td></tr>
<tr><th>Running for</th><td>{uptime}</td></tr>
</table>
<footer>The gateway forwards <code>Host</code> unchanged and adds the
<code>X-Forwarded-*</code> headers; its own session cookie never reaches the app.
Press Ctrl-C where <code>make demo</code> runs to stop.</footer>
</body>
</html>
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "jobgate-demo/1"
    # A browser behind the gateway may hold a connection open; do not keep a
    # thread forever for one that went quiet.
    timeout = 120

    def address_string(self):
        # On a UNIX socket client_address is "", which http.server cannot log.
        peer = self.client_address
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return "unix"

    def log_message(self, fmt, *args):
        xff = self.headers.get("X-Forwarded-For", "-") if getattr(self, "headers", None) else "-"
        sys.stderr.write("demo: %s (for %s) %s\n" % (self.address_string(), xff, fmt % args))

    def _send(self, status, body, ctype="text/html; charset=utf-8"):
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/favicon.ico":
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path != "/":
            self._send(404, "<!doctype html><title>Not found</title><p>Not found. <a href=\"/\">Home</a></p>\n")
            return
        h = lambda name: html.escape(self.headers.get(name, "(none)"))
        up = int(time.time() - STARTED)
        body = PAGE.format(
            pid=os.getpid(),
            node=html.escape(socket.gethostname()),
            listen=html.escape(self.server.listen_desc),
            count=next_visit() if self.command == "GET" else _count,
            now=html.escape(time.strftime("%Y-%m-%d %H:%M:%S %Z")),
            host=h("Host"),
            xff=h("X-Forwarded-For"),
            xfp=h("X-Forwarded-Proto"),
            xfh=h("X-Forwarded-Host"),
            method=html.escape(self.command),
            path=html.escape(self.path),
            uptime="%dh %02dm %02ds" % (up // 3600, up // 60 % 60, up % 60),
        )
        self._send(200, body)

    do_HEAD = do_GET

    def do_POST(self):
        # Read (and drop) a body so the connection stays in sync for the next request.
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = -1
        if n < 0 or n > 1 << 20 or "Transfer-Encoding" in self.headers:
            self.close_connection = True
            self._send(400, "<!doctype html><title>Bad request</title><p>Bad request.</p>\n")
            return
        self.rfile.read(n)
        self._send(405, "<!doctype html><title>Method not allowed</title><p>Only GET here.</p>\n")


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description="jobgate demo app")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--sock", help="UNIX socket path to listen on (jobgate run: --sock {socket})")
    where.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (jobgate run --tcp: --port {port})")
    args = ap.parse_args()

    if args.sock:
        # A stale socket from an earlier run would make bind fail.
        try:
            if os.path.exists(args.sock) and not os.path.isdir(args.sock):
                os.unlink(args.sock)
        except OSError:
            pass
        server = UnixServer(args.sock, Handler)
        server.listen_desc = "unix:" + args.sock
    else:
        server = TCPServer(("127.0.0.1", args.port), Handler)
        server.listen_desc = "127.0.0.1:%d" % args.port

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    print("demo: listening on %s" % server.listen_desc, file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if args.sock:
            try:
                os.unlink(args.sock)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
