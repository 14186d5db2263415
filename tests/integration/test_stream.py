"""Large bodies are streamed, not buffered: the gateway's peak RSS (VmHWM) stays under 64 MiB.

Each test starts the transfer and then pauses on one side for a couple of seconds, so that a
gateway without backpressure would pile the stream up in memory. The same holds for what the
gateway itself says to a browser that never reads: its own answers to pipelined requests, and
an app's flood of interim (1xx) responses.
"""
import hashlib
import json
import socket
import time

import pytest

from conftest import (BLOCK, MiB, RawConn, build_request, cpu_seconds, mkdtemp, script_app,
                      start_stalled_transfer)

GiB = 1 << 30
RSS_LIMIT = 64 * MiB

_sha_cache = {}
CMP = BLOCK * 8  # 512 KiB: longer than any piece read from the socket + 256


def pattern_sha256(n):
    if n not in _sha_cache:
        h = hashlib.sha256()
        big = BLOCK * 16  # 1 MiB, the pattern is periodic in 256
        full, rest = divmod(n, len(big))
        for _ in range(full):
            h.update(big)
        h.update(big[:rest])
        _sha_cache[n] = h.hexdigest()
    return _sha_cache[n]


@pytest.fixture
def streaming(fresh_gateway):
    gw = fresh_gateway
    app = gw.publish_http()
    s = gw.login(app.alias, app.link)
    return gw, s


def download(gw, s, n, chunked, pause=2.0):
    c = s.conn(timeout=60)
    try:
        q = f"/bytes?n={n}" + ("&chunked=1" if chunked else "")
        c.send(build_request("GET", q, s.host, cookie=s.cookie))
        time.sleep(pause)  # the app keeps writing; the gateway must not buffer it all
        r = c.read_head()
        assert r.status == 200, r
        if chunked:
            assert "chunked" in (r.header("Transfer-Encoding") or "").lower(), r.headers
        else:
            assert r.header("Content-Length") == str(n), r.headers
        off = 0
        peak = 0
        next_check = 0
        for d in c.iter_body(r):
            k = off % 256
            if d != CMP[k: k + len(d)]:
                # pieces are at most 256 KiB; compare the slow way to locate the damage
                exp = (BLOCK * (len(d) // len(BLOCK) + 2))[k: k + len(d)]
                if d != exp:
                    bad = next(i for i in range(len(d)) if d[i] != exp[i])
                    raise AssertionError(f"download corrupt at byte {off + bad}")
            off += len(d)
            if off >= next_check:
                peak = max(peak, gw.vmhwm())
                next_check += 64 * MiB
        assert off == n, f"download ended after {off} of {n} bytes"
        return max(peak, gw.vmhwm())
    finally:
        c.close()


def upload(gw, s, n, chunked, delay=2):
    c = s.conn(timeout=60)
    try:
        hs = [] if chunked else [("Content-Length", str(n))]
        c.send(build_request("POST", f"/sink?delay={delay}", s.host, headers=hs,
                             chunked=chunked, cookie=s.cookie))
        piece = BLOCK * 16  # 1 MiB
        left = n
        sent = 0
        peak = 0
        while left:
            d = piece[: min(left, len(piece))]
            c.send((b"%x\r\n" % len(d) + d + b"\r\n") if chunked else d)
            left -= len(d)
            sent += len(d)
            if sent % (64 * MiB) == 0:
                peak = max(peak, gw.vmhwm())
        if chunked:
            c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200, r
        out = json.loads(r.body)
        assert out["bytes"] == n, out
        assert out["sha256"] == pattern_sha256(n), "upload corrupted on the way"
        assert out["framing"] == ("chunked" if chunked else "length"), out
        return max(peak, gw.vmhwm())
    finally:
        c.close()


@pytest.mark.slow
def test_download_1gib_content_length(streaming):
    gw, s = streaming
    peak = download(gw, s, GiB, chunked=False)
    print(f"gateway VmHWM after 1 GiB download: {peak / MiB:.1f} MiB")
    assert peak < RSS_LIMIT, f"gateway peak RSS {peak / MiB:.1f} MiB during a 1 GiB download"


@pytest.mark.slow
def test_upload_1gib_content_length(streaming):
    gw, s = streaming
    peak = upload(gw, s, GiB, chunked=False)
    print(f"gateway VmHWM after 1 GiB upload: {peak / MiB:.1f} MiB")
    assert peak < RSS_LIMIT, f"gateway peak RSS {peak / MiB:.1f} MiB during a 1 GiB upload"


@pytest.mark.slow
def test_download_256mib_chunked(streaming):
    gw, s = streaming
    peak = download(gw, s, 256 * MiB, chunked=True)
    print(f"gateway VmHWM after 256 MiB chunked download: {peak / MiB:.1f} MiB")
    assert peak < RSS_LIMIT, f"gateway peak RSS {peak / MiB:.1f} MiB (chunked download)"


@pytest.mark.slow
def test_upload_256mib_chunked(streaming):
    gw, s = streaming
    peak = upload(gw, s, 256 * MiB, chunked=True)
    print(f"gateway VmHWM after 256 MiB chunked upload: {peak / MiB:.1f} MiB")
    assert peak < RSS_LIMIT, f"gateway peak RSS {peak / MiB:.1f} MiB (chunked upload)"


@pytest.mark.slow
def test_slow_reader_does_not_stall_others(streaming):
    """While one client leaves a big download unread, other requests are answered at once."""
    gw, s = streaming
    stalled = s.conn(timeout=30)
    try:
        stalled.send(build_request("GET", f"/bytes?n={GiB}", s.host, cookie=s.cookie))
        time.sleep(1)
        for _ in range(5):
            t0 = time.monotonic()
            r = s.get("/hello")
            assert r.status == 200 and r.body == b"hello\n", r
            assert time.monotonic() - t0 < 2
        assert gw.vmhwm() < RSS_LIMIT
    finally:
        stalled.close()


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_a_stalled_transfer_costs_no_cpu(streaming, direction):
    """A client that stops reading a download, or an app that does not read an upload yet:
    the buffers fill, nothing moves, and the gateway must not spin meanwhile (libevent 2.1.12
    re-runs a read callback while its input sits at a read high-water mark with reading on;
    test_tunnel.py has the same through the tunnel)."""
    gw, s = streaming
    c = start_stalled_transfer(s, direction)
    try:
        time.sleep(2)  # the buffers fill
        cpu0 = cpu_seconds(gw.proc.pid)
        time.sleep(3)
        cpu = cpu_seconds(gw.proc.pid) - cpu0
        assert cpu < 0.5, f"jobgated used {cpu:.2f} s of CPU over 3 s of a stalled {direction}"
    finally:
        c.close()


@pytest.mark.rss
def test_unread_gateway_answers_do_not_pile_up(fresh_gateway):
    # Pipelined requests for an unknown app, never reading the 404s: the gateway must stop
    # reading rather than buffer its answers without bound.
    gw = fresh_gateway
    before = gw.vmhwm()
    req = build_request("GET", "/", gw.host("nosuch-app-here"))
    c = RawConn(gw.port, gw.sni("nosuch-app-here"))
    c.settimeout(0.5)
    sent, deadline = 0, time.monotonic() + 4
    try:
        chunk = req * 256
        while time.monotonic() < deadline:
            try:
                c.send(chunk)
                sent += len(chunk)
            except (socket.timeout, OSError):
                break
    finally:
        c.close()
    grown = gw.vmhwm() - before
    assert grown < 32 * 1024 * 1024, f"RSS grew by {grown} bytes after sending {sent} bytes"
    gw.assert_alive()


FLOOD_1XX = ("import socket,sys,os\n"
             "p=sys.argv[1]\n"
             "s=socket.socket(socket.AF_UNIX); s.bind(p); s.listen(4)\n"
             "c,_=s.accept(); c.recv(65536)\n"
             "m=b'HTTP/1.1 102 Processing\\r\\nX-Pad: ' + b'a'*1000 + b'\\r\\n\\r\\n'\n"
             "try:\n"
             "    while True: c.sendall(m*64)\n"
             "except OSError: pass\n")


@pytest.mark.rss
def test_interim_response_flood_is_bounded(fresh_gateway):
    gw = fresh_gateway
    d = mkdtemp("jgf-")
    sock = d / "app.sock"
    with script_app(FLOOD_1XX, sock):
        ans = gw.control({"op": "register", "name": "flood", "socket": str(sock)})
        assert ans["ok"], ans
        s = gw.login(ans["alias"], ans["link"])
        before = gw.vmhwm()
        c = s.conn()
        c.send(build_request("GET", "/", s.host, cookie=s.cookie))
        time.sleep(4)  # the browser never reads
        c.close()
        grown = gw.vmhwm() - before
        assert grown < 32 * 1024 * 1024, f"RSS grew by {grown} bytes"
        gw.assert_alive()
