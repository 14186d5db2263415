"""The agent's side of the tunnel (`jobgate run -g URL`, `--via ssh:HOST`, `jobgate tunnel
--stdio`) against the fake gateway of fakegw.py (docs/tunnel-protocol.md).

Covered: the ready line carries the gateway's link; CONNECT reaches the app (HTTP both
ways, half-close), 404 for a name the agent did not register, 502 when the app does not
accept; the agent's SETTINGS; which secret goes where (the token only to the pinned
certificate of the personal gateway, a MUNGE credential bound to the challenge otherwise,
nothing at all to an untrusted server); refused hello, untrusted certificate, host name
mismatch, no ALPN, unreachable gateway; reconnection after a drop, a GOAWAY, a PING
timeout and refused hellos, with the same alias, and a backoff that only a tunnel that
lasted resets; flow control (a stalled stream holds at
most its window while another flows); unregister + GOAWAY on exit and on SIGTERM;
https_proxy; `--via ssh` end to end through `jobgate tunnel --stdio`; usage errors.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (BLOCK, HTTPAPP, JOBGATE, PY, MiB, PublishedApp, free_port, kill_group,
                      mkdtemp, tail, wait_for)
from fakegw import STREAM_WINDOW, FakeControl, FakeGateway, Stream, make_cert


class Env:
    """Fresh HOME / XDG_STATE_HOME / XDG_RUNTIME_DIR for one agent, and the fake gateways and
    `jobgate run` processes of one test."""

    def __init__(self):
        self.root = mkdtemp("jgt-")
        self.home = self.root / "home"
        self.state_home = self.root / "state"
        self.runtime = self.root / "run"
        for d in (self.home, self.state_home, self.runtime):
            d.mkdir(mode=0o700)
        self.state = self.state_home / "jobgate"
        drop = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("XDG_", "JOBGATE_", "SLURM_")) and k.lower() not in drop}
        # No munged unless a test starts one: never the system's.
        self.env.update(HOME=str(self.home), XDG_STATE_HOME=str(self.state_home),
                        XDG_RUNTIME_DIR=str(self.runtime),
                        JOBGATE_MUNGE_SOCKET=str(self.root / "no-munged.sock"))
        self.gws, self.apps, self.others = [], [], []
        self.certs = {}

    def cert(self, name="gw", **kw):
        if name not in self.certs:
            self.certs[name] = make_cert(str(self.root), name, **kw)
        return self.certs[name]

    def gateway(self, name="gw", **kw):
        crt, key = self.cert(name)
        gw = FakeGateway(crt, key, **kw).start()
        self.gws.append(gw)
        return gw

    def pin(self, name="gw", token="tok-" + "0123456789abcdef" * 2, mode=0o600):
        """Makes the state directory look like that of a personal gateway with this cert."""
        self.state.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(self.cert(name)[0], self.state / "tls.crt")
        tok = self.state / "agent.token"
        tok.write_text(token + "\n")
        os.chmod(tok, mode)
        return token

    def run(self, args, app=None, json_mode=True, name="web", env_extra=None, wait=True):
        cmd = [JOBGATE, "run", "-n", name]
        if json_mode:
            cmd.append("--json")
        cmd += list(args) + ["--"] + (app or [PY, HTTPAPP, "--unix", "{socket}"])
        env = dict(self.env)
        env.update(env_extra or {})
        return PublishedApp.launch(cmd, self.root / f"run-{len(self.apps)}.log", json_mode,
                                   wait, self.apps, env=env, stdin=subprocess.DEVNULL)

    def cli(self, *args, timeout=40, env_extra=None, **kw):
        env = dict(self.env)
        env.update(env_extra or {})
        return subprocess.run([JOBGATE, *map(str, args)], env=env, capture_output=True,
                              timeout=timeout, stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)

    def app_socket(self):
        socks = list((self.runtime / "jobgate").glob("run-*/app.sock"))
        assert len(socks) == 1, socks
        return socks[0]

    def cleanup(self):
        for a in self.apps:
            a.stop()
        for gw in self.gws:
            gw.stop()
        for p in self.others:
            kill_group(p, timeout=2)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def tenv(binaries):
    e = Env()
    yield e
    e.cleanup()


def gw_url(gw, host="localhost"):
    return f"https://{host}:{gw.port}"


def wait_event(app, name, n=1, timeout=20):
    wait_for(lambda: len([e for e in app.events() if e.get("event") == name]) >= n, timeout,
             what=f"{n} '{name}' event(s) from jobgate run (stdout {app.lines!r}; "
                  f"stderr {tail(app.log_path)})")
    return [e for e in app.events() if e.get("event") == name][n - 1]


def http_get(conn, local, target="/hello"):
    st = conn.open_connect(local)
    assert st.wait_status() == 200, f"CONNECT {local}: {st.status} reset={st.reset}"
    st.send(f"GET {target} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
    return st.read_http_response()


def started(tenv, gw, extra=(), **kw):
    """A personal-gateway agent (pinned certificate, token) publishing httpapp."""
    tenv.pin()
    a = tenv.run(["-g", gw_url(gw), *extra], **kw)
    conn = gw.wait_conn()
    reg = conn.wait_registered()
    return a, conn, reg


# --------------------------------------------------------------------------- basics


def test_ready_line_carries_the_link(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    ans = reg["answered"]
    assert a.ready["alias"] == ans["alias"]
    assert a.ready["url"] == ans["url"]
    assert a.ready["link"] == ans["link"]
    assert a.ready["expires"] == ans["expires"]
    assert a.ready["name"] == "web"
    assert reg["name"] == "web" and reg["local"] == "web" and "alias" not in reg
    # The agent's SETTINGS, as the spec's table says.
    assert conn.agent_settings.get(3) == 10000         # MAX_CONCURRENT_STREAMS
    assert conn.agent_settings.get(4) == 256 * 1024    # INITIAL_WINDOW_SIZE
    assert conn.agent_settings.get(6) == 16 * 1024     # MAX_HEADER_LIST_SIZE
    assert conn.ctl_status == 200
    h = conn.hello
    assert h["type"] == "hello" and h["version"] == 1
    assert h["agent"].startswith("jobgate/") and h["node"] == socket.gethostname()
    assert "job" not in h


def test_ready_text_and_job_id(tenv):
    gw = tenv.gateway()
    tenv.pin()
    a = tenv.run(["-g", gw_url(gw), "--ttl", "1h"], json_mode=False,
                 env_extra={"SLURM_JOB_ID": "4242"})
    conn = gw.wait_conn()
    reg = conn.wait_registered()
    link = reg["answered"]["link"]
    wait_for(lambda: any(link in ln for ln in a.lines), 20, what="the link on stdout")
    assert any("web is ready" in ln for ln in a.lines), a.lines
    assert conn.hello["job"] == "4242"
    assert reg["ttl"] == 3600


def test_connect_reaches_the_app(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    head, body = http_get(conn, reg["local"], "/hello")
    assert head.startswith("HTTP/1.1 200") and body == b"hello\n"
    # A request body through the stream, and a half-close: END_STREAM after the request
    # reaches the (keep-alive) app as EOF, so it closes, and that comes back as END_STREAM.
    st = conn.open_connect(reg["local"])
    assert st.wait_status() == 200
    body = os.urandom(300 * 1024)
    st.send(b"POST /echo HTTP/1.1\r\nHost: app\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body, end=True)
    head, got = st.read_http_response()
    assert got == body
    st.wait(lambda: st.ended, 10, "END_STREAM after the app closed")
    assert st.reset is None
    # Several streams at once.
    streams = [conn.open_connect(reg["local"]) for _ in range(20)]
    for s in streams:
        assert s.wait_status() == 200
        s.send(b"GET /bytes?n=100000 HTTP/1.1\r\nHost: app\r\n\r\n")
    for s in streams:
        _, b = s.read_http_response()
        assert b == (BLOCK * 2)[:100000]


def test_connect_to_another_name_is_404(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    for other in ("other", "web-2", reg["answered"]["alias"], "jobgate", "web:80", "x" * 200):
        st = conn.open_connect(other)
        assert st.wait_status() == 404, other
    # Not a CONNECT, on a stream that is not the control stream: that stream is reset, the
    # tunnel stays.
    def get_req():
        sid = conn.h2.get_next_available_stream_id()
        s = Stream(conn, sid, "web")
        conn.streams[sid] = s
        conn.h2.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                   (":authority", "web"), (":path", "/")], end_stream=True)
        return s
    s = conn.call(get_req)
    s.wait(lambda: s.reset is not None, 10, "RST_STREAM")
    assert http_get(conn, reg["local"])[1] == b"hello\n"
    assert not conn.closed and conn.goaway is None


def test_app_not_accepting_is_502(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    assert http_get(conn, reg["local"])[1] == b"hello\n"
    os.unlink(tenv.app_socket())
    st = conn.open_connect(reg["local"])
    assert st.wait_status() == 502
    assert a.proc.poll() is None and not conn.closed


def test_tcp_app(tenv):
    gw = tenv.gateway()
    tenv.pin()
    tenv.run(["-g", gw_url(gw), "--tcp"], app=[PY, HTTPAPP, "--port", "{port}"])
    conn = gw.wait_conn()
    reg = conn.wait_registered()
    head, body = http_get(conn, reg["local"], "/env")
    env = json.loads(body)["env"]
    assert env["JOBGATE_PORT"] and "JOBGATE_SOCKET" not in env


# --------------------------------------------------------------------------- identity


def test_token_goes_to_the_pinned_certificate(tenv):
    gw = tenv.gateway()
    token = tenv.pin()
    tenv.run(["-g", gw_url(gw)])
    conn = gw.wait_conn()
    assert conn.hello["auth"] == {"method": "token", "token": token}


def test_token_not_sent_to_another_certificate(tenv):
    gw1 = tenv.gateway("gw1")
    gw2 = tenv.gateway("gw2")
    token = tenv.pin("gw1")
    # gw2 is trusted through --ca, but its certificate is not the pinned one: no token;
    # without munged there is no other identity, so a clear error and nothing sent.
    out = tenv.cli("run", "-g", gw_url(gw2), "--ca", tenv.cert("gw2")[0], "--",
                   PY, HTTPAPP, "--unix", "{socket}")
    err = out.stderr.decode()
    assert out.returncode == 1, out
    assert "MUNGE" in err and "personal gateway" in err, err
    assert token not in err
    c = gw2.wait_conn()
    c.wait(lambda: c.closed, 10, "the agent to close")
    assert c.hello is None
    assert token.encode() not in gw2.all_raw()
    assert not gw1.conns


def test_munge_credential_bound_to_the_challenge(tenv, munged):
    gw = tenv.gateway(munge_socket=munged.socket)
    token = tenv.pin("other")  # a personal gateway's state, with another certificate
    a = tenv.run(["-g", gw_url(gw), "--ca", tenv.cert()[0]],
                 env_extra={"JOBGATE_MUNGE_SOCKET": munged.socket})
    conn = gw.wait_conn()
    auth = conn.hello["auth"]
    assert auth["method"] == "munge" and set(auth) == {"method", "credential"}
    assert conn.munge["uid"] == os.getuid()
    assert conn.munge["payload"] == f"jobgate/1 hello {conn.nonce} {gw.cert_sha256()}".encode()
    assert conn.munge["replay_refused"]
    assert token.encode() not in gw.all_raw()
    assert a.ready["alias"]


def test_refused_hello_exits_without_running_the_app(tenv):
    gw = tenv.gateway()
    gw.hello_reply = lambda c, h: {"type": "error", "code": "auth", "error": "credential expired"}
    tenv.pin()
    marker = tenv.root / "app-ran"
    out = tenv.cli("run", "-g", gw_url(gw), "--", "sh", "-c", f"touch {marker}; sleep 30")
    assert out.returncode == 1, out
    assert "credential expired" in out.stderr.decode(), out.stderr
    assert not marker.exists()


def test_a_busy_gateway_is_tried_again_while_opening(tenv):
    """code "busy" (the gateway has too many credential checks under way) is not a refusal:
    the agent tries again with its backoff, a few times while it opens, and runs the app once
    welcomed; a gateway that stays busy ends the run with the reason."""
    gw = tenv.gateway()
    busy = []

    def answer(c, h):
        if len(busy) < 2:
            busy.append(c)
            return {"type": "error", "code": "busy", "error": "try again shortly"}
        return {"type": "welcome", "uid": os.getuid(), "user": "tester", "tunnel": "t1"}
    gw.hello_reply = answer
    tenv.pin()
    a = tenv.run(["-g", gw_url(gw)])
    conn = gw.wait_conn(3, timeout=20)
    conn.wait_registered()
    assert len(busy) == 2
    assert a.proc.poll() is None
    a.stop()
    gw2 = tenv.gateway()
    gw2.hello_reply = lambda c, h: {"type": "error", "code": "busy", "error": "still busy"}
    out = tenv.cli("run", "-g", gw_url(gw2), "--", "sleep", "30", timeout=90)
    assert out.returncode == 1, out
    assert "is busy: still busy" in out.stderr.decode(), out.stderr
    assert len(gw2.conns) == 6, len(gw2.conns)  # the first and five more


def test_untrusted_certificate(tenv):
    gw = tenv.gateway()
    out = tenv.cli("run", "-g", gw_url(gw), "--", "true")
    err = out.stderr.decode()
    assert out.returncode == 1, out
    assert "not trusted" in err and "--ca" in err, err
    assert not gw.conns  # the handshake failed: no HTTP/2, no hello


def test_host_name_mismatch(tenv):
    tenv.cert("gw", san="DNS:gateway.example")
    gw = tenv.gateway()
    out = tenv.cli("run", "-g", gw_url(gw), "--ca", tenv.cert()[0], "--", "true")
    err = out.stderr.decode()
    assert out.returncode == 1, out
    assert "not trusted" in err and "hostname mismatch" in err, err
    # JOBGATE_CA works like --ca.
    out = tenv.cli("run", "-g", gw_url(gw), "--", "true",
                   env_extra={"JOBGATE_CA": tenv.cert()[0]})
    assert "hostname mismatch" in out.stderr.decode(), out


def test_no_alpn(tenv):
    gw = tenv.gateway(alpn=("http/1.1",))
    tenv.pin()
    out = tenv.cli("run", "-g", gw_url(gw), "--", "true")
    assert out.returncode == 1, out
    assert "ALPN jobgate/1" in out.stderr.decode(), out.stderr


def test_unreachable(tenv):
    port = free_port()
    t0 = time.monotonic()
    out = tenv.cli("run", "-g", f"https://127.0.0.1:{port}", "--", "true")
    assert out.returncode == 1
    assert f"cannot reach the gateway at 127.0.0.1:{port}" in out.stderr.decode(), out.stderr
    assert time.monotonic() - t0 < 10


def test_bad_token_file(tenv):
    gw = tenv.gateway()
    tenv.pin(mode=0o644)
    out = tenv.cli("run", "-g", gw_url(gw), "--", "true")
    err = out.stderr.decode()
    assert out.returncode == 1, out
    assert "agent.token" in err and "0600" in err, err
    assert b"tok-" not in gw.all_raw()


# --------------------------------------------------------------------------- reconnection


def test_reconnect_after_drop_keeps_the_alias(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    alias = reg["answered"]["alias"]
    conn.drop()
    c2 = gw.wait_conn(2)
    r2 = c2.wait_registered()
    assert r2["alias"] == alias and r2["local"] == reg["local"]
    ev = wait_event(a, "reconnecting")
    assert ev["reason"] and 0 <= ev["retry_in"] <= 0.5 and ev["attempt"] == 1
    wait_event(a, "reconnected")
    assert c2.hello["auth"]["method"] == "token"
    assert http_get(c2, reg["local"])[1] == b"hello\n"
    assert len([e for e in a.events() if e.get("event") == "ready"]) == 1


def test_goaway_reconnects(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw, json_mode=False, wait=False)
    conn.send_goaway(0, b"restarting")
    c2 = gw.wait_conn(2)
    assert c2.wait_registered()["alias"] == reg["answered"]["alias"]
    wait_for(lambda: "reconnected to the gateway" in tail(a.log_path), 10, what="a message")
    assert "restarting" in tail(a.log_path)


def test_ping_timeout_reconnects(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw, extra=["--ping-interval", "1s", "--ping-timeout", "2s"])
    conn.freeze()
    t0 = time.monotonic()
    c2 = gw.wait_conn(2, timeout=15)
    assert time.monotonic() - t0 < 8
    assert c2.wait_registered()["alias"] == reg["answered"]["alias"]
    assert "PING" in wait_event(a, "reconnecting")["reason"]
    conn.drop()


def test_refused_after_reconnect_is_retried(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    refusals = []

    def refuse(c, h):
        if len(refusals) < 2:
            refusals.append(c)
            return {"type": "error", "code": "auth", "error": "token changed"}
        return {"type": "welcome", "uid": os.getuid(), "user": "tester", "tunnel": "t2"}
    gw.hello_reply = refuse
    conn.drop()
    c4 = gw.wait_conn(4, timeout=20)
    assert c4.wait_registered()["alias"] == reg["answered"]["alias"]
    reasons = [e["reason"] for e in a.events() if e.get("event") == "reconnecting"]
    assert sum("token changed" in r for r in reasons) == 2, reasons
    wait_event(a, "reconnected")
    assert a.proc.poll() is None


def test_malformed_control_message_ends_the_connection(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    conn.send_control(b"{not json\n")
    conn.wait(lambda: conn.goaway is not None or conn.closed, 10, "GOAWAY")
    assert conn.goaway and conn.goaway[0] == 1 and b"malformed" in conn.goaway[1], conn.goaway
    c2 = gw.wait_conn(2)
    assert c2.wait_registered()["alias"] == reg["answered"]["alias"]
    # An answer to a request the agent never made, and an oversize line.
    c2.send_control({"type": "registered", "id": "r99", "alias": "x", "url": "u", "link": "l"})
    c2.wait(lambda: c2.goaway is not None or c2.closed, 10, "GOAWAY")
    c3 = gw.wait_conn(3)
    c3.wait_registered()
    c3.send_control(b"x" * (70 * 1024))
    c3.wait(lambda: c3.goaway is not None or c3.closed, 10, "GOAWAY")
    assert b"longer" in c3.goaway[1]
    gw.wait_conn(4).wait_registered()


def test_reregister_refused_registers_anew(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)

    def answer(c, m):
        if m.get("alias"):
            return {"type": "error", "id": m["id"], "code": "not_found", "error": "expired"}
        return None
    gw.register_reply = answer
    conn.drop()
    c2 = gw.wait_conn(2)
    c2.wait_registered(2)
    assert c2.registers[0]["alias"] == reg["answered"]["alias"]
    assert "alias" not in c2.registers[1]
    new = wait_event(a, "ready", 2)
    assert new["alias"] == c2.registers[1]["answered"]["alias"] != reg["answered"]["alias"]
    assert http_get(c2, reg["local"])[1] == b"hello\n"


def _welcome(c, h):
    return {"type": "welcome", "uid": os.getuid(), "user": "tester", "tunnel": "t1"}


def test_backoff_grows_when_every_welcomed_tunnel_dies_at_once(tenv):
    """A gateway that welcomes and then drops each tunnel (a crash loop, a gateway that
    kills the tunnel on re-register) used to reset the backoff at every welcome: the agent
    redialled 2-3 times a second for ever. Only a tunnel that lasted resets it now."""
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)

    def welcome_then_drop(c, h):
        threading.Timer(0.05, c.drop).start()
        return _welcome(c, h)
    gw.hello_reply = welcome_then_drop
    conn.drop()
    wait_event(a, "reconnecting", 4, timeout=30)
    attempts = [e["attempt"] for e in a.events() if e.get("event") == "reconnecting"]
    assert attempts[:4] == [1, 2, 3, 4], attempts
    retry = [e["retry_in"] for e in a.events() if e.get("event") == "reconnecting"]
    assert all(r <= 0.5 * 2 ** i for i, r in enumerate(retry[:4])), retry
    assert a.proc.poll() is None
    # A tunnel that lasts resets it: a GOAWAY then brings the agent back within 0.5 s.
    gw.hello_reply = None
    # The first connection welcomed for good: one that came in just before may be it.
    deadline = time.monotonic() + 40
    while True:
        c = gw.conns[-1]
        if any("answered" in m for m in c.registers):
            time.sleep(0.3)  # a dropped one goes within 0.05 s
            if not c.closed and c is gw.conns[-1]:
                break
        assert time.monotonic() < deadline, "the agent did not come back within 40 s"
        time.sleep(0.2)
    n = gw.conns.index(c)  # connections before it
    time.sleep(10.5)
    c.send_goaway(0, b"restarting")
    ev = wait_event(a, "reconnecting", len(attempts) + 1, timeout=20)
    assert ev["attempt"] == 1 and ev["retry_in"] <= 0.5, ev
    gw.wait_conn(n + 2, timeout=10).wait_registered()


# --------------------------------------------------------------------------- flow control


def test_stalled_stream_holds_at_most_its_window(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    big = 16 * MiB
    s1 = conn.open_connect(reg["local"])
    assert s1.wait_status() == 200
    s1.stall()
    s1.send(b"GET /bytes?n=%d HTTP/1.1\r\nHost: app\r\n\r\n" % big)
    s1.wait(lambda: len(s1.data) >= STREAM_WINDOW - 16384, 20, "the stalled stream's window")
    time.sleep(1.0)
    assert len(s1.data) <= STREAM_WINDOW
    # Another stream flows meanwhile.
    s2 = conn.open_connect(reg["local"])
    assert s2.wait_status() == 200
    s2.send(b"GET /bytes?n=%d HTTP/1.1\r\nHost: app\r\n\r\n" % (4 * MiB))
    _, body = s2.read_http_response(timeout=60)
    assert body == (BLOCK * 64)[:4 * MiB]
    assert len(s1.data) <= STREAM_WINDOW, len(s1.data)
    assert s1.received_while_stalled <= STREAM_WINDOW
    # Resumed, the stalled stream gets everything, intact.
    s1.resume()
    _, body = s1.read_http_response(timeout=120)
    assert len(body) == big and body == (BLOCK * (big // len(BLOCK)))


def test_app_that_does_not_read_stalls_the_gateway(tenv):
    """The other direction: the agent hands window back only as the app takes the bytes
    (and at the connection level at once: more than the 64 MiB connection window passes)."""
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    total = 80 * MiB
    st = conn.open_connect(reg["local"])
    assert st.wait_status() == 200
    st.send(b"POST /sink?delay=4 HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % total
            + b"z" * total)
    time.sleep(2.0)
    # The window (256 KiB) plus what the app's socket buffers hold, not the 32 MiB.
    assert st.sent < 4 * MiB, st.sent
    # Meanwhile another stream flows.
    assert http_get(conn, reg["local"])[1] == b"hello\n"
    head, body = st.read_http_response(timeout=60)
    assert json.loads(body)["bytes"] == total


@pytest.mark.rss
def test_stalled_stream_does_not_grow_the_agent(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)

    def rss():
        with open(f"/proc/{a.proc.pid}/status") as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1]) * 1024
    before = rss()
    streams = []
    for _ in range(4):
        s = conn.open_connect(reg["local"])
        assert s.wait_status() == 200
        s.stall()
        s.send(b"GET /bytes?n=%d HTTP/1.1\r\nHost: app\r\n\r\n" % (64 * MiB))
        streams.append(s)
    for s in streams:
        s.wait(lambda s=s: len(s.data) >= STREAM_WINDOW - 16384, 20, "the window")
    time.sleep(1.0)
    # Each stalled stream: its window at the gateway, at most STREAM_BUF_MAX in the agent.
    assert rss() - before < 16 * MiB, (before, rss())


# --------------------------------------------------------------------------- the end


def test_exit_unregisters_and_says_goaway(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    st = conn.open_connect(reg["local"])
    assert st.wait_status() == 200
    st.send(b"GET /exit?code=3 HTTP/1.1\r\nHost: app\r\n\r\n")
    assert a.wait_exit(15) == 3
    conn.wait(lambda: conn.unregisters and conn.goaway is not None, 5, "unregister + GOAWAY")
    assert conn.unregisters == [reg["answered"]["alias"]]
    assert conn.goaway[0] == 0
    assert wait_event(a, "exit")["status"] == 3


def test_sigterm_unregisters(tenv):
    gw = tenv.gateway()
    a, conn, reg = started(tenv, gw)
    os.kill(a.proc.pid, signal.SIGTERM)
    assert a.wait_exit(15) == 128 + signal.SIGTERM
    conn.wait(lambda: conn.unregisters, 5, "unregister")
    assert conn.unregisters == [reg["answered"]["alias"]]


def test_register_refused(tenv):
    gw = tenv.gateway()
    gw.register_reply = lambda c, m: {"type": "error", "id": m["id"], "code": "limit",
                                      "error": "too many apps"}
    tenv.pin()
    out = tenv.cli("run", "-g", gw_url(gw), "--", PY, HTTPAPP, "--unix", "{socket}")
    assert out.returncode == 1, out
    assert "too many apps" in out.stderr.decode(), out.stderr


def test_register_unanswered(tenv):
    gw = tenv.gateway()
    gw.register_reply = lambda c, m: "silent"
    tenv.pin()
    t0 = time.monotonic()
    out = tenv.cli("run", "-g", gw_url(gw), "--", PY, HTTPAPP, "--unix", "{socket}")
    assert out.returncode == 1, out
    assert "did not answer the registration of" in out.stderr.decode(), out.stderr
    assert 14 < time.monotonic() - t0 < 30


# --------------------------------------------------------------------------- transports


def test_https_proxy(tenv):
    gw = tenv.gateway()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    seen = []

    def pipe(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.recv(4096)
                if not d:
                    break
                head += d
            seen.append(head.split(b"\r\n")[0].decode())
            host, port = head.split(b" ")[1].decode().rsplit(":", 1)
            up = socket.create_connection((host, int(port)))
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=pipe, args=(c, up), daemon=True).start()
            threading.Thread(target=pipe, args=(up, c), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    try:
        tenv.pin()
        tenv.run(["-g", gw_url(gw)],
                 env_extra={"https_proxy": f"http://127.0.0.1:{lsock.getsockname()[1]}"})
        conn = gw.wait_conn()
        assert seen == [f"CONNECT localhost:{gw.port} HTTP/1.1"]
        assert conn.hello["auth"]["method"] == "token"
    finally:
        lsock.close()


def fake_ssh(tenv):
    """A stand-in for ssh: records its arguments and runs the remote command here."""
    path = tenv.root / "fake-ssh"
    log = tenv.root / "fake-ssh.args"
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\n"
                    "while [ \"${1#-}\" != \"$1\" ]; do shift 2; done\n"  # -o X
                    "shift\nexec \"$@\"\n")
    os.chmod(path, 0o755)
    return path, log


def test_via_ssh_end_to_end(tenv):
    gw = FakeGateway()
    tenv.gws.append(gw)
    ctl = FakeControl(tenv.root / "control.sock", gw)
    ssh, log = fake_ssh(tenv)
    a = tenv.run(["--via", "ssh:cluster-login"],
                 env_extra={"JOBGATE_SSH": f"{ssh} -o BatchMode=yes",
                            "JOBGATE_REMOTE_JOBGATE": JOBGATE,
                            "JOBGATE_CONTROL": str(ctl.path)})
    conn = gw.wait_conn()
    reg = conn.wait_registered()
    assert log.read_text().split("\n")[:6] == ["-o", "BatchMode=yes", "cluster-login", JOBGATE,
                                               "tunnel", "--stdio"]
    assert ctl.requests == [(b'{"op":"tunnel","version":1}\n', 2, os.getuid())]
    assert conn.hello["auth"] == {"method": "peercred"}
    assert a.ready["link"] == reg["answered"]["link"]
    assert http_get(conn, reg["local"])[1] == b"hello\n"
    # The "ssh" ended (the fds live on in the gateway); the tunnel does not care. A drop
    # makes the agent run ssh again.
    conn.drop()
    c2 = gw.wait_conn(2)
    assert c2.wait_registered()["alias"] == reg["answered"]["alias"]
    os.kill(a.proc.pid, signal.SIGTERM)
    assert a.wait_exit(15) == 128 + signal.SIGTERM
    c2.wait(lambda: c2.unregisters, 5, "unregister")
    ctl.close()


def test_via_ssh_failing(tenv):
    out = tenv.cli("run", "--via", "ssh:nowhere", "--", "true",
                   env_extra={"JOBGATE_SSH": "/bin/false"})
    assert out.returncode == 1, out
    assert "through ssh to nowhere ended before the gateway welcomed this agent, ssh exited " \
        "with status 1" in out.stderr.decode(), out.stderr
    out = tenv.cli("run", "--via", "ssh:nowhere", "--", "true",
                   env_extra={"JOBGATE_SSH": "no-such-ssh-program"})
    assert out.returncode == 1 and b"no-such-ssh-program" in out.stderr, out


def test_tunnel_stdio_refused(tenv):
    gw = FakeGateway()
    ctl = FakeControl(tenv.root / "control.sock", gw,
                      answer={"ok": False, "code": "disabled", "error": "tunnels are disabled"})
    a, b = socket.socketpair()
    try:
        out = subprocess.run([JOBGATE, "tunnel", "--stdio"], stdin=b, stdout=b,
                             stderr=subprocess.PIPE, timeout=20,
                             env=dict(tenv.env, JOBGATE_CONTROL=str(ctl.path)))
        assert out.returncode == 1
        assert out.stderr.decode().strip() == "jobgate: tunnels are disabled"
        assert ctl.requests[0][:2] == (b'{"op":"tunnel","version":1}\n', 2)
        # Nothing was written to the tunnel (standard output).
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(1)
    finally:
        a.close()
        b.close()
        ctl.close()
    out = tenv.cli("tunnel", "--stdio", env_extra={"JOBGATE_CONTROL": "/nonexistent/sock"})
    assert out.returncode == 1 and b"no gateway at /nonexistent/sock" in out.stderr
    out = tenv.cli("tunnel", "--help")
    assert out.returncode == 0 and b"--stdio" in out.stdout


@pytest.mark.parametrize("args,msg", [
    (["-g", "http://gw.example"], "only https://"),
    (["-g", "gw.example"], "expected https://HOST[:PORT]"),
    (["-g", "https://gw.example/path"], "no path"),
    (["-g", "https://gw.example:0"], "bad port"),
    (["-g", "https://user@gw.example"], "no user name"),
    (["-g", "https://gw.example/?q"], "no query"),
    (["--via", "gw.example"], "expected ssh:HOST"),
    (["--via", "ssh:-oProxyCommand=x"], "may not start with '-'"),
    (["-g", "https://gw.example", "--via", "ssh:gw"], "not both"),
    (["--ca", "/etc/ssl/ca.pem"], "--ca goes with -g"),
    (["--via", "ssh:gw", "--ca", "x"], "--ca goes with -g"),
    (["--ping-interval", "5s"], "go with -g or --via"),
    (["-g", "https://gw.example", "--ping-timeout", "0"], "bad --ping-timeout"),
])
def test_usage_errors(tenv, args, msg):
    out = tenv.cli("run", *args, "--", "true")
    assert out.returncode == 2, out
    assert msg in out.stderr.decode(), out.stderr


def test_bad_ca_file(tenv):
    out = tenv.cli("run", "-g", "https://localhost:1", "--ca", tenv.root / "missing.pem", "--",
                   "true")
    assert out.returncode == 1
    assert "cannot load CA certificates from" in out.stderr.decode(), out.stderr


def test_help_mentions_the_tunnel(tenv):
    out = tenv.cli("run", "--help")
    text = out.stdout.decode()
    for opt in ("--gateway", "--via ssh:HOST", "--ca FILE", "--ping-interval", "--ping-timeout"):
        assert opt in text, opt
