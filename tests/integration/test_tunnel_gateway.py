"""jobgated's side of the tunnel (src/gateway/tunnel*.c), driven by a Python agent
(fakeagent.py) so that each rule of docs/tunnel-protocol.md can be checked alone:
hello and its refusals, registration, CONNECT streams, flow control, reconnection and the
503 wait, hostile control messages (malformed, unread answers piling up, lines after the
tunnel ended). The real agent is tested against jobgated in
test_tunnel.py."""
import json
import os
import socket
import time

import pytest

from conftest import wait_for, build_request
from fakeagent import FakeAgent, munge_payload


def token_of(gw):
    return (gw.state_dir / "agent.token").read_text().strip()


def wait_reconnecting(gw):
    wait_for(lambda: any(r.get("state") == "reconnecting" for r in gw.ls_json()), 5,
             what="the route to be reconnecting")


def agent(gw, **kw):
    kw.setdefault("auth", {"method": "token", "token": token_of(gw)})
    return FakeAgent(port=gw.port, **kw)


def test_agent_token_is_private(gateway):
    st = os.stat(gateway.state_dir / "agent.token")
    assert st.st_mode & 0o777 == 0o600
    assert st.st_uid == os.getuid()
    assert len(token_of(gateway)) == 43


def test_browsers_still_get_http1(gateway):
    # ALPN offers jobgate/1 only to those that ask for it.
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", gateway.port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="x.localhost") as s:
            assert s.selected_alpn_protocol() == "http/1.1"


def test_challenge_then_welcome(gateway):
    a = agent(gateway)
    try:
        ch = a.wait_type("challenge")
        assert ch["version"] == 1 and len(ch["nonce"]) == 43
        w = a.wait_type("welcome")
        assert w["uid"] == os.getuid()
    finally:
        a.close()


@pytest.mark.parametrize("auth,why", [
    ({"method": "token", "token": "x" * 43}, "bad agent token"),
    ({"method": "peercred"}, "peercred is only for"),
    ({"method": "munge", "credential": "MUNGE:bogus"}, "MUNGE"),
    ({"method": "carrier-pigeon"}, "unknown auth method"),
    ({}, "no auth.method"),
])
def test_bad_hello_refused_and_nothing_registered(gateway, auth, why):
    a = agent(gateway, auth=auth)
    try:
        err = a.wait_type("error")
        assert err["code"] == "auth" and why in err["error"], err
        a.wait_closed()
        assert not any(m.get("type") == "welcome" for m in a.msgs)
    finally:
        a.close()
    gateway.assert_alive()
    assert why.split()[0] in gateway.log_path.read_text()


def test_register_before_hello_is_refused(gateway):
    a = agent(gateway, auth=None)
    try:
        a.wait_type("challenge")
        a.send_ctl({"type": "register", "id": "r1", "name": "x", "local": "x"})
        err = a.wait_type("error")
        assert "hello" in err["error"]
        a.wait_closed()
    finally:
        a.close()


def test_register_and_browse_through_the_tunnel(gateway):
    app = gateway.start_direct_app()
    a = agent(gateway, targets={"web": app.sock})
    try:
        a.wait_type("welcome")
        reg = a.register("web", "web")
        assert reg["type"] == "registered" and reg["link"].startswith(reg["url"])
        mine = [r for r in gateway.ls_json() if r["alias"] == reg["alias"]]
        assert mine and mine[0]["backend"] == "tunnel:web" and mine[0]["state"] == "ready"
        s = gateway.login(reg["alias"], reg["link"])
        r = s.get("/hello")
        assert r.status == 200, r
        body = r.body
        assert b"hello" in body.lower()
        # A POST with a body goes through too, and the app sees the right Host.
        r = s.request("POST", "/echo", body=b"x" * 100000)
        assert r.status == 200 and len(r.body) >= 100000
    finally:
        a.close()


def test_unknown_local_gives_502_not_a_hang(gateway):
    a = agent(gateway, targets={})  # registers "ghost" but will answer 404 to CONNECT
    try:
        a.wait_type("welcome")
        reg = a.register("ghost", "ghost")
        s = gateway.login(reg["alias"], reg["link"])
        r = s.get("/")
        assert r.status == 502
    finally:
        a.close()
    gateway.assert_alive()


@pytest.mark.parametrize("bad", [
    b"this is not json\n",
    b"[1,2,3]\n",
    b"{\"type\":\"register\",\"id\":5}\n",
    b"{\"type\": \"x\"" + b" " * 70000 + b"}\n",
])
def test_malformed_control_message_ends_that_tunnel_only(gateway, bad):
    a = agent(gateway)
    b = agent(gateway)
    try:
        a.wait_type("welcome")
        b.wait_type("welcome")
        a.send_ctl(bad)
        a.wait_closed()
        # The other tunnel is unaffected.
        reg = b.register("still", "still")
        assert reg["type"] == "registered"
    finally:
        a.close()
        b.close()
    gateway.assert_alive()


def test_garbage_frames_end_the_tunnel_not_the_gateway(gateway):
    a = agent(gateway)
    try:
        a.wait_type("welcome")
        a.send_raw(b"\x00\x00\x08\x07\x00\x00\x00\x00\x01" + b"garbage!" * 1)  # bad GOAWAY
        a.send_raw(b"\xff" * 100)
        a.wait_closed()
    finally:
        a.close()
    gateway.assert_alive()


def test_agent_that_never_reads_its_answers_is_cut_off(gateway):
    """The gateway's answers on the control stream wait for the agent's window. An agent
    that keeps asking and never opens that window must not make them pile up without end:
    the tunnel ends (it is the agent's fault), the gateway stays up."""
    a = agent(gateway)
    try:
        a.wait_type("welcome")
        a.ctl_ack = False
        line = (json.dumps({"type": "unregister", "id": "i" * 60, "alias": "a" * 300}) +
                "\n").encode()
        chunk = line * 100  # ~40 KB of requests, each answered with an error as long
        for _ in range(250):  # ~10 MB in all
            if a.closed:
                break
            a.send_ctl_queued(chunk)
            time.sleep(0.005)
        try:
            a.wait_closed(20)
        except AssertionError:
            raise AssertionError(f"the tunnel stayed open after {len(a.msgs)} answers") from None
    finally:
        a.close()
    gateway.assert_alive()
    assert "does not read its control answers" in gateway.log_path.read_text()


def test_no_control_message_is_taken_after_the_tunnel_ended(gateway):
    """A malformed line ends the tunnel; a register in the next DATA frame of the same read
    must not be acted on (it used to add a route to the tunnel being torn down)."""
    a = agent(gateway)
    try:
        a.wait_type("welcome")
        reg = json.dumps({"type": "register", "id": "r9", "name": "afterdeath",
                          "local": "afterdeath"}).encode() + b"\n"
        a.send_ctl_frames([b"this is not json\n", reg])
        a.wait_closed()
    finally:
        a.close()
    gateway.assert_alive()
    time.sleep(0.3)
    routes = gateway.ls_json()
    assert not [r for r in routes
                if r.get("name") == "afterdeath" or r.get("backend") == "tunnel:afterdeath"], routes


def test_agent_cannot_take_another_users_alias(gateway):
    # An alias of a local route (kind unix) cannot be claimed by a tunnel.
    app = gateway.start_direct_app()
    gateway.register(app, name="local")
    a = agent(gateway)
    try:
        a.wait_type("welcome")
        ans = a.register("x", "x", alias=app.alias)
        assert ans["type"] == "error" and ans["code"] == "forbidden"
    finally:
        a.close()


def test_reconnect_keeps_alias_and_cookie_and_waits(fresh_gateway):
    gw = fresh_gateway
    app = gw.start_direct_app()
    a = agent(gw, targets={"web": app.sock})
    a.wait_type("welcome")
    reg = a.register("web", "web")
    s = gw.login(reg["alias"], reg["link"])
    assert s.get("/hello").status == 200
    a.close()
    # The route waits for its agent: listed as reconnecting.
    wait_reconnecting(gw)
    # A request now waits (reconnect_wait, 5 s by default); the agent comes back meanwhile.
    b = agent(gw, targets={"web": app.sock})
    conn = s.conn()
    t0 = time.monotonic()
    conn.send(build_request("GET", "/hello", s.host, cookie=s.cookie))

    def back():
        b.wait_type("welcome")
        return b.register("web", "web", alias=reg["alias"])
    time.sleep(0.5)
    again = back()
    assert again["alias"] == reg["alias"]
    r = conn.read_response()
    conn.close()
    assert r.status == 200, r
    assert time.monotonic() - t0 < 5
    # The old cookie still works on the new tunnel.
    assert s.get("/hello").status == 200
    b.close()


def test_agent_gone_gives_503_after_wait(fresh_gateway):
    gw = fresh_gateway
    app = gw.start_direct_app()
    a = agent(gw, targets={"web": app.sock})
    a.wait_type("welcome")
    reg = a.register("web", "web")
    s = gw.login(reg["alias"], reg["link"])
    a.close()
    wait_reconnecting(gw)
    t0 = time.monotonic()
    r = s.get("/hello", timeout=20)
    waited = time.monotonic() - t0
    assert r.status == 503, r
    assert 4 <= waited < 10, waited


def test_unregister_removes_the_route(gateway):
    a = agent(gateway)
    try:
        a.wait_type("welcome")
        reg = a.register("gone", "gone")
        a.send_ctl({"type": "unregister", "id": "u1", "alias": reg["alias"]})
        ans = a.wait_msg(lambda m: m.get("id") == "u1")
        assert ans["type"] == "unregistered"
        assert reg["alias"] not in [r["alias"] for r in gateway.ls_json()]
    finally:
        a.close()


def test_stalled_stream_does_not_stall_others(gateway):
    """One browser that stops reading a big download holds only its own stream's window."""
    app = gateway.start_direct_app()
    a = agent(gateway, targets={"web": app.sock})
    try:
        a.wait_type("welcome")
        reg = a.register("web", "web")
        s = gateway.login(reg["alias"], reg["link"])
        slow = s.conn()
        slow.send(build_request("GET", "/bytes?n=200000000", s.host, cookie=s.cookie))
        # Backpressure reaches the agent: the gateway stops opening the stalled stream's
        # window, so the agent is left holding bytes it may not send.
        wait_for(lambda: any(len(st["out"]) > 0 for st in list(a.streams.values())), 10,
                 what="the stalled stream's window to close")
        for _ in range(20):
            assert s.get("/hello", timeout=5).status == 200
        slow.close()
    finally:
        a.close()


@pytest.fixture
def shared_munge_gateway(make_gateway, munged):
    return make_gateway({"tunnel": {"munge_socket": munged.socket, "reconnect_wait": "1s"}},
                        name="munge")


def test_munge_hello_names_the_owner(shared_munge_gateway, munged):
    gw = shared_munge_gateway
    a = FakeAgent(port=gw.port, auth=lambda nonce: {
        "method": "munge", "credential": munged.encode(munge_payload(nonce))})
    try:
        assert a.wait_type("welcome")["uid"] == os.getuid()
        assert a.register("m", "m")["type"] == "registered"
    finally:
        a.close()


def test_unanswered_stream_gets_503_after_the_connect_timeout(make_gateway, munged):
    # An agent that never answers a CONNECT (slow, or out of stream room:
    # nghttp2 queues what exceeds its concurrency) costs the browser the
    # connect timeout and a 503 page, never a hang.
    gw = make_gateway({"tunnel": {"munge_socket": munged.socket},
                       "timeouts": {"connect": "2s"}}, name="munge-slow")
    a = FakeAgent(port=gw.port, auth=lambda nonce: {
        "method": "munge", "credential": munged.encode(munge_payload(nonce))})
    a.hold_connect.add("slow")
    try:
        a.wait_type("welcome")
        reg = a.register("slow", "slow")
        s = gw.login(reg["alias"], reg["link"])
        t0 = time.monotonic()
        r = s.get("/")
        took = time.monotonic() - t0
        assert r.status == 503, r
        assert r.header("retry-after") == "5"
        assert b"too many connections" in r.body
        assert 1.5 < took < 10, took
    finally:
        a.close()
    gw.assert_alive()


@pytest.mark.parametrize("case", ["replayed", "other nonce", "other gateway", "expired",
                                  "token in shared mode"])
def test_munge_refusals(shared_munge_gateway, munged, case):
    gw = shared_munge_gateway
    used = {}

    def auth(nonce):
        if case == "token in shared mode":
            return {"method": "token", "token": "x" * 43}
        if case == "other nonce":
            return {"method": "munge",
                    "credential": munged.encode(munge_payload("A" * 43, nonce.gateway))}
        if case == "other gateway":
            # Made for another gateway's certificate (this gateway relays a challenge it got
            # from another, or the agent was pointed here by mistake): worth nothing here.
            return {"method": "munge", "credential": munged.encode(munge_payload(nonce, "0" * 64))}
        if case == "expired":
            cred = munged.encode(munge_payload(nonce), ttl=1)
            time.sleep(2.2)
            return {"method": "munge", "credential": cred}
        cred = munged.encode(munge_payload(nonce))
        used["cred"] = cred
        return {"method": "munge", "credential": cred}

    if case == "replayed":
        first = FakeAgent(port=gw.port, auth=auth)
        first.wait_type("welcome")
        first.close()
        # The same credential on a new connection: another nonce, and MUNGE saw it already.
        cred = used["cred"]
        a = FakeAgent(port=gw.port, auth=lambda nonce: {"method": "munge", "credential": cred})
    else:
        a = FakeAgent(port=gw.port, auth=auth)
    try:
        err = a.wait_type("error")
        assert err["code"] == "auth", err
        a.wait_closed()
    finally:
        a.close()
    gw.assert_alive()


def hand_over(gw, fds, line=b'{"op":"tunnel","version":1}\n', keep=False):
    """What `jobgate tunnel --stdio` does: the request with two descriptors attached."""
    c = socket.socket(socket.AF_UNIX)
    c.connect(str(gw.control_path))
    socket.send_fds(c, [line], fds)
    c.settimeout(10)
    f = c.makefile("rb")
    ans = json.loads(f.readline())
    if keep:
        return ans, c, f
    f.close()
    c.close()
    return ans


def test_ssh_hand_over_peercred(gateway):
    ours, theirs = socket.socketpair()
    ans, ctl, f = hand_over(gateway, [theirs.fileno(), theirs.fileno()], keep=True)
    theirs.close()
    assert ans == {"ok": True}
    a = FakeAgent(sock=ours, auth={"method": "peercred"})
    try:
        assert a.wait_type("welcome")["uid"] == os.getuid()
        assert a.register("s", "s")["type"] == "registered"
        # `jobgate tunnel --stdio` is held open while the tunnel lives (sshd would end the
        # channel if it exited) ...
        ctl.setblocking(False)
        with pytest.raises(BlockingIOError):
            ctl.recv(1)
        ctl.setblocking(True)
    finally:
        a.close()
    # ... and let go when it ends.
    ctl.settimeout(10)
    assert f.read() == b""
    f.close()
    ctl.close()


def test_hand_over_needs_descriptors(gateway):
    c = socket.socket(socket.AF_UNIX)
    c.connect(str(gateway.control_path))
    c.sendall(b'{"op":"tunnel","version":1}\n')
    c.settimeout(10)
    ans = json.loads(c.makefile().readline())
    c.close()
    assert ans["ok"] is False and ans["code"] == "invalid"
    # Descriptors with another request are closed unused, and the gateway goes on.
    r, w = os.pipe()
    ans = hand_over(gateway, [r, w], line=b'{"op":"list"}\n')
    assert ans["ok"] is True
    os.close(w)
    assert os.read(r, 1) == b""  # no writer left anywhere: the gateway closed its copy
    os.close(r)


def test_new_agent_takes_over_an_orphaned_route_by_name(fresh_gateway):
    gw = fresh_gateway
    app = gw.start_direct_app()
    a = agent(gw, targets={"web": app.sock})
    a.wait_type("welcome")
    reg = a.register("nb", "web")
    s = gw.login(reg["alias"], reg["link"])
    a.close()  # the agent dies; its route waits
    wait_reconnecting(gw)
    b = agent(gw, targets={"web": app.sock})
    try:
        b.wait_type("welcome")
        again = b.register("nb", "web")  # no alias: a fresh agent knows only the name
        assert again["alias"] == reg["alias"]
        assert s.get("/hello").status == 200  # the old cookie works
        other = b.register("other", "web", rid="r2")
        assert other["alias"] != reg["alias"]
    finally:
        b.close()


def test_a_stale_tunnel_cannot_act_on_a_route_taken_over(gateway):
    """Agent A registered an app; agent B (the same user, after A was thought lost) took the
    route over by its alias. A, still connected, must not end B's route nor mint its links:
    every tunnel operation checks that the route is still carried by that tunnel."""
    a = agent(gateway)
    b = None
    try:
        a.wait_type("welcome")
        reg = a.register("stale", "stale")
        assert reg["type"] == "registered", reg
        alias = reg["alias"]
        b = agent(gateway)
        b.wait_type("welcome")
        again = b.register("stale", "stale", alias=alias)
        assert again["type"] == "registered" and again["alias"] == alias, again
        a.send_ctl({"type": "link", "id": "l1", "alias": alias})
        ans = a.wait_msg(lambda m: m.get("id") == "l1")
        assert ans["type"] == "error" and ans["code"] == "not_found", ans
        a.send_ctl({"type": "unregister", "id": "u1", "alias": alias})
        ans = a.wait_msg(lambda m: m.get("id") == "u1")
        assert ans["type"] == "error" and "another agent carries" in ans["error"], ans
        r = gateway.route(alias)
        assert r is not None and r["state"] == "ready", "the stale tunnel ended the taken route"
        # The agent that carries it may end it.
        b.send_ctl({"type": "unregister", "id": "u2", "alias": alias})
        assert b.wait_msg(lambda m: m.get("id") == "u2")["type"] == "unregistered"
        wait_for(lambda: gateway.route(alias) is None, 5, what="the route to end")
    finally:
        a.close()
        if b:
            b.close()
