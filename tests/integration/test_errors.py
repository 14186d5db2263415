"""Error pages: every failure is a quick, clear HTTP status, never a hang or a crash; a target
swapped for another user's socket is a 502, never that user's app."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import (HTTPAPP, NOBODY, PY, RawConn, as_user, build_request, control_as, mkdtemp,
                      need_second_user, script_app, spawn, unix_connectable, wait_for)

QUICK = 2.0  # seconds: an error page is an answer, not a timeout


def timed(conn, raw, method="GET"):
    conn.send(raw)
    t0 = time.monotonic()
    r = conn.read_response(method)
    r.elapsed = time.monotonic() - t0
    return r


def ask(gw, sni, host, target="/", cookie=None, headers=()):
    with RawConn(gw.port, sni, timeout=10) as c:
        return timed(c, build_request("GET", target, host, headers=headers, cookie=cookie))


def is_html(r):
    return "text/html" in (r.header("Content-Type") or "").lower()


@pytest.fixture
def direct(gateway):
    """A test app started by the test and registered over the control socket."""
    made = []

    def make(tcp=False, **kw):
        a = gateway.start_direct_app(tcp=tcp)
        kw.setdefault("pid", False)  # the route must outlive the app: we want 502, not 404
        gateway.register(a, **kw)
        a.session = gateway.login(a.alias, a.link)
        made.append(a)
        return a

    yield make
    for a in made:
        a.stop()
        gateway.control({"op": "remove", "alias": a.alias})


def test_unknown_alias_404(gateway):
    r = ask(gateway, "no-such-app.localhost", f"no-such-app.localhost:{gateway.port}")
    assert r.status == 404, r
    assert is_html(r), r.headers
    assert r.elapsed < QUICK


def test_unknown_alias_with_cookie_404(gateway, client):
    r = ask(gateway, "zebra-zebra-zebra.localhost", f"zebra-zebra-zebra.localhost:{gateway.port}",
            cookie=client.cookie)
    assert r.status == 404, r


@pytest.mark.parametrize("host,sni", [
    ("example.com", "example.com"),
    ("evil.example:{port}", "evil.example"),
    ("localhost.evil.example:{port}", "localhost.evil.example"),
    ("127.0.0.1:{port}", None),
])
def test_host_outside_domain_404(gateway, host, sni):
    host = host.format(port=gateway.port)
    r = ask(gateway, sni, host)
    assert r.status == 404, r
    assert r.elapsed < QUICK


def test_no_cookie_403_quick(gateway, app):
    r = ask(gateway, gateway.sni(app.alias), gateway.host(app.alias), "/hello")
    assert r.status == 403, r
    assert is_html(r), r.headers
    assert r.elapsed < QUICK


def test_error_pages_keep_connection_usable(gateway, client):
    """A 403/404 is an ordinary response: the next request on the connection works."""
    with client.conn() as c:
        r = timed(c, build_request("GET", "/hello", client.host))  # no cookie
        assert r.status == 403, r
        if not c.eof:
            r = timed(c, build_request("GET", "/hello", client.host, cookie=client.cookie))
            assert r.status == 200, r


def test_502_when_app_killed(gateway, direct):
    a = direct()
    assert a.session.get("/hello").status == 200
    a.kill()
    wait_for(lambda: a.proc.poll() is not None, 5, what="the app to die")
    with a.session.conn() as c:
        r = timed(c, build_request("GET", "/hello", a.session.host, cookie=a.session.cookie))
    assert r.status == 502, r
    assert is_html(r), r.headers
    assert r.elapsed < QUICK


def test_502_when_socket_removed(gateway, direct):
    a = direct()
    assert a.session.get("/hello").status == 200
    os.unlink(a.sock)
    with a.session.conn() as c:
        r = timed(c, build_request("GET", "/hello", a.session.host, cookie=a.session.cookie))
    assert r.status == 502, r
    assert r.elapsed < QUICK


def test_502_when_tcp_app_killed(gateway, direct):
    a = direct(tcp=True)
    assert a.session.get("/hello").status == 200
    a.kill()
    with a.session.conn() as c:
        r = timed(c, build_request("GET", "/hello", a.session.host, cookie=a.session.cookie))
    assert r.status == 502, r
    assert r.elapsed < QUICK


def test_502_recovers_when_app_returns(gateway, direct):
    a = direct()
    a.kill()
    assert a.session.get("/hello").status == 502
    from conftest import HTTPAPP, PY, spawn
    import subprocess
    p = spawn([PY, HTTPAPP, "--unix", a.sock], stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a.proc = p
    wait_for(lambda: unix_connectable(a.sock), 10, what="the app to listen again")
    assert a.session.get("/hello").status == 200


def test_502_on_malformed_app_response(gateway, client):
    r = client.get("/garbage")
    assert r.status == 502, r
    assert client.get("/hello").status == 200


def test_502_when_app_closes_without_answer(gateway, client):
    with client.conn() as c:
        r = timed(c, build_request("GET", "/close", client.host, cookie=client.cookie))
    assert r.status == 502, r
    assert r.elapsed < QUICK


VICTIM = ("import socket,sys\n"
          "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)\n"
          "while True:\n"
          "    c,_=s.accept(); d=c.recv(65536)\n"
          "    if d: open(sys.argv[2],'ab').write(d)\n"
          "    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 7\\r\\nConnection: close\\r\\n\\r\\nSECRET\\n')\n"
          "    c.close()\n")


def test_socket_swapped_for_another_users_is_refused(fresh_gateway):
    gw = fresh_gateway
    need_second_user("app")
    # Another user's private app.
    vdir = mkdtemp("jgv-")
    os.chmod(vdir, 0o755)
    vsockdir = vdir / "private"
    vsockdir.mkdir(mode=0o700)
    os.chown(vsockdir, NOBODY, NOBODY)
    hits = vdir / "hits"
    hits.touch()
    os.chmod(hits, 0o666)
    with script_app(VICTIM, vsockdir / "app.sock", hits, prefix=as_user(NOBODY)):
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


def test_503_while_starting_then_ready(gateway, tmp_path):
    d = mkdtemp("jgs-")
    sock = str(d / "app.sock")
    ans = gateway.control({"op": "register", "name": "slowstart", "socket": sock, "starting": True})
    assert ans.get("ok"), ans
    alias = ans["alias"]
    try:
        s = gateway.login(alias, ans["link"])
        with s.conn() as c:
            r = timed(c, build_request("GET", "/hello", s.host, cookie=s.cookie))
        assert r.status == 503, r
        assert r.elapsed < QUICK
        assert r.header("Retry-After") is not None, r.headers
        assert is_html(r), r.headers
        r = s.get("/_jobgate/status")
        assert r.status == 200 and r.json().get("state") == "starting", r

        p = spawn([PY, HTTPAPP, "--unix", sock], stdin=subprocess.DEVNULL,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: unix_connectable(sock), 10, what="the app to listen")
            ans = gateway.control({"op": "ready", "alias": alias})
            assert ans.get("ok"), ans
            r = s.get("/hello")
            assert r.status == 200 and r.body == b"hello\n", r
        finally:
            p.kill()
            p.wait()
    finally:
        gateway.control({"op": "remove", "alias": alias})
        shutil.rmtree(d, ignore_errors=True)


def test_ready_refused_when_socket_missing(gateway):
    from conftest import mkdtemp
    d = mkdtemp("jgs-")
    ans = gateway.control({"op": "register", "name": "never", "socket": str(d / "app.sock"),
                           "starting": True})
    assert ans.get("ok"), ans
    try:
        ans2 = gateway.control({"op": "ready", "alias": ans["alias"]})
        assert ans2.get("ok") is False, f"ready accepted with no socket: {ans2}"
    finally:
        gateway.control({"op": "remove", "alias": ans["alias"]})
        shutil.rmtree(d, ignore_errors=True)


def test_removed_route_404(gateway, direct):
    a = direct()
    assert a.session.get("/hello").status == 200
    ans = gateway.control({"op": "remove", "alias": a.alias})
    assert ans.get("ok"), ans
    r = a.session.get("/hello")
    assert r.status == 404, r


def test_control_errors(gateway):
    for req, code in [({"op": "frobnicate"}, "invalid"),
                      ({"op": "remove", "alias": "no-such-alias"}, "not_found"),
                      ({"op": "link", "alias": "no-such-alias"}, "not_found"),
                      ({"op": "register", "socket": "relative/path.sock"}, "invalid"),
                      ({"op": "register", "socket": "/tmp/x.sock", "port": 80}, "invalid")]:
        ans = gateway.control(req)
        assert ans.get("ok") is False and ans.get("code") == code, (req, ans)
        assert ans.get("error"), ans


def test_control_refuses_socket_in_shared_dir(gateway, tmp_path):
    """Invariant I2/I3: a socket in a directory others can write is not registered."""
    import socket as socketmod
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    path = str(d / "s.sock")
    s = socketmod.socket(socketmod.AF_UNIX)
    s.bind(path)
    s.listen()
    try:
        ans = gateway.control({"op": "register", "socket": path})
        assert ans.get("ok") is False and ans.get("code") == "forbidden", ans
    finally:
        s.close()


def test_control_garbage_line(gateway):
    from conftest import Control
    c = Control(gateway.control_path)
    try:
        c.f.write(b"this is not json\n")
        c.f.flush()
        line = c.f.readline()
        import json
        ans = json.loads(line)
        assert ans.get("ok") is False and ans.get("code") == "invalid", ans
        assert c.call({"op": "hello"}).get("ok") is True
    finally:
        c.close()


def test_gateway_still_alive(gateway, client):
    gateway.assert_alive()
    assert client.get("/hello").status == 200


def test_control_personal_refuses_other_user(gateway):
    """Personal mode accepts only the gateway's own user on the control socket."""
    dirs = (gateway.root, gateway.runtime, gateway.control_path.parent)
    modes = [os.stat(d).st_mode & 0o7777 for d in dirs]
    for d in dirs:
        os.chmod(d, 0o711)
    try:
        out = control_as(NOBODY, gateway.control_path, [{"op": "list"}])
        # One answer (None: the gateway closed without one), or a connect error.
        ans = (out[0] or {"closed": True}) if isinstance(out, list) else out
        assert ans.get("ok") is not True, f"another user listed the routes: {ans}"
        if "ok" in ans:
            assert ans.get("code") == "forbidden", ans
    finally:
        for d, m in zip(dirs, modes):
            os.chmod(d, m)


def test_log_lines_cannot_be_forged(gateway):
    """Issue 13, log injection: an alias or an op name with a newline in a control request
    forged a whole line of the gateway's log. Every message is escaped in the logger."""
    forged = "2026-01-01T00:00:00.000Z jobgated[1] info: FORGED route add alias=evil"
    for req in ({"op": "remove", "alias": "x\n" + forged}, {"op": "link", "alias": "y\r\n" + forged},
                {"op": "bogus\n" + forged}):
        ans = gateway.control(req)
        assert not ans.get("ok"), ans
    wait_for(lambda: gateway.log_path.read_text().count("\\x0a2026-01-01") >= 2, 5,
             what="the escaped requests in the log")
    lines = gateway.log_path.read_text().splitlines()
    assert not [ln for ln in lines if ln.startswith("2026-01-01") or "FORGED" in ln.split(":")[0]]
    assert [ln for ln in lines if "\\x0d\\x0a2026-01-01" in ln], lines[-5:]
