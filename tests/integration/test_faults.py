"""Faults survived (issue 13): the gateway stopping (drain), killed at random points of
transfers and started again, with real processes. Each test says what a site relies on."""
import os
import random
import signal
import sqlite3
import time

from conftest import _finish, _gateway, start_stalled_transfer, wait_for
from fakeagent import FakeAgent


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
            with sqlite3.connect(gw.state_dir / "jobgate.db") as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
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
