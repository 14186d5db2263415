"""Review of the gateway's side of the tunnel (src/gateway/tunnel.c): hostile or odd agents
that the first suite did not drive. Each test failed before its fix."""
import json
import time

from fakeagent import FakeAgent


def token_of(gw):
    return (gw.state_dir / "agent.token").read_text().strip()


def agent(gw, **kw):
    kw.setdefault("auth", {"method": "token", "token": token_of(gw)})
    return FakeAgent(port=gw.port, **kw)


def gateway_fds(gw):
    import os
    return len(os.listdir(f"/proc/{gw.proc.pid}/fd"))


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
    assert "afterdeath" not in gateway.cli("ls", "--json").stdout.decode()


