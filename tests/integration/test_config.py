"""Shared mode from a config file: --check, errors with FILE:LINE:, limits and timeouts."""
import os
import socket
import subprocess
import time

import pytest

from conftest import (JOBGATED, NOBODY, PY, Gateway, _finish, as_user, build_request, control_as,
                      free_port, need_second_user, start_gateway, tcp_connectable, wait_for)


def check(path, timeout=10):
    return subprocess.run([JOBGATED, "--check", "-c", str(path)], capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


VALID = """\
# a complete shared-mode configuration
[gateway]
listen = 127.0.0.1:{port}
domain = apps.example.org
public_port = 443
state_dir = {dir}/state
control_socket = {dir}/control.sock
log = stderr
max_connections = 500

; limits
[limits]
request_line = 8192
header_bytes = 32768
headers = 100

[timeouts]
handshake = 10s
request_head = 30
idle = 75s
connect = 10s
io = 5m
tunnel = 1h

[links]
ttl = 10m
session_ttl = 12h

[tunnel]
hello_wait = 5s
pending_max = 1024
pending_per_address = 32

[quota]
routes = 256
links = 1024
tunnels = 64
control_clients = 16
held = 64
"""


def test_check_valid_file(binaries, tmp_path):
    f = tmp_path / "ok.conf"
    f.write_text(VALID.format(port=free_port(), dir=tmp_path))
    t0 = time.monotonic()
    out = check(f)
    assert out.returncode == 0, out
    assert time.monotonic() - t0 < 5
    assert not (tmp_path / "control.sock").exists(), "--check started a gateway"


def test_check_minimal_file(binaries, tmp_path):
    f = tmp_path / "min.conf"
    f.write_text(f"[gateway]\nlisten = 127.0.0.1:{free_port()}\ndomain = localhost\n"
                 f"state_dir = {tmp_path}/s\ncontrol_socket = {tmp_path}/c.sock\n")
    out = check(f)
    assert out.returncode == 0, out


JUNK = [
    # (id, text, line of the error)
    ("no_equals", "[gateway]\ndomain = localhost\nthis line is junk\n", 3),
    ("unknown_section", "[gateway]\ndomain = localhost\n\n[nonsense]\nx = 1\n", 4),
    ("unknown_key", "[gateway]\ndomain = localhost\ncolour = blue\n", 3),
    ("duplicate_key", "[gateway]\ndomain = localhost\n# c\ndomain = other\n", 4),
    ("headers_out_of_range", "[gateway]\ndomain = localhost\n[limits]\nheaders = 100000\n", 4),
    ("request_line_too_small", "[limits]\nrequest_line = 10\n", 2),
    ("bad_duration", "[timeouts]\nidle = 75s\nrequest_head = soon\n", 3),
    ("negative_duration", "[timeouts]\nconnect = -5s\n", 2),
    ("bad_listen", "[gateway]\nlisten = nowhere\n", 2),
    ("bad_port", "[gateway]\nlisten = 127.0.0.1:99999\n", 2),
    ("unclosed_section", "[gateway\ndomain = localhost\n", 1),
    ("cert_without_key", "[gateway]\ndomain = localhost\ncert = /etc/x.crt\n", 3),
    ("binary_junk", "[gateway]\n\x01\x02\x03\xff\n", 2),
    ("control_quota_over_total", "[quota]\nroutes = 10\ncontrol_clients = 600\n", 3),
    ("hello_wait_too_long", "[tunnel]\nhello_wait = 2m\n", 2),
]


@pytest.mark.parametrize("name,text,line", JUNK, ids=[j[0] for j in JUNK])
def test_check_junk_reports_file_and_line(binaries, tmp_path, name, text, line):
    f = tmp_path / f"{name}.conf"
    f.write_bytes(text.encode("latin-1"))
    out = check(f)
    assert out.returncode != 0, f"junk accepted: {text!r}"
    err = out.stderr.decode("utf-8", "replace")
    if name == "cert_without_key":
        # "both or neither": the error may point at the cert line or at the end of the file
        assert f"{f}:" in err, err
    else:
        assert f"{f}:{line}:" in err, f"expected '{f}:{line}:' in stderr, got {err!r}"


def test_check_missing_file(binaries, tmp_path):
    out = check(tmp_path / "nope.conf")
    assert out.returncode != 0
    assert str(tmp_path / "nope.conf") in out.stderr.decode(), out.stderr


def test_daemon_refuses_junk_config(binaries, tmp_path):
    f = tmp_path / "bad.conf"
    f.write_text("[gateway]\nlisten = 127.0.0.1:1\nbogus\n")
    p = subprocess.run([JOBGATED, "-f", "-c", str(f)], capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    assert f"{f}:3:" in p.stderr.decode(), p.stderr


# --------------------------------------------------------------------------- a shared gateway

LIMITS = {
    "limits": {"request_line": "512", "header_bytes": "4096", "headers": "20"},
    "timeouts": {"handshake": "2s", "request_head": "2s", "idle": "2s", "io": "3s",
                 "tunnel": "3s"},
}


@pytest.fixture(scope="module")
def shared(binaries):
    from conftest import _finish, _gateway
    gw = _gateway(LIMITS, name="shared")
    yield gw
    _finish(gw)


@pytest.fixture(scope="module")
def shared_app(shared):
    a = shared.start_direct_app()
    shared.register(a, name="sharedapp")
    a.session = shared.login(a.alias, a.link)
    yield a
    a.stop()


def test_shared_mode_hello(shared):
    info = shared.control({"op": "hello"})
    assert info.get("ok") and info.get("mode") == "shared", info
    assert info.get("domain") == "localhost", info
    assert info.get("url_suffix") == f".localhost:{shared.port}", info


def test_shared_app_served(shared_app):
    r = shared_app.session.get("/hello")
    assert r.status == 200 and r.body == b"hello\n", r


def closed_after(conn, limit):
    """Seconds until the peer closes the connection (fails after `limit`)."""
    t0 = time.monotonic()
    conn.expect_close(limit)
    return time.monotonic() - t0


def test_request_head_timeout(shared, shared_app):
    s = shared_app.session
    with s.conn() as c:
        c.send(f"GET /hello HTTP/1.1\r\nHost: {s.host}\r\nX-Half: ".encode())
        t = closed_after(c, 6.5)
    assert t >= 1.5, f"closed after {t:.1f} s, before request_head = 2s"


def test_request_head_timeout_not_reset_by_trickle(shared, shared_app):
    """A slow-loris client trickling bytes is still cut off by the head timeout."""
    s = shared_app.session
    with s.conn() as c:
        c.send(f"GET /hello HTTP/1.1\r\nHost: {s.host}\r\n".encode())
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 8:
            try:
                c.send(b"X-T: 1\r\n")
            except OSError:
                closed = True
                break
            if not c.quiet_for(0.5) or c.eof:
                closed = True
                break
        assert closed and time.monotonic() - t0 < 7, "a trickling head kept the connection open"


def test_handshake_timeout(shared):
    s = socket.create_connection(("127.0.0.1", shared.port), timeout=10)
    try:
        t0 = time.monotonic()
        s.settimeout(7)
        try:
            d = s.recv(100)
        except ConnectionResetError:
            d = b""
        except socket.timeout:
            raise AssertionError("a client that never starts TLS was not closed within 7 s")
        t = time.monotonic() - t0
        assert d == b"", d
        assert 1.5 <= t <= 6.5, f"closed after {t:.1f} s with handshake = 2s"
    finally:
        s.close()


def test_idle_timeout(shared, shared_app):
    s = shared_app.session
    with s.conn() as c:
        r = s.get("/hello", conn=c)
        assert r.status == 200
        t = closed_after(c, 6.5)
    assert t >= 1.5, f"idle keep-alive connection closed after {t:.1f} s, before idle = 2s"


def test_config_request_line_limit(shared, shared_app):
    s = shared_app.session
    with s.conn() as c:
        c.send(build_request("GET", "/" + "a" * 600, s.host, cookie=s.cookie))
        r = c.read_head()
        assert r.status == 414, r
        c.expect_close(2)
    r = s.get("/hello?" + "a" * 300)
    assert r.status == 200, r


def test_config_field_count_limit(shared, shared_app):
    s = shared_app.session
    with s.conn() as c:
        c.send(build_request("GET", "/hello", s.host, cookie=s.cookie,
                             headers=[(f"X-{i}", "1") for i in range(30)]))
        r = c.read_head()
        assert r.status == 431, r
        c.expect_close(2)
    r = s.get("/hello", headers=[(f"X-{i}", "1") for i in range(10)])
    assert r.status == 200, r


def test_config_head_size_limit(shared, shared_app):
    s = shared_app.session
    with s.conn() as c:
        c.send(build_request("GET", "/hello", s.host, cookie=s.cookie,
                             headers=[("X-Big", "b" * 5000)]))
        r = c.read_head()
        assert r.status == 431, r
        c.expect_close(2)
    r = s.get("/hello", headers=[("X-Big", "b" * 2000)])
    assert r.status == 200, r


def test_io_timeout_stalled_upload(shared, shared_app):
    """A request body that stops arriving is cut off after `io` (3 s)."""
    s = shared_app.session
    with s.conn() as c:
        c.send(build_request("POST", "/sink", s.host, cookie=s.cookie,
                             headers=[("Content-Length", "1000")]) + b"x" * 10)
        t = closed_after(c, 9)
    assert t >= 2, f"closed after {t:.1f} s, before io = 3s"


def test_io_timeout_app_never_answers(shared, shared_app):
    """An app that never answers gets the client a 504/502 after `io` (3 s), not a hang."""
    s = shared_app.session
    with s.conn() as c:
        c.send(build_request("GET", "/stall", s.host, cookie=s.cookie))
        c.settimeout(9)
        t0 = time.monotonic()
        try:
            r = c.read_head()
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"no answer within 9 s for a stalled app ({e!r})")
        t = time.monotonic() - t0
    assert r.status in (502, 504), r
    assert 2 <= t <= 8, f"answered after {t:.1f} s with io = 3s"


def test_tunnel_timeout_idle_websocket(shared):
    """An upgraded connection with no traffic is closed after `tunnel` (3 s)."""
    from conftest import WSAPP
    a = shared.start_direct_app(script=WSAPP)
    shared.register(a, name="wsidle")
    sess = shared.login(a.alias, a.link)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    with sess.conn() as c:
        c.send(build_request("GET", "/", sess.host, cookie=sess.cookie, headers=[
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13")]))
        r = c.read_head()
        assert r.status == 101, r
        t = closed_after(c, 10)
    a.stop()
    assert t >= 2, f"idle WebSocket closed after {t:.1f} s, before tunnel = 3s"


def test_link_and_session_ttl_from_config(make_gateway):
    from conftest import link_target, parse_set_cookie
    gw = make_gateway({"links": {"ttl": "2s", "session_ttl": "1m"}}, name="ttl")
    a = gw.start_direct_app()
    ans = gw.register(a)
    assert ans["expires"] - time.time() <= 3, f"link ttl from config ignored: {ans}"
    stale = gw.new_link(a.alias)
    with gw.connect(a.alias) as c:
        c.send(build_request("GET", link_target(a.link), gw.host(a.alias)))
        r = c.read_response()
    assert r.status == 303, r
    for v in r.header_all("Set-Cookie"):
        _, _, attrs = parse_set_cookie(v)
        if "max-age" in attrs:
            assert 0 < int(attrs["max-age"]) <= 60, f"session_ttl = 1m but {v}"
    time.sleep(2.5)
    with gw.connect(a.alias) as c:
        c.send(build_request("GET", link_target(stale), gw.host(a.alias)))
        assert c.read_response().status == 403, "link outlived ttl = 2s"


def test_shared_gateway_survived(shared, shared_app):
    shared.assert_alive()
    assert shared_app.session.get("/hello").status == 200


# --------------------------------------------------------------------------- other users


def test_shared_control_other_user_sees_only_own(shared, shared_app):
    """I2: any local user may connect in shared mode, but sees and changes only its own routes."""
    os.chmod(shared.root, 0o711)
    tcp_app = shared.start_direct_app(tcp=True)
    try:
        out = control_as(NOBODY, shared.control_path, [
            {"op": "hello"},
            {"op": "list"},
            {"op": "link", "alias": shared_app.alias},
            {"op": "remove", "alias": shared_app.alias},
            {"op": "register", "socket": shared_app.sock},
            {"op": "register", "port": tcp_app.port},
            {"op": "list", "uid": 0},
        ])
        assert isinstance(out, list), f"nobody could not use the shared control socket: {out}"
        hello, lst, link, rm, reg_sock, reg_port, lst_root = out
        assert hello.get("ok") and hello.get("uid") == NOBODY, hello
        assert lst.get("ok") and shared_app.alias not in [r["alias"] for r in lst["routes"]], lst
        assert link.get("ok") is False, f"nobody made a link to root's app: {link}"
        assert rm.get("ok") is False, f"nobody removed root's app: {rm}"
        assert reg_sock.get("ok") is False and reg_sock.get("code") == "forbidden", reg_sock
        assert reg_port.get("ok") is False and reg_port.get("code") == "forbidden", reg_port
        assert lst_root.get("ok") is False and lst_root.get("code") == "forbidden", lst_root
        assert shared_app.session.get("/hello").status == 200
    finally:
        tcp_app.stop()


def test_a_second_gateway_on_the_same_port_is_refused(tmp_path):
    """Issue 13: with several workers the listeners use SO_REUSEPORT, and a second jobgated of
    the same user on the same port started without a word and took a share of the
    connections. It must refuse to start, and say why."""
    gw = start_gateway(Gateway({"gateway": {"workers": "2"}}, name="first"))
    try:
        conf = gw.config_path.read_text()
        for d in ("state", "run"):
            (tmp_path / d).mkdir(mode=0o700)
        conf = conf.replace(str(gw.state_dir), str(tmp_path / "state")) \
                   .replace(str(gw.control_path), str(tmp_path / "run" / "control.sock"))
        (tmp_path / "second.conf").write_text(conf)
        r = subprocess.run([JOBGATED, "-f", "-c", str(tmp_path / "second.conf")],
                           capture_output=True, timeout=20)
        assert r.returncode != 0, r
        assert b"another process listens there" in r.stderr, r.stderr
        assert gw.proc.poll() is None
    finally:
        _finish(gw)


def test_a_second_gateway_on_the_same_state_is_refused(tmp_path):
    """Two gateways on other ports and control sockets but one state directory would share
    one database and one agent CA behind each other's back: the second refuses to start and
    names the first."""
    gw = start_gateway(Gateway({}, name="first"))
    try:
        (tmp_path / "run").mkdir(mode=0o700)
        conf = gw.config_path.read_text() \
                 .replace(f"127.0.0.1:{gw.port}", f"127.0.0.1:{free_port()}") \
                 .replace(str(gw.control_path), str(tmp_path / "run" / "control.sock"))
        (tmp_path / "second.conf").write_text(conf)
        r = subprocess.run([JOBGATED, "-f", "-c", str(tmp_path / "second.conf")],
                           capture_output=True, timeout=20)
        assert r.returncode != 0, r
        assert f"another jobgated (pid {gw.proc.pid}) uses the state directory".encode() \
            in r.stderr, r.stderr
        assert gw.proc.poll() is None
        assert (gw.state_dir / "jobgated.lock").read_text().strip() == str(gw.proc.pid)
    finally:
        _finish(gw)


def test_shared_mode_refuses_root_without_an_account(binaries):
    """Issue 13: a shared gateway started as root must be told which account to drop to once
    it has bound its port ([gateway] user; user = root to stay root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    gw = Gateway({"gateway": {"user": None}}, name="rootless")
    try:
        with pytest.raises(AssertionError, match="exited with 1 during startup"):
            gw.start()
        assert "a shared gateway does not run as root: set [gateway] user = ACCOUNT" in \
            gw.log_path.read_text()
    finally:
        gw.cleanup()


def test_shared_mode_drops_to_its_account_and_serves(binaries):
    """With user = nobody the gateway binds as root, gives its state to nobody, becomes nobody
    for good, and serves (here an app of nobody's on a loopback port)."""
    need_second_user("app")
    gw = Gateway({"gateway": {"user": "nobody"}}, name="dropped")
    os.chmod(gw.root, 0o711)
    app = None
    try:
        start_gateway(gw)
        status = open(f"/proc/{gw.proc.pid}/status").read()
        uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
        assert uids == [str(NOBODY)] * 4, status
        assert os.stat(gw.state_dir / "jobgate.db").st_uid == NOBODY
        assert "running as nobody" in gw.log_path.read_text()
        port = free_port()
        app = subprocess.Popen([*as_user(NOBODY), PY, "-m", "http.server", str(port),
                                "--bind", "127.0.0.1", "--directory", "/"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        wait_for(lambda: tcp_connectable(port), 10, what="nobody's app to listen")
        out = control_as(NOBODY, gw.control_path, [{"op": "register", "port": port}])
        assert out[0]["ok"], out
        s = gw.login(out[0]["alias"], out[0]["link"])
        assert s.get("/").status == 200
        # SIGHUP as nobody: a configuration file only root may read leaves the configuration
        # as it runs and renews the certificate alone; readable again, it applies.
        os.chmod(gw.config_path, 0o600)
        lines = gw.reconfigure({"links": {"ttl": "1h"}}, expect="SIGHUP: certificate read again")
        assert "Permission denied" in lines and "the certificate alone is read again" in lines
        assert "configuration applied" not in lines, lines
        os.chmod(gw.config_path, 0o644)
        gw.reconfigure({}, expect="SIGHUP: configuration applied ([links] ttl)")
        assert gw.stop() == 0
    finally:
        if app:
            app.kill()
            app.wait()
        _finish(gw)
