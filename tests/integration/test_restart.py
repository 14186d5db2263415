"""Routes, links and sessions live in the store: they survive a gateway restart."""
import json
import time

from conftest import build_request


def restart(gw):
    t0 = time.monotonic()
    rc = gw.stop(timeout=5)
    assert rc == 0, f"jobgated did not exit 0 within 5 s of SIGTERM (status {rc})"
    assert time.monotonic() - t0 < 5
    gw.start()


def test_session_survives_restart(fresh_gateway):
    gw = fresh_gateway
    a = gw.start_direct_app()
    gw.register(a)
    s = gw.login(a.alias, a.link)
    assert s.get("/hello").status == 200
    restart(gw)
    r = s.get("/hello")
    assert r.status == 200 and r.body == b"hello\n", f"same cookie after restart: {r!r}"
    ls = gw.control({"op": "list"})
    assert ls.get("ok") and a.alias in [x["alias"] for x in ls["routes"]], ls


def test_tcp_route_survives_restart(fresh_gateway):
    gw = fresh_gateway
    a = gw.start_direct_app(tcp=True)
    gw.register(a)
    s = gw.login(a.alias, a.link)
    restart(gw)
    assert s.get("/hello").status == 200


def test_unused_link_survives_restart(fresh_gateway):
    gw = fresh_gateway
    a = gw.start_direct_app()
    gw.register(a)
    link = gw.new_link(a.alias)
    restart(gw)
    s = gw.login(a.alias, link)
    assert s.get("/hello").status == 200


def test_used_link_stays_used_after_restart(fresh_gateway):
    gw = fresh_gateway
    a = gw.start_direct_app()
    gw.register(a)
    gw.login(a.alias, a.link)
    restart(gw)
    with gw.connect(a.alias) as c:
        from conftest import link_target
        c.send(build_request("GET", link_target(a.link), gw.host(a.alias)))
        r = c.read_response()
    assert r.status == 403, f"a used link worked again after restart: {r!r}"


def test_logout_survives_restart(fresh_gateway):
    gw = fresh_gateway
    a = gw.start_direct_app()
    gw.register(a)
    s = gw.login(a.alias, a.link)
    assert s.logout().status == 200
    restart(gw)
    assert s.get("/hello").status == 403


def test_removed_route_stays_removed(fresh_gateway):
    gw = fresh_gateway
    a = gw.start_direct_app()
    gw.register(a)
    s = gw.login(a.alias, a.link)
    assert gw.control({"op": "remove", "alias": a.alias}).get("ok")
    restart(gw)
    assert s.get("/hello").status == 404


def test_published_app_survives_restart(fresh_gateway):
    """An app under `jobgate run` keeps its route (and the user's session) across a restart."""
    gw = fresh_gateway
    app = gw.publish_http()
    s = gw.login(app.alias, app.link)
    assert s.get("/hello").status == 200
    restart(gw)
    time.sleep(1)
    assert app.proc.poll() is None, (f"`jobgate run` exited ({app.proc.returncode}) when the "
                                     f"gateway restarted")
    r = s.get("/hello")
    assert r.status == 200, r
    routes = gw.ls_json()
    assert app.alias in [r["alias"] for r in routes], routes


def test_route_of_dead_owner_reaped_after_restart(fresh_gateway):
    """A route whose owner pid died while the gateway was down is not resurrected."""
    gw = fresh_gateway
    a = gw.start_direct_app()
    gw.register(a)  # pid = the app's
    s = gw.login(a.alias, a.link)
    gw.stop()
    a.kill()
    gw.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        routes = [x["alias"] for x in gw.control({"op": "list"})["routes"]]
        if a.alias not in routes:
            break
        time.sleep(0.5)
    assert a.alias not in routes, "route of a dead owner pid still listed 15 s after restart"
    assert s.get("/hello").status == 404


def test_sigterm_exit_status_and_cleanup(fresh_gateway):
    gw = fresh_gateway
    rc = gw.stop(timeout=5)
    assert rc == 0, rc
    # the port is free again at once (SO_REUSEADDR): a new gateway can start on it
    gw.start()
    assert gw.control({"op": "hello"}).get("ok")
    info = gw.control({"op": "hello"})
    assert info.get("mode") == "personal" and info.get("domain") == "localhost", info
    assert info.get("url_suffix") == f".localhost:{gw.port}", json.dumps(info)


def test_sigterm_drains_requests_in_flight(fresh_gateway):
    """A stopping gateway refuses new connections and closes idle ones at once, but lets a
    download in flight finish (so a restart does not cut a browser's transfer)."""
    import signal
    import socket

    gw = fresh_gateway
    app = gw.publish_http()
    s = gw.login(app.alias, app.link)
    idle = s.conn()
    idle.send(build_request("GET", "/hello", s.host, cookie=s.cookie))
    assert idle.read_response().status == 200  # now an idle keep-alive connection
    busy = s.conn()
    size = 48 << 20
    busy.send(build_request("GET", f"/bytes?n={size}", s.host, cookie=s.cookie))
    resp = busy.read_head()
    assert resp.status == 200, resp
    got = 0
    body = busy.iter_body(resp)
    for piece in body:
        got += len(piece)
        if got >= 1 << 20:
            break
    gw.proc.send_signal(signal.SIGTERM)
    gw.stopped_on_purpose = True
    t0 = time.monotonic()
    # New connections are refused at once.
    refused = False
    while time.monotonic() - t0 < 3 and not refused:
        try:
            socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
            time.sleep(0.05)
        except OSError:
            refused = True
    assert refused, "the stopping gateway still accepts connections"
    # The idle keep-alive connection is closed.
    idle.expect_close(timeout=3)
    # The download in flight completes.
    for piece in body:
        got += len(piece)
    assert got == size, f"download cut at {got} of {size} bytes"
    assert gw.proc.wait(10) == 0
    app.stop()
