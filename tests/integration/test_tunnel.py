"""The reverse tunnel end to end: the real agent (`jobgate run -g URL`, src/agent/tunnel_*.c)
against the real gateway (src/gateway/tunnel*.c), on loopback. Multi-host runs (network
namespaces, MUNGE, SSH) are in test_tunnel_hosts.py; each side alone is in
test_agent_tunnel.py and test_tunnel_gateway.py."""
import os
import re
import signal
import threading
import time

import pytest

from conftest import (HTTPAPP, PY, Closed, Gateway, _finish, build_request, cpu_seconds,
                      need_second_user, one_cpu, start_gateway, start_stalled_transfer, vmhwm,
                      wait_for)


@pytest.fixture(scope="module", params=["workers", "one-worker"])
def gateway(request, binaries):
    """The module's personal gateway, twice: with its default workers (a browser connection
    reaches its tunnel stream in memory on the tunnel's worker, through a socketpair from
    another) and with one worker (every stream in memory)."""
    if request.param == "one-worker":
        with one_cpu():
            gw = start_gateway(Gateway(name="one-worker"))
        assert "with 1 worker" in gw.log_path.read_text()
    else:
        gw = start_gateway(Gateway())
    yield gw
    _finish(gw)


def gw_url(gw):
    return f"https://localhost:{gw.port}"


def publish_remote(gw, extra=(), name="httpapp", **kw):
    """`jobgate run -g https://localhost:PORT -- httpapp`: a personal gateway's own user on
    "another node" (same home directory), so the agent pins tls.crt and sends agent.token."""
    return gw.publish(httpapp_cmd(), name=name, extra=["-g", gw_url(gw), *extra], **kw)


def httpapp_cmd(tcp=False):
    return [PY, HTTPAPP, *(["--port", "{port}"] if tcp else ["--unix", "{socket}"])]


def test_run_through_the_tunnel(gateway):
    app = publish_remote(gateway)
    assert app.ready["url"].startswith("https://") and "/_jobgate/redeem/" in app.link
    r = gateway.route(app.alias)
    assert r["backend"].startswith("tunnel:") and r["state"] == "ready"
    s = gateway.login(app.alias, app.link)
    assert s.get("/hello").body == b"hello\n"
    r = s.request("POST", "/echo", body=b"y" * 300000)
    assert r.status == 200 and r.body == b"y" * 300000
    # The app exits: the route goes and `jobgate run` exits with the app's status.
    app.proc.send_signal(signal.SIGTERM)
    rc = app.wait_exit(15)
    assert rc in (0, 128 + signal.SIGTERM, 143), rc
    wait_for(lambda: gateway.route(app.alias) is None, 5, what="the route to go")


def test_tcp_app_through_the_tunnel(gateway):
    app = gateway.publish(httpapp_cmd(tcp=True), tcp=True, name="tcpapp",
                          extra=["-g", gw_url(gateway)])
    s = gateway.login(app.alias, app.link)
    assert s.get("/hello").body == b"hello\n"
    app.stop()


def test_websocket_through_the_tunnel(gateway):
    from conftest import PY
    wsapp = os.path.join(os.path.dirname(__file__), "apps", "wsapp.py")
    app = gateway.publish([PY, wsapp, "--unix", "{socket}"], name="ws",
                          extra=["-g", gw_url(gateway)])
    s = gateway.login(app.alias, app.link)
    import base64
    c = s.conn()
    key = base64.b64encode(os.urandom(16)).decode()
    c.send(build_request("GET", "/", s.host, headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13")], cookie=s.cookie))
    r = c.read_head()
    assert r.status == 101, r
    # One masked text frame "ping" and its echo.
    payload = b"ping through the tunnel"
    mask = os.urandom(4)
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))
    c.send(frame)
    head = c.read_exact(2)
    n = head[1] & 0x7f
    assert c.read_exact(n) == payload
    c.close()
    app.stop()


def test_refused_hello_stops_before_the_app_starts(fresh_gateway):
    gw = fresh_gateway
    (gw.state_dir / "agent.token").write_text("not-the-token\n")  # the gateway keeps the old hash
    marker = gw.root / "app-started"
    from conftest import PY
    app = gw.publish([PY, "-c", f"open('{marker}', 'w').close()"], name="never",
                     extra=["-g", gw_url(gw)], wait=False)
    rc = app.wait_exit(20)
    assert rc == 1
    err = app.log_path.read_text()
    assert "bad agent token" in err, err
    assert not marker.exists()


def test_untrusted_gateway_certificate_is_refused(gateway, tmp_path):
    # Another user's view: no pinned certificate in its state directory, no --ca.
    env = {"XDG_STATE_HOME": str(tmp_path)}
    r = gateway.cli("run", "-g", gw_url(gateway), "--", "true", env_extra=env, timeout=30)
    assert r.returncode == 1
    assert b"certificate" in r.stderr.lower(), r.stderr


@pytest.mark.slow
@pytest.mark.rss
@pytest.mark.timeout(900)
def test_one_gib_through_the_tunnel_bounded_memory(gateway):
    app = publish_remote(gateway, name="big")
    s = gateway.login(app.alias, app.link)
    n = 1 << 30
    c = s.conn(timeout=60)
    c.send(build_request("GET", f"/bytes?n={n}", s.host, cookie=s.cookie))
    r = c.read_head()
    assert r.status == 200
    got = len(c.buf)
    c.buf.clear()
    while got < n:
        d = c.sock.recv(1 << 20)
        assert d, f"closed after {got} bytes"
        got += len(d)
    c.close()
    assert got == n
    # Nothing holds a whole body: both sides stay far below the transfer size.
    assert gateway.vmhwm() < 64 << 20, gateway.vmhwm()
    assert vmhwm(app.proc.pid) < 64 << 20, vmhwm(app.proc.pid)
    app.stop()


@pytest.mark.timeout(180)
def test_stopped_reader_does_not_slow_the_other_99(gateway):
    app = publish_remote(gateway, name="many")
    s = gateway.login(app.alias, app.link)
    stalled = s.conn()
    stalled.send(build_request("GET", f"/bytes?n={1 << 30}", s.host, cookie=s.cookie))
    stalled.read_head()  # and then never read again
    size = 1 << 20
    results, errors = [], []

    def fetch():
        try:
            r = s.get(f"/bytes?n={size}", timeout=60)
            results.append(len(r.body))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=fetch) for _ in range(99)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    stalled.close()
    assert not errors, errors[:3]
    assert results == [size] * 99
    app.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_a_stalled_transfer_costs_no_cpu(gateway, direction):
    """A browser that stops reading (or an app that does not read the body yet) fills its
    stream's window and the buffers behind it; from then on nothing moves, and neither end may
    spin. (libevent 2.1.12 re-runs a read callback for as long as its input sits at a read
    high-water mark: a stream waiting for its window cost a whole core until the bridge paused
    its reading itself.)"""
    app = publish_remote(gateway, name="stall")
    s = gateway.login(app.alias, app.link)
    c = start_stalled_transfer(s, direction)
    time.sleep(2)  # windows and socket buffers fill
    agent0, gw0 = cpu_seconds(app.proc.pid), cpu_seconds(gateway.proc.pid)
    time.sleep(3)
    agent, gw = cpu_seconds(app.proc.pid) - agent0, cpu_seconds(gateway.proc.pid) - gw0
    c.close()
    assert agent < 0.5 and gw < 0.5, \
        f"CPU over 3 s of a stalled {direction}: agent {agent:.2f} s, gateway {gw:.2f} s"
    app.stop()


def test_browser_connections_move_to_their_tunnels_worker(make_gateway):
    """A browser connection that lands on another worker than its route's tunnel moves there
    with its first request for it (each new TLS connection lands on a worker the kernel
    picks), so that every stream reaches its connection in memory. Moved or not, both
    directions carry a body, and downloads the browser abandons after the head end their
    streams and the agent's app connections."""
    gw = make_gateway(None, name="moves", verbose=True)
    app = publish_remote(gw, name="moves")
    s = gw.login(app.alias, app.link)

    def agent_fds():
        return len(os.listdir(f"/proc/{app.proc.pid}/fd"))

    base = agent_fds()
    for i in range(24):
        body = bytes([i]) * 200_000
        r = s.request("POST", "/echo", body=body)  # a connection of its own each time
        assert r.status == 200 and r.body == body, (i, r.status, len(r.body))
        c = s.conn()
        c.send(build_request("GET", f"/bytes?n={64 << 20}", s.host, cookie=s.cookie))
        assert c.read_head().status == 200
        c.close()  # the app is still writing
    log = gw.log_path.read_text()
    workers = int(re.search(r"with (\d+) workers?", log).group(1))
    assert len(re.findall(r"stream=\d+ for ", log)) == 48
    moved = re.findall(r"moved to its tunnel's worker", log)
    if workers > 1:
        assert moved, "no connection moved to the tunnel's worker in 48"
    # Every abandoned download let its app connection go in the agent.
    wait_for(lambda: agent_fds() <= base, 10,
             what=f"the agent's app connections to close ({agent_fds()} fds, {base} before)")
    app.stop()


def test_a_pipelined_request_for_a_tunnel_waits_for_the_answer_before_it_moves(make_gateway):
    """On one connection, a request to a local app and, pipelined behind it, one to an app
    behind a tunnel on another worker: the second moves only once the first answer has gone
    out (the connection's TLS state moves with it), and both answers arrive whole and in
    order."""
    gw = make_gateway(None, name="pipeline", verbose=True)
    local = gw.publish_http()
    remote = publish_remote(gw, name="far")
    ls, rs = gw.login(local.alias, local.link), gw.login(remote.alias, remote.link)
    workers = int(re.search(r"with (\d+) workers?", gw.log_path.read_text()).group(1))
    n = 2 << 20
    for i in range(16):
        c = ls.conn(timeout=30)
        c.send(build_request("GET", f"/bytes?n={n}", ls.host, cookie=ls.cookie) +
               build_request("POST", "/echo", rs.host, body=b"z" * 70_000, cookie=rs.cookie))
        time.sleep(0.2)  # both are in; the first answer waits in the buffers
        r1 = c.read_response()
        assert r1.status == 200 and len(r1.body) == n, (i, r1.status, len(r1.body))
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == b"z" * 70_000, (i, r2.status, len(r2.body))
        c.close()
        if workers == 1 or "waits for its answers to go out" in gw.log_path.read_text():
            break
    else:
        raise AssertionError("in 16 connections none waited to move: always the same worker?")
    remote.stop()


def test_agent_killed_mid_download_then_a_new_agent_takes_the_route(fresh_gateway):
    gw = fresh_gateway
    app = publish_remote(gw, name="nb")
    s = gw.login(app.alias, app.link)
    c = s.conn()
    c.send(build_request("GET", f"/bytes?n={1 << 30}", s.host, cookie=s.cookie))
    assert c.read_head().status == 200
    c.read_exact(1 << 20)
    os.kill(app.proc.pid, signal.SIGKILL)  # the agent only; its app goes on
    # The browser gets a clean end (the connection closes), not a hang.
    c.settimeout(10)
    with pytest.raises(Closed):
        while True:
            c.read_exact(1 << 20)
    c.close()
    wait_for(lambda: (gw.route(app.alias) or {}).get("state") == "reconnecting", 10,
             what="the route to wait for its agent")
    again = publish_remote(gw, name="nb")
    assert again.alias == app.alias
    assert s.get("/hello").status == 200  # the old cookie works through the new agent


def test_gateway_restart_agent_reconnects_and_cookie_survives(fresh_gateway):
    gw = fresh_gateway
    app = publish_remote(gw, name="restart")
    s = gw.login(app.alias, app.link)
    assert s.get("/hello").status == 200
    gw.stop()
    gw.start()
    t0 = time.monotonic()
    wait_for(lambda: (gw.route(app.alias) or {}).get("state") == "ready", 5,
             interval=0.02, what="the agent to reconnect")
    assert time.monotonic() - t0 < 2.0
    assert s.get("/hello").status == 200
    assert app.proc.poll() is None
    app.stop()


TWO_LISTENERS = r"""
import http.server, os, socket, subprocess, sys
port = int(sys.argv[1])
class Mine(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"mine\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class V6(http.server.HTTPServer):
    address_family = socket.AF_INET6
# Another user takes 127.0.0.1 on the app's port: anyone may bind what the app does not hold.
subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                  "-c", "import http.server as h, sys\n"
                        "class I(h.BaseHTTPRequestHandler):\n"
                        "    def do_GET(self):\n"
                        "        self.send_response(200); self.send_header('Content-Length', '9')\n"
                        "        self.end_headers(); self.wfile.write(b'impostor\\n')\n"
                        "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), I).serve_forever()",
                  str(port)])
V6(("::1", port), Mine).serve_forever()
"""


def test_tcp_port_answered_by_another_user_is_refused(gateway):
    """An app on [::1]:PORT only; another user binds 127.0.0.1:PORT. The agent must send the
    browser's streams to the owner's socket only (I2), whatever address answers first."""
    need_second_user("listener")
    app = gateway.publish([PY, "-c", TWO_LISTENERS, "{port}"], tcp=True, name="v6only",
                          extra=["-g", gw_url(gateway)])
    s = gateway.login(app.alias, app.link)
    for _ in range(3):
        r = s.get("/")
        assert r.status == 200 and r.body == b"mine\n", (r, r.body)
    assert "answered by uid 65534" in app.log_path.read_text()
    app.stop()


def test_the_shared_tunnel_lives_only_in_a_private_directory(gateway, tmp_path):
    """The rendezvous of the node's shared tunnel (docs/policy.md) is refused in a directory
    that others may enter: nobody else may offer a tunnel, or learn of one."""
    run = tmp_path / "run"
    (run / "jobgate").mkdir(parents=True)
    os.chmod(run / "jobgate", 0o755)
    r = gateway.cli("run", "-g", gw_url(gateway), "--", "true",
                    env_extra={"XDG_RUNTIME_DIR": str(run)}, timeout=30)
    assert r.returncode == 1, r
    assert b"is not a private directory of this user" in r.stderr, r.stderr
    assert not list((run / "jobgate").iterdir())
