"""Review findings for the agent's tunnel (src/agent/tunnel.c, run.c): each test failed on
the code as first reviewed and checks one fix. Reuses the fake gateway of fakegw.py and the
Env / tenv helpers of test_agent_tunnel.py."""
import os
import threading
import time

from test_agent_tunnel import gw_url, started, tenv, wait_event  # noqa: F401 - fixture


def _welcome(c, h):
    return {"type": "welcome", "uid": os.getuid(), "user": "tester", "tunnel": "t1"}


# --------------------------------------------------------------------------- backoff


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
    n = len(gw.conns)
    c = gw.wait_conn(n + 1, timeout=40)
    c.wait_registered()
    time.sleep(10.5)
    c.send_goaway(0, b"restarting")
    ev = wait_event(a, "reconnecting", len(attempts) + 1, timeout=20)
    assert ev["attempt"] == 1 and ev["retry_in"] <= 0.5, ev
    gw.wait_conn(n + 2, timeout=10).wait_registered()
