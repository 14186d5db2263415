#!/usr/bin/python3
"""The upload half of the benchmark's app: an HTTP/1.1 server on a UNIX socket that reads
a request body (Content-Length or chunked) as fast as it comes, discards it and answers
204 with the byte count in X-Received. Keep-alive; one thread per connection.

    sinkapp.py --unix PATH
"""
import argparse
import os
import socket
import socketserver

CHUNK = 1 << 20


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                data = s.recv(65536)
                if not data:
                    return
                pending += data
                if len(pending) > 65536:
                    return
            head, _, pending = pending.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            fields = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                fields[k.strip().lower()] = v.strip()
            got = 0
            if b"content-length" in fields:
                left = int(fields[b"content-length"])
                take = min(left, len(pending))
                got += take
                left -= take
                pending = pending[take:]
                while left > 0:
                    n = s.recv_into(view, min(left, CHUNK))
                    if n == 0:
                        return
                    got += n
                    left -= n
            elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                got, pending = self.chunked(s, pending)
                if got is None:
                    return
            close = fields.get(b"connection", b"").lower() == b"close"
            s.sendall(b"HTTP/1.1 204 No Content\r\nX-Received: %d\r\n%s\r\n"
                      % (got, b"Connection: close\r\n" if close else b""))
            if close:
                return

    @staticmethod
    def chunked(s, pending):
        got = 0

        def need(n):
            nonlocal pending
            while len(pending) < n:
                data = s.recv(CHUNK)
                if not data:
                    raise EOFError
                pending += data

        try:
            while True:
                while b"\r\n" not in pending:
                    need(len(pending) + 1)
                line, _, pending = pending.partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while not pending.startswith(b"\r\n"):  # trailers, then the empty line
                        while b"\r\n" not in pending:
                            need(len(pending) + 1)
                        _, _, pending = pending.partition(b"\r\n")
                    return got, pending[2:]
                while size > 0:
                    if not pending:
                        need(1)
                    take = min(size, len(pending))
                    pending = pending[take:]
                    size -= take
                    got += take
                need(2)
                pending = pending[2:]
        except (EOFError, ValueError):
            return None, b""


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unix", required=True)
    a = ap.parse_args()
    if os.path.exists(a.unix):
        os.unlink(a.unix)
    with Server(a.unix, Handler) as srv:
        srv.serve_forever()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
