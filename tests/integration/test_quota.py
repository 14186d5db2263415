"""Per-user quotas and floods (issue 13): no local user can take what the others need.

Each test starts a shared gateway with a small quota and floods it as a user that is
neither root nor the gateway's own (setpriv), then checks that root and another user are
still served and that the flooding user gets a clear `quota` answer.
"""
import json
import os
import socket
import ssl
import subprocess
import time

import pytest

from conftest import (NOBODY, PY, Control, Gateway, RawConn, _finish, _gateway, as_user,
                      build_request, control_as, need_second_user, start_gateway, wait_for)
from fakeagent import FakeAgent, munge_payload

OTHER = NOBODY - 1  # a second unprivileged uid (setpriv needs no passwd entry)

# Run as a user: opens argv[2] control connections to argv[1]; with argv[3] == "oob" each
# sends one out-of-band byte first. Prints {"open": k, "refused": [answers]} once the
# gateway had a second to answer, then holds the connections until stdin closes.
_HOLDER = r"""
import json, select, socket, sys, time
path, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    if mode == "oob":
        try:
            s.send(b"x", socket.MSG_OOB)
        except OSError:
            pass  # refused and closed already: the answer is still there to read
    socks.append(s)
time.sleep(1.0)
refused, open_ = [], 0
for s in socks:
    r, _, _ = select.select([s], [], [], 0)
    if r:
        data = s.recv(4096)
        refused.append(json.loads(data) if data else None)
    else:
        open_ += 1
print(json.dumps({"open": open_, "refused": refused}), flush=True)
sys.stdin.read()
"""


class Holder:
    """n control connections held open by uid, until close()."""

    def __init__(self, uid, path, n, mode="oob"):
        self.p = subprocess.Popen([*as_user(uid), PY, "-c", _HOLDER, str(path), str(n), mode],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.p.stdout.readline()
        assert line, "the holder script failed"
        self.result = json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


@pytest.fixture(scope="module")
def qgw(binaries):
    need_second_user("control clients")
    gw = _gateway({"quota": {"control_clients": 4}}, name="quota")
    os.chmod(gw.root, 0o711)  # other users reach the control socket
    yield gw
    _finish(gw)


_OOB_THEN_HELLO = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.send(b"\n", socket.MSG_OOB)
except OSError as e:  # a kernel without MSG_OOB on UNIX sockets (before 5.15)
    print(json.dumps({"no_oob": str(e)}))
    sys.exit(0)
time.sleep(0.3)
s.sendall(b'{"op":"hello"}\n')
s.settimeout(5)
f = s.makefile("rb")
try:
    print(json.dumps([json.loads(f.readline()), json.loads(f.readline())]))
except (OSError, ValueError) as e:
    print(json.dumps({"no_answer": str(e)}))
"""


def test_out_of_band_byte_does_not_wedge_a_control_client(qgw):
    """An out-of-band byte first used to leave the first-read event unarmed for good (a
    slot held for ever, no answer to what follows). Now it reads as a bad line."""
    p = subprocess.run([*as_user(NOBODY), PY, "-c", _OOB_THEN_HELLO, str(qgw.control_path)],
                       capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    out = json.loads(p.stdout)
    if isinstance(out, dict) and "no_oob" in out:
        pytest.skip(f"this kernel has no MSG_OOB on UNIX sockets: {out['no_oob']}")
    assert isinstance(out, list), f"the gateway never answered after an out-of-band byte: {out}"
    assert out[0]["ok"] is False and out[0]["code"] == "invalid", out
    assert out[1]["ok"] is True, out


def test_control_clients_per_user_are_capped(qgw):
    """One user's idle connections stop at its quota with a clear answer; root and another
    user are still served while they are held."""
    h = Holder(NOBODY, qgw.control_path, 7)
    try:
        assert h.result["open"] == 4, h.result
        assert len(h.result["refused"]) == 3, h.result
        for ans in h.result["refused"]:
            assert ans["ok"] is False and ans["code"] == "quota", ans
            assert "control_clients" in ans["error"], ans
        assert qgw.control({"op": "hello"})["ok"] is True  # root (the test) is outside it
        out = control_as(OTHER, qgw.control_path, [{"op": "list"}])
        assert isinstance(out, list) and out[0]["ok"] is True, out
        out = control_as(NOBODY, qgw.control_path, [{"op": "list"}])
        assert out[0] and out[0]["code"] == "quota", out
        log = qgw.log_path.read_text()
        assert f"control: refused uid={NOBODY}" in log
    finally:
        h.close()

    # The slots come back with the connections (once the gateway saw them close).
    def served():
        out = control_as(NOBODY, qgw.control_path, [{"op": "list"}])
        return isinstance(out, list) and out[0] and out[0]["ok"] is True
    wait_for(served, 10, interval=0.2, what="the user's control slots to come back")


def test_root_keeps_a_reserve_when_every_slot_is_taken(binaries):
    """With the quota as large as the total (512), one user fills the gateway; root, outside
    the quota, still gets its answer from the reserve."""
    need_second_user("control clients")
    gw = _gateway({"quota": {"control_clients": 512}}, name="quota512")
    os.chmod(gw.root, 0o711)
    try:
        h = Holder(NOBODY, gw.control_path, 520, mode="idle")
        try:
            assert h.result["open"] == 512, {**h.result, "refused": h.result["refused"][:2]}
            assert len(h.result["refused"]) == 8
            assert all(a and a["code"] == "quota" for a in h.result["refused"]), \
                h.result["refused"][:2]
            r = gw.cli("ls")
            assert r.returncode == 0, r
            out = control_as(OTHER, gw.control_path, [{"op": "list"}])
            assert out[0] and out[0]["code"] == "quota", out
        finally:
            h.close()
    finally:
        _finish(gw)


# --------------------------------------------------------------------------- tunnels

def _tls_tunnel(port, source):
    """A TLS connection that chose ALPN jobgate/1 from source, and says nothing more."""
    raw = socket.socket()
    raw.bind((source, 0))
    raw.settimeout(10)
    raw.connect(("127.0.0.1", port))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["jobgate/1"])
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    assert s.selected_alpn_protocol() == "jobgate/1"
    return s


def _closed_soon(s, timeout):
    """True if the gateway closes s within timeout (whatever it sent first is read)."""
    s.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not s.recv(65536):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except (OSError, ssl.SSLError):
        return True
    return False


def _states(socks, timeout=1.0):
    """For each socket, "closed" or "open" after the gateway had timeout to act."""
    time.sleep(timeout)
    return ["closed" if _closed_soon(s, 0.2) else "open" for s in socks]


def _munge_agent(gw, munged, uid=None):
    return FakeAgent(port=gw.port, auth=lambda nonce: {
        "method": "munge", "credential": munged.encode(munge_payload(nonce), uid=uid)})


def test_tunnels_without_hello_are_capped_per_address_and_in_all(make_gateway, munged):
    """Connections that chose jobgate/1 but never said hello used to count against the 10,000
    tunnels of the whole gateway: one address could keep every agent out. They are capped
    apart now, per source address and in all."""
    gw = make_gateway({"tunnel": {"pending_per_address": 4, "pending_max": 6,
                                  "hello_wait": "60s", "munge_socket": munged.socket},
                       "timeouts": {"handshake": "60s"}}, name="pending")
    flood = [_tls_tunnel(gw.port, "127.0.0.2") for _ in range(7)]
    other = []
    try:
        # Which ones get in depends on the order the workers take them: count them.
        assert sorted(_states(flood)) == ["closed"] * 3 + ["open"] * 4
        other = [_tls_tunnel(gw.port, "127.0.0.3") for _ in range(3)]
        assert sorted(_states(other)) == ["closed"] + ["open"] * 2
        assert "have not said hello yet" in gw.log_path.read_text()
        # All six pre-hello places are taken: an agent is closed at once.
        a = _munge_agent(gw, munged)
        try:
            a.wait_closed(5)
            assert not any(m.get("type") == "welcome" for m in a.msgs)
        finally:
            a.close()
        for s in flood:
            s.close()
        agents = []

        def welcomed():
            a = _munge_agent(gw, munged)
            agents.append(a)
            try:
                return a.wait_type("welcome", timeout=3)["uid"] == os.getuid()
            except AssertionError:
                return False
        try:
            wait_for(welcomed, 15, interval=0.2, what="an agent to get in once the flood closed")
            # Past its hello the agent no longer counts as pending: with the other address's
            # two, the flood's address has its four again (six in all).
            again = [_tls_tunnel(gw.port, "127.0.0.2") for _ in range(5)]
            assert sorted(_states(again)) == ["closed"] + ["open"] * 4, \
                "the welcomed agent still counts as waiting for its hello"
            for s in again:
                s.close()
        finally:
            for a in agents:
                a.close()
    finally:
        for s in flood + other:
            s.close()


def test_a_tunnel_that_never_says_hello_is_closed(make_gateway):
    gw = make_gateway({"tunnel": {"hello_wait": "2s"}}, name="hello-wait")
    s = _tls_tunnel(gw.port, "127.0.0.1")
    try:
        assert _closed_soon(s, 15), "a silent tunnel was kept beyond hello_wait"
        assert "closed: no hello within 2 s" in gw.log_path.read_text()
    finally:
        s.close()


def _frame(typ, flags, sid, payload):
    return len(payload).to_bytes(3, "big") + bytes([typ, flags]) + sid.to_bytes(4, "big") + payload


def test_continuation_flood_before_hello_ends_the_tunnel(make_gateway):
    """CVE-2024-28182: HEADERS without END_HEADERS, then CONTINUATION frames without end,
    each one header more. Debian's nghttp2 (since 1.52.0-1+deb12u2) stops it; the tunnel must
    end on the flood, long before any deadline (both are a minute here)."""
    gw = make_gateway({"tunnel": {"hello_wait": "60s"}, "timeouts": {"handshake": "60s"}},
                      name="continuation")
    s = _tls_tunnel(gw.port, "127.0.0.1")
    try:
        s.settimeout(5)
        got = b""
        while b"PRI * HTTP/2.0" not in got or len(got) < 24 + 9:
            got += s.recv(65536)  # the gateway (HTTP/2 client) speaks first
        s.sendall(_frame(0x4, 0, 0, b""))                       # our SETTINGS
        s.sendall(_frame(0x1, 0, 1, b"\x88"))                   # HEADERS :status 200, no end
        one = _frame(0x9, 0, 1, b"\x00\x03x-a\x01b")            # CONTINUATION, no end
        closed_at = None
        for i in range(200):
            try:
                s.sendall(one)
            except OSError:
                closed_at = i
                break
        assert closed_at is not None or _closed_soon(s, 5), \
            "200 CONTINUATION frames did not end the tunnel"
        wait_for(lambda: "closed:" in gw.log_path.read_text(), 5, what="the tunnel's end logged")
        log = gw.log_path.read_text()
        assert "no hello within" not in log and "no welcome within" not in log, log[-2000:]
    finally:
        s.close()
    gw.assert_alive()


def test_tunnels_per_user_are_capped(make_gateway, munged):
    """Past the hello, [quota] tunnels bounds one uid's tunnels; root is outside it."""
    need_second_user("tunnels")
    gw = make_gateway({"tunnel": {"munge_socket": munged.socket}, "quota": {"tunnels": 2}},
                      name="tunnel-quota")
    agents = []

    def nobody():
        a = _munge_agent(gw, munged, NOBODY)
        agents.append(a)
        return a

    try:
        for _ in range(2):  # one after the other: which one is third must not be a race
            assert nobody().wait_type("welcome")["uid"] == NOBODY
        third = nobody()
        err = third.wait_type("error")
        assert err["code"] == "quota" and "[quota] tunnels" in err["error"], err
        third.wait_closed()
        root = _munge_agent(gw, munged)
        agents.append(root)
        assert root.wait_type("welcome")["uid"] == 0
        agents[0].close()

        def late_gets_in():
            a = nobody()
            try:
                return a.wait_type("welcome", timeout=3)["uid"] == NOBODY
            except AssertionError:
                return False
        wait_for(late_gets_in, 15, interval=0.2, what="a closed tunnel to stop counting")
    finally:
        for a in agents:
            a.close()


# --------------------------------------------------------------------------- routes, links, ls

# Run as a user: listens on argv[2] UNIX sockets in a directory of its own, registers each
# on the control socket argv[1], then asks for one more link of the first; prints the answers.
_REGISTER_MANY = r"""
import json, os, socket, sys, tempfile
path, n = sys.argv[1], int(sys.argv[2])
d = tempfile.mkdtemp(prefix="jgq-")
apps = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(d, f"a{i}.sock"))
    s.listen()
    apps.append(s)
c = socket.socket(socket.AF_UNIX)
c.connect(path)
f = c.makefile("rwb")
def call(q):
    f.write(json.dumps(q).encode() + b"\n"); f.flush()
    return json.loads(f.readline())
out = [call({"op": "register", "name": f"q{i}", "socket": os.path.join(d, f"a{i}.sock")})
       for i in range(n)]
first = out[0].get("alias")
out.append(call({"op": "link", "alias": first}))
out.append(call({"op": "link", "alias": first}))
print(json.dumps(out))
"""


def test_routes_and_links_per_user_are_capped(binaries):
    need_second_user("routes")
    gw = _gateway({"quota": {"routes": 3, "links": 4}}, name="route-quota")
    os.chmod(gw.root, 0o711)
    try:
        p = subprocess.run([*as_user(NOBODY), PY, "-c", _REGISTER_MANY, str(gw.control_path),
                            "4"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p
        out = json.loads(p.stdout)
        assert [a["ok"] for a in out[:3]] == [True] * 3, out[:3]
        assert out[3]["ok"] is False and out[3]["code"] == "quota", out[3]
        assert "[quota] routes" in out[3]["error"], out[3]
        # Three links from the registrations, a fourth by `link`, then the quota.
        assert out[4]["ok"] is True, out[4]
        assert out[5]["ok"] is False and out[5]["code"] == "quota", out[5]
        assert "[quota] links" in out[5]["error"], out[5]
        # Root (the gateway's own user here) is outside the quota.
        a = gw.start_direct_app()
        try:
            for i in range(5):
                gw.register(a, name=f"root{i}")
        finally:
            a.stop()
        gw.assert_alive()
    finally:
        _finish(gw)


def test_ls_of_any_size(binaries):
    """An ls answer used to be one line of at most 64 KiB: about 1,500 routes made `jobgate ls`
    fail for root and their owner. The gateway answers in pages now."""
    gw = _gateway({"quota": {"routes": 1000}}, name="big-ls")
    a = gw.start_direct_app()
    try:
        c = Control(gw.control_path)
        try:
            for i in range(700):
                ans = c.call({"op": "register", "name": f"app-{i:04d}-" + "x" * 40,
                              "socket": a.sock})
                assert ans["ok"], ans
        finally:
            c.close()
        ans = gw.control({"op": "list"})
        assert 0 < len(ans["routes"]) < 700 and ans.get("next"), "one page, then a cursor"
        routes = gw.ls_json()
        assert len(routes) == 700 and len({r["alias"] for r in routes}) == 700
        out = gw.cli("ls")
        assert out.returncode == 0, out
        assert out.stdout.decode().count("app-0") == 700
    finally:
        a.stop()
        _finish(gw)


# --------------------------------------------------------------------------- redeem floods

def _redeem(conn, host, token):
    conn.send(build_request("GET", f"/_jobgate/redeem/{token}", host))
    return conn.read_response()


def test_redeem_flood_is_rate_limited_per_address(binaries):
    """Made-up tokens on a known alias: checked from memory (no write), and past 20 failures a
    minute one address gets 429 while another still redeems; the failures' log lines are
    kept to a few a second, with a count of the rest."""
    gw = _gateway({"gateway": {"workers": 1}}, name="redeem-flood")
    a = gw.start_direct_app()
    try:
        gw.register(a, name="target")
        host = gw.host(a.alias)
        statuses, retry = [], None
        t0 = time.monotonic()
        with RawConn(gw.port, gw.sni(a.alias), source="127.0.0.2") as c:
            for _ in range(200):
                r = _redeem(c, host, "A" * 43)
                statuses.append(r.status)
                if r.status == 429:
                    retry = r.header("Retry-After")
        assert statuses[:20] == [403] * 20, statuses[:25]
        assert set(statuses[20:]) == {429}, statuses[20:25]
        assert retry and 0 < int(retry) <= 60, retry
        # Another address is not affected; its good link works.
        link = gw.new_link(a.alias)
        with RawConn(gw.port, gw.sni(a.alias), source="127.0.0.3") as c:
            r = _redeem(c, host, link.rsplit("/", 1)[1])
        assert r.status == 303, r
        time.sleep(1.2)
        with RawConn(gw.port, gw.sni(a.alias), source="127.0.0.2") as c:
            assert _redeem(c, host, "B" * 43).status == 429
        time.sleep(1.2)
        log = gw.log_path.read_text()
        lines = [ln for ln in log.splitlines()
                 if "/_jobgate/redeem/" in ln and "ip=127.0.0.2" in ln]
        took = time.monotonic() - t0
        # 10 a second get through (one worker here), and the rest are counted.
        assert len(lines) <= 10 * (took + 2), f"{len(lines)} log lines for 201 failed redeems"
        assert "similar lines before it not logged" in log
    finally:
        a.stop()
        _finish(gw)


# --------------------------------------------------------------------------- reaping

def test_a_reused_pid_does_not_keep_a_route(binaries):
    """A route's owner process is its pid and its start time: when the pid comes back as
    another process, the route ends all the same (it used to live for ever)."""
    last_pid = "/proc/sys/kernel/ns_last_pid"
    if not os.access(last_pid, os.W_OK):
        pytest.skip("needs root to choose the next pid (ns_last_pid)")
    gw = _gateway(name="pid-reuse")
    a = gw.start_direct_app()
    procs = []
    try:
        for attempt in range(5):
            owner = subprocess.Popen(["sleep", "1000"])
            procs.append(owner)
            ans = gw.control({"op": "register", "name": f"reuse{attempt}", "socket": a.sock,
                              "pid": owner.pid})
            assert ans["ok"], ans
            alias, pid = ans["alias"], owner.pid
            time.sleep(0.1)  # start times are in clock ticks (10 ms): the imposter's must differ
            owner.kill()
            owner.wait()
            imposter = None
            for _ in range(50):  # another process may fork in between: try again
                with open(last_pid, "w") as f:
                    f.write(str(pid - 1))
                p = subprocess.Popen(["sleep", "1000"])
                procs.append(p)
                if p.pid == pid:
                    imposter = p
                    break
                p.kill()
                p.wait()
            # The reaper (once a second) may have seen the pid free in between: then the
            # imposter proves nothing, and the test tries again.
            if imposter is None or gw.route(alias) is None:
                continue
            wait_for(lambda: gw.route(alias) is None, 10, what="the route of the dead owner to end")
            assert f"route remove alias={alias} " in gw.log_path.read_text()
            assert "its pid is another process's now" in gw.log_path.read_text()
            return
        pytest.skip("could not make the kernel hand out the same pid again in time")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        a.stop()
        _finish(gw)


# --------------------------------------------------------------------------- max_connections

def _tls_handshake_done(port, timeout):
    """A TLS connection to the gateway if it completes its handshake within timeout, or None
    (the gateway stopped accepting: the connection waits in the kernel's backlog)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        s = ctx.wrap_socket(raw, server_hostname="x.localhost")
        s.settimeout(10)
        return s
    except (socket.timeout, TimeoutError, ssl.SSLError, OSError):
        raw.close()
        return None


def test_max_connections_is_gateway_wide_and_counts_tunnels(make_gateway, munged):
    """max_connections used to count per worker, without tunnels: with two workers twice as
    many connections got in, and agents' tunnels none at all. Now it is one count."""
    gw = make_gateway({"gateway": {"max_connections": 6, "workers": 2},
                       "tunnel": {"munge_socket": munged.socket}}, name="maxconn")
    held = []
    try:
        agent = _munge_agent(gw, munged)
        held.append(agent)
        assert agent.wait_type("welcome")["uid"] == os.getuid()
        for _ in range(5):  # SO_REUSEPORT spreads them over both workers
            s = _tls_handshake_done(gw.port, 5)
            assert s is not None, "refused below max_connections"
            held.append(s)
        assert _tls_handshake_done(gw.port, 2) is None, "a 7th client connection got in"
        assert "client connections open in the gateway" in gw.log_path.read_text()
        # One goes: within a second or two every worker accepts again.
        held.pop().close()
        time.sleep(1.5)
        s = _tls_handshake_done(gw.port, 5)
        assert s is not None, "no connection accepted after one closed"
        held.append(s)
    finally:
        for h in held:
            h.close()


def test_max_connections_follows_the_open_file_limit(binaries, tmp_path):
    """With a hard open-file limit below what max_connections needs, jobgated takes fewer
    connections and says so (the systemd unit's LimitNOFILE is that limit)."""
    gw = Gateway({"gateway": {"max_connections": 10000}}, name="nofile")
    gw.args = (lambda orig: lambda: ["prlimit", "--nofile=2100:2100", "--", *map(str, orig())])(
        gw.args)
    start_gateway(gw)
    try:
        log = gw.log_path.read_text()
        assert "max_connections = 10000 needs 21024 open files, the limit is 2100: taking at " \
               "most 538 client connections" in log, log[-1500:]
    finally:
        _finish(gw)
