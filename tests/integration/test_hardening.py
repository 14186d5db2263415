"""Defences found by review: a UNIX target swapped for another user's socket, a browser that
never reads the gateway's own answers, an app that floods interim responses, and requests
that must not be sent to an app twice."""
import os
import pathlib
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import PY, RawConn, build_request, kill_group, mkdtemp, spawn, wait_for

NOBODY = 65534
VICTIM = ("import socket,sys\n"
          "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)\n"
          "while True:\n"
          "    c,_=s.accept(); d=c.recv(65536)\n"
          "    if d: open(sys.argv[2],'ab').write(d)\n"
          "    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 7\\r\\nConnection: close\\r\\n\\r\\nSECRET\\n')\n"
          "    c.close()\n")


def test_socket_swapped_for_another_users_is_refused(fresh_gateway):
    gw = fresh_gateway
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run a second user's app")
    # Another user's private app.
    vdir = mkdtemp("jgv-")
    os.chmod(vdir, 0o755)
    vsockdir = vdir / "private"
    vsockdir.mkdir(mode=0o700)
    os.chown(vsockdir, NOBODY, NOBODY)
    hits = vdir / "hits"
    hits.touch()
    os.chmod(hits, 0o666)
    victim = spawn(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", PY,
                    "-c", VICTIM, str(vsockdir / "app.sock"), str(hits)],
                   stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (vsockdir / "app.sock").exists(), 10, what="the victim's socket")
        # Our own app registers fine, then its socket becomes a link to the victim's.
        app = gw.start_direct_app()
        gw.register(app)
        s = gw.login(app.alias, app.link)
        assert s.get("/hello").status == 200
        os.unlink(app.sock)
        os.symlink(vsockdir / "app.sock", app.sock)
        r = s.get("/hello")
        assert r.status == 502, r
        assert b"SECRET" not in r.body
        time.sleep(0.3)
        assert hits.read_bytes() == b"", "request bytes reached the other user's app"
    finally:
        kill_group(victim, sig=9)


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
    app = spawn([PY, "-c", FLOOD_1XX, str(sock)], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: sock.exists(), 10, what="the flooding app")
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
    finally:
        kill_group(app, sig=9)


CLOSER = ("import socket,sys\n"
          "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)\n"
          "while True:\n"
          "    c,_=s.accept()\n"
          "    d=c.recv(65536)\n"
          "    open(sys.argv[2],'ab').write(d.split(b'\\r\\n')[0]+b'\\n')\n"
          "    if b' /first ' in d:\n"
          "        c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n"
          "        d=c.recv(65536)\n"
          "        open(sys.argv[2],'ab').write(d.split(b'\\r\\n')[0]+b'\\n')\n"
          "    c.close()\n")


def test_post_on_a_closed_kept_connection_is_not_resent(fresh_gateway):
    # The app answers /first, then closes the kept connection as the next request arrives.
    # A POST may have acted already: the browser gets 502 and the app sees it once.
    gw = fresh_gateway
    d = mkdtemp("jgc-")
    os.chmod(d, 0o700)
    sock, log = d / "app.sock", d / "seen"
    app = spawn([PY, "-c", CLOSER, str(sock), str(log)], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: sock.exists(), 10, what="the app")
        ans = gw.control({"op": "register", "name": "closer", "socket": str(sock)})
        s = gw.login(ans["alias"], ans["link"])
        c = s.conn()
        c.send(build_request("GET", "/first", s.host, cookie=s.cookie))
        assert c.read_response().status == 200
        c.send(build_request("POST", "/pay", s.host, headers=[("Content-Length", "0")],
                             cookie=s.cookie))
        r = c.read_response("POST")
        assert r.status == 502, r
        time.sleep(0.3)
        seen = log.read_bytes().splitlines()
        assert seen.count(b"POST /pay HTTP/1.1") == 1, seen
        c.close()
    finally:
        kill_group(app, sig=9)
