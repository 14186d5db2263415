"""Faults survived (issue 13): the gateway stopping (drain), killed at random points of
transfers and started again, with real processes. Each test says what a site relies on."""
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import ssl
import subprocess
import time

import pytest

from conftest import (Gateway, _finish, _gateway, build_request, link_target, start_gateway,
                      start_stalled_transfer, wait_for)
from fakeagent import FakeAgent
from fakegw import make_cert


def token_agent(gw):
    token = (gw.state_dir / "agent.token").read_text().strip()
    return FakeAgent(port=gw.port, auth={"method": "token", "token": token})


def test_a_drain_sends_goaway_to_agents(fresh_gateway):
    """On SIGTERM every tunnel gets its GOAWAY before the gateway goes (it used to be freed
    with the GOAWAY still in its buffer): agents know at once, not by a dead connection."""
    gw = fresh_gateway
    a = token_agent(gw)
    try:
        a.wait_type("welcome")
        assert gw.stop() == 0
        a.wait_closed(5)
        assert (a.close_reason or "").startswith("GOAWAY"), a.close_reason
    finally:
        a.close()


def test_the_drain_time_is_configurable(binaries):
    """[gateway] drain: how long requests in flight get on SIGTERM (it was a fixed 10 s)."""
    gw = _gateway({"gateway": {"drain": "2s"}}, name="drain")
    app = gw.start_direct_app()
    try:
        gw.register(app, name="slow")
        s = gw.login(app.alias, app.link)
        c = start_stalled_transfer(s, "download")
        try:
            t0 = time.monotonic()
            assert gw.stop(timeout=15) == 0
            took = time.monotonic() - t0
        finally:
            c.close()
        assert 1.5 <= took < 8, f"the drain took {took:.1f} s with drain = 2s"
        assert "requests in flight get up to 2 s to finish" in gw.log_path.read_text()
    finally:
        app.stop()
        _finish(gw)


def test_kill_9_at_random_points_loses_nothing_committed(binaries):
    """jobgated killed with SIGKILL in the middle of transfers and registrations, again and
    again: after each restart every route and session committed before is back, the database
    passes PRAGMA integrity_check, and the gateway holds no more descriptors than at the start."""
    gw = _gateway(name="kill9")
    rnd = random.Random(1313)
    apps, sessions = [], {}
    try:
        base_fds = len(os.listdir(f"/proc/{gw.proc.pid}/fd"))
        for round_ in range(4):
            app = gw.start_direct_app()
            apps.append(app)
            gw.register(app, name=f"k{round_}")
            sessions[app.alias] = gw.login(app.alias, app.link)
            # Transfers in flight and a registration racing the kill.
            stalled = [start_stalled_transfer(s, rnd.choice(["download", "upload"]))
                       for s in list(sessions.values())[-2:]]
            time.sleep(rnd.uniform(0.05, 0.4))
            gw.proc.send_signal(signal.SIGKILL)
            gw.proc.wait(10)
            for c in stalled:
                c.close()
            gw.stopped_on_purpose = True
            db = sqlite3.connect(gw.state_dir / "jobgate.db")
            try:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            finally:
                db.close()
            gw.start()
            for alias, s in sessions.items():
                r = s.get("/hello")
                assert r.status == 200, (round_, alias, r)
        # The same descriptors as at the start, give or take the listeners' and the log's.
        wait_for(lambda: len(os.listdir(f"/proc/{gw.proc.pid}/fd")) <= base_fds + 2, 10,
                 what="the restarted gateway to hold no more descriptors than at first")
    finally:
        for a in apps:
            a.stop()
        _finish(gw)


# --------------------------------------------------------------------------- the state store

def _register(gw, app, name):
    return gw.control({"op": "register", "name": name, "socket": app.sock})


def _redeem(gw, alias, link):
    with gw.connect(alias) as c:
        c.send(build_request("GET", link_target(link), gw.host(alias)))
        return c.read_response()


def _store_fault(gw, why, undo):
    """With the store unable to write (why, a fault in force until undo()): the gateway says
    what is wrong, keeps serving its apps and sessions, loses no link it could not use, and
    works again once the fault is gone."""
    app = gw.start_direct_app()
    try:
        assert _register(gw, app, "before")["ok"]
        before = gw.route_by_name("before")
        s = gw.login(before["alias"], gw.new_link(before["alias"]))
        link = gw.new_link(before["alias"])
        try:
            yield  # the fault is made here
            ans = _register(gw, app, "during")
            assert ans["ok"] is False and ans["code"] == "unavailable", ans
            assert why in ans["error"], ans
            assert s.get("/hello").status == 200, "an app stopped being served"
            r = _redeem(gw, before["alias"], link)
            assert r.status == 503 and b"still good" in r.body, r
            assert r.header("Retry-After"), r
            gw.assert_alive()
        finally:
            undo()
        r = _redeem(gw, before["alias"], link)
        assert r.status == 303, f"the link was lost while the store could not write: {r!r}"
        assert _register(gw, app, "after")["ok"]
        assert s.get("/hello").status == 200
    finally:
        app.stop()


def _run_fault(gw, why, make, undo):
    steps = _store_fault(gw, why, undo)
    next(steps)
    make()
    try:
        next(steps)
    except StopIteration:
        pass


def test_a_database_locked_by_another_process(fresh_gateway):
    gw = fresh_gateway
    db = sqlite3.connect(gw.state_dir / "jobgate.db", timeout=0, isolation_level=None)
    try:
        _run_fault(gw, "locked by another process", lambda: db.execute("BEGIN EXCLUSIVE"),
                   lambda: db.execute("ROLLBACK"))
    finally:
        db.close()
    assert "database is locked" in gw.log_path.read_text()


def _mount(*args):
    return subprocess.run(["mount", *map(str, args)], capture_output=True).returncode == 0


def test_a_read_only_state_directory(binaries):
    """A state directory that is read-only (a file system remounted so after errors): the
    gateway refuses to start and says which directory and why, rather than run without
    durable state. (While it runs, Linux refuses to remount a file system it writes to, so a
    store that turns read-only then is mapped by the same code as a full one: unavailable.)"""
    gw = Gateway({}, name="readonly")
    d = gw.state_dir
    if os.geteuid() != 0 or not _mount("--bind", d, d):
        gw.cleanup()
        pytest.skip("needs root to bind-mount the state directory read-only")
    try:
        assert _mount("-o", "remount,ro,bind", d)
        with pytest.raises(AssertionError, match="exited with 1 during startup"):
            gw.start()
        log = gw.log_path.read_text()
        assert f"{d}/" in log and "Read-only file system" in log, log[-800:]
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
        gw.cleanup()


def test_a_full_disk(binaries):
    gw = Gateway(name="full")
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs",
                                       gw.state_home):
        gw.cleanup()
        pytest.skip("needs root to mount a small tmpfs for the state")
    filler = gw.state_home / "filler"
    try:
        start_gateway(gw)

        def fill():
            with open(filler, "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * (1 << 16))
                        f.flush()
                except OSError:
                    pass
        _run_fault(gw, "is full", fill, lambda: filler.unlink())
    finally:
        _finish(gw)
        subprocess.run(["umount", "-l", str(gw.state_home)], capture_output=True)


# --------------------------------------------------------------------------- SIGHUP

def _der_sha256(pem_path):
    with open(pem_path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def test_sighup_reads_the_certificate_again_without_dropping_connections(binaries, tmp_path):
    """A renewed certificate: SIGHUP makes new connections present it, while open ones (and
    their requests) go on with the one they began with. A file that does not load keeps the
    certificate in use (and the rest of the configuration: test_reload.py), with the reason
    in the log."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    a_crt, a_key = make_cert(tmp_path / "a")
    b_crt, b_key = make_cert(tmp_path / "b")
    live_crt, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(a_crt, live_crt)
    shutil.copy(a_key, live_key)
    gw = _gateway({"gateway": {"cert": str(live_crt), "key": str(live_key)}}, name="sighup")
    app = gw.start_direct_app()
    try:
        gw.register(app, name="hup")
        s = gw.login(app.alias, app.link)
        old = s.conn()
        try:
            assert s.get("/hello", conn=old).status == 200
            seen = hashlib.sha256(old.sock.getpeercert(binary_form=True)).hexdigest()
            assert seen == _der_sha256(a_crt)
            shutil.copy(b_crt, live_crt)
            shutil.copy(b_key, live_key)
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "SIGHUP: certificate read again" in gw.log_path.read_text(), 5,
                     what="the reload")
            assert s.get("/hello", conn=old).status == 200, "an open connection was dropped"
            new = s.conn()
            try:
                got = hashlib.sha256(new.sock.getpeercert(binary_form=True)).hexdigest()
                assert got == _der_sha256(b_crt), "new connections still get the old certificate"
                assert s.get("/hello", conn=new).status == 200
            finally:
                new.close()
            # A broken file: the certificate in use stays.
            live_crt.write_text("not a certificate\n")
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "SIGHUP: nothing applied" in gw.log_path.read_text(),
                     5, what="the failed reload to be logged")
            newer = s.conn()
            try:
                got = hashlib.sha256(newer.sock.getpeercert(binary_form=True)).hexdigest()
                assert got == _der_sha256(b_crt)
            finally:
                newer.close()
            assert "SIGHUP: configuration applied (nothing changed)" in gw.log_path.read_text()
            gw.assert_alive()
        finally:
            old.close()
    finally:
        app.stop()
        _finish(gw)


# --------------------------------------------------------------------------- hung daemons

class HungDaemon:
    """A unix socket that takes connections and never answers: munged hanging."""

    def __init__(self, path):
        import socket as _s
        import threading
        self.sock = _s.socket(_s.AF_UNIX, _s.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        self.held, self.stop = [], False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(c)

    def close(self):
        self.stop = True
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_hung_munged_stalls_no_worker(binaries, tmp_path):
    """MUNGE credentials are decoded off the event loops (src/gateway/offload.c): with munged
    hanging, tunnels' hellos and a node's request wait for it, while their worker (the only
    one) goes on serving apps; the waits end with the handshake and connect timeouts, and
    the gateway still stops. Before, the worker itself waited in munge_decode."""
    import threading
    from test_nodechan import node_post
    hung = HungDaemon(tmp_path / "munge.sock")
    gw = _gateway({"gateway": {"workers": "1"},
                   "timeouts": {"handshake": "3s", "connect": "3s"},
                   "tunnel": {"munge_socket": str(tmp_path / "munge.sock")}}, name="hung-munge")
    app = gw.start_direct_app()
    agents, node = [], []

    def node_request():
        try:
            node.append(node_post(gw, "job-end", {"job": 1}, cred="MUNGE:x"))
        except (OSError, IndexError, ValueError) as e:
            node.append(e)
    try:
        gw.register(app, name="alive")
        s = gw.login(app.alias, app.link)
        t_start = time.monotonic()
        agents = [FakeAgent(port=gw.port, auth={"method": "munge", "credential": "MUNGE:x"})
                  for _ in range(3)]
        threading.Thread(target=node_request, daemon=True).start()
        wait_for(lambda: len(hung.held) >= 2, 5, what="munged to be asked")
        for _ in range(5):
            t0 = time.monotonic()
            assert s.get("/hello", timeout=3).status == 200
            assert time.monotonic() - t0 < 1.5, "the worker waited on munged"
            time.sleep(0.1)
        wait_for(lambda: node, 8, what="the node request's answer")
        assert isinstance(node[0], tuple) and node[0][0] == 504, node
        for a in agents:
            a.wait_closed(8)
        assert time.monotonic() - t_start < 9, "the waits were not bounded by the timeouts"
        assert "no welcome within 3 s" in gw.log_path.read_text()
        gw.assert_alive()
        t0 = time.monotonic()
        assert gw.stop(timeout=15) == 0
        assert time.monotonic() - t0 < 12
    finally:
        for a in agents:
            a.close()
        app.stop()
        _finish(gw)
        hung.close()
