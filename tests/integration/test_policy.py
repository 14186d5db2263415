"""Connection policies (docs/policy.md): the policy files and `jobgate policy`, and each way
an agent reaches the gateway, in the network-namespace topology (netns.py): the gateway on
login, agents and apps on node, the browser on outside. Agents prove their user with a real
munged; the callback cases use a job recorded over the node channel (as the Slurm plugin
would) so that the agent holds the job's certificate."""
import json
import os
import re
import subprocess
import threading
import time

import pytest

from conftest import JOBGATE, _finish, mkdtemp, start_gateway, wait_for
from netns import NsGateway

HOLD = 6  # [tunnel] hold of the gateway here: long enough to see a poll serve a request


@pytest.fixture(scope="module")
def pgw(topology, munged):
    """A site's gateway on login with short PINGs and a small bound on held requests."""
    gw = start_gateway(NsGateway(topology, name="policy", config={"tunnel": {
        "munge_socket": munged.socket, "ping_interval": "1s", "ping_timeout": "3s",
        "hold": f"{HOLD}s", "hold_max": "2", "poll_min": "1s"}}))
    yield gw
    _finish(gw)


@pytest.fixture(scope="module")
def site_policy():
    """An empty site policy file: the tests never read the machine's /etc/jobgate/policy."""
    d = mkdtemp("jgpol-")
    p = d / "site"
    p.write_text("")
    return p


def node_env(gw, munged, site):
    return {"JOBGATE_CA": str(gw.ca_path), "JOBGATE_MUNGE_SOCKET": munged.socket,
            "JOBGATE_SITE_POLICY": str(site)}


def run_app(gw, munged, site, name, policy=None, extra=()):
    args = ["-g", gw.url("node", by_name=True), "--ping-interval", "1s", "--ping-timeout", "3s"]
    if policy:
        args += ["--policy", policy]
    return gw.publish_http(host="node", name=name, extra=[*args, *extra],
                           env_extra=node_env(gw, munged, site))


def route(gw, alias):
    r = gw.route(alias)
    assert r is not None, f"route {alias} is gone"
    return r


def tunnels_from_node(topology, gw):
    """Established TCP connections from node to the gateway's port (the agents' tunnels)."""
    out = topology.run("node", ["ss", "-Htn", "state", "established", "dport",
                                f"= :{gw.port}"]).stdout.decode()
    return [ln for ln in out.splitlines() if ln.strip()]


def wait_asleep(gw, alias, timeout=15):
    wait_for(lambda: route(gw, alias)["state"] == "asleep", timeout, interval=0.05,
             what=f"{alias} to sleep")
    return route(gw, alias)


# --------------------------------------------------------------------------- the files


def policy_cli(tmp, *args, user=None, site=None):
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "config"),
               JOBGATE_SITE_POLICY=str(tmp / "site"))
    env.pop("JOBGATE_GATEWAY", None)
    (tmp / "config" / "jobgate").mkdir(parents=True, exist_ok=True)
    if site is not None:
        (tmp / "site").write_text(site)
    if user is not None:
        (tmp / "config" / "jobgate" / "policy").write_text(user)
    return subprocess.run([JOBGATE, "policy", *args], env=env, capture_output=True, timeout=10)


def test_policy_files_precedence_and_narrowing(tmp_path):
    # Nothing anywhere: persistent, with reconnect.
    r = policy_cli(tmp_path, "--json", "https://gw.example.org:8443", site="", user="")
    assert r.returncode == 0, r
    p = json.loads(r.stdout)
    assert p["policy"] == "keepalive reconnect" and not p["sleeps"], p
    assert p["from"]["poll"] == "default"

    site = ('# site\n".*" keepalive(600) reconnect callback poll(60)\n'
            '"slow\\..*" keepalive(600) reconnect poll(300)\n')
    user = '".*" keepalive(60) reconnect poll(120)\n"other" callback\n'
    r = policy_cli(tmp_path, "--json", "gw.example.org", site=site, user=user)
    p = json.loads(r.stdout)
    assert (p["keepalive"], p["reconnect"], p["callback"], p["poll"]) == (60, True, False, 120)
    assert p["from"]["keepalive"] == f"user {tmp_path}/config/jobgate/policy:1", p
    # The last matching line wins, and the site's narrows the user's.
    r = policy_cli(tmp_path, "--json", "ssh:slow.example.org")
    p = json.loads(r.stdout)
    assert p["poll"] == 300 and "more often than the site's poll(300)" in p["from"]["poll"], p
    assert p["from"]["poll"].startswith(f"site {tmp_path}/site:3"), p
    # --policy stands in for the user's file, narrowed the same way; the text form says it all.
    r = policy_cli(tmp_path, "--policy", "keepalive(5) callback poll(10)", "gw.example.org")
    out = r.stdout.decode()
    assert r.returncode == 0, r
    assert out.splitlines()[0] == "gw.example.org: keepalive(5) callback poll(60)", out
    assert re.search(r"^  callback +--policy$", out, re.M), out
    assert re.search(r"^  no reconnect +--policy$", out, re.M), out
    assert "closes 5 s after its last connection" in out and "ends 'jobgate run'" in out, out
    # Where the site lets idle tunnels close, the user cannot keep one open for ever.
    r = policy_cli(tmp_path, "--json", "--policy", "keepalive reconnect", "gw.example.org")
    p = json.loads(r.stdout)
    assert p["sleeps"] and p["keepalive"] == 600 and p["poll"] == 60, p
    # Errors name the file and line; a bad option is a usage error.
    r = policy_cli(tmp_path, "gw", user='".*" poll(30)\n\n".*" pol(5)\n')
    assert r.returncode == 1 and f"{tmp_path}/config/jobgate/policy:3: unknown option" \
        in r.stderr.decode(), r
    r = policy_cli(tmp_path, "gw", user="", site='".*" keepalive(0)\n')
    assert r.returncode == 1 and f"{tmp_path}/site:1: keepalive(0)" in r.stderr.decode(), r
    r = policy_cli(tmp_path, "--policy", "sometimes", "gw", site="")
    assert r.returncode == 2 and b"--policy: unknown option 'sometimes'" in r.stderr, r
    r = policy_cli(tmp_path)
    assert r.returncode == 2 and b"missing GATEWAY" in r.stderr, r
    r = subprocess.run([JOBGATE, "run", "--policy", "poll", "-g", "https://x", "--", "true"],
                       capture_output=True, timeout=10)
    assert r.returncode == 2 and b"poll needs its interval" in r.stderr, r
    r = subprocess.run([JOBGATE, "run", "--policy", "poll(5)", "--", "true"],
                       capture_output=True, timeout=10)
    assert r.returncode == 2 and b"--policy goes with -g or --via" in r.stderr, r


# --------------------------------------------------------------------------- the modes


def test_default_policy_keeps_the_tunnel(topology, pgw, munged, site_policy):
    app = run_app(pgw, munged, site_policy, "persist")
    try:
        time.sleep(2.5)
        r = route(pgw, app.alias)
        assert (r["state"], r["reach"]) == ("ready", "tunnel"), r
        assert abs(r["seen"] - time.time()) < 3, r
        assert len(tunnels_from_node(topology, pgw)) == 1
        out = pgw.cli("ls").stdout.decode()
        row = [ln for ln in out.splitlines() if ln.startswith(app.alias)][0]
        assert re.search(r"\btunnel\s+now\b", row), out
        assert not [e for e in app.events() if e.get("event") == "sleeping"]
    finally:
        app.stop()


def test_keepalive_then_poll_serves_a_request_held_while_away(topology, pgw, munged,
                                                             site_policy):
    """keepalive(3) poll(4): the tunnel closes 3 s after the last stream; a request that
    arrives while the agent is away is held and served after its next poll, and the agent,
    told that it was wanted, stays for its keepalive (a poll that finds nothing goes after
    1 s); then the tunnel sleeps again. Link, session and alias stay valid throughout."""
    app = run_app(pgw, munged, site_policy, "poller", policy="keepalive(3) poll(4)")
    try:
        s = pgw.login(app.alias, app.link)
        assert s.get("/hello").body == b"hello\n"
        r = wait_asleep(pgw, app.alias)
        assert r["reach"] == "poll 4s" and r["held"] == 0, r
        assert tunnels_from_node(topology, pgw) == []
        ls = pgw.cli("ls").stdout.decode()
        assert re.search(rf"^{app.alias}\s.*\bpoll 4s\s+(now|\d+s ago)\s", ls, re.M), ls
        # The next poll is 3.6 to 4.4 s after the sleep: a request now waits for it.
        wait_for(lambda: time.time() - route(pgw, app.alias)["seen"] < 2.5, 10,
                 what="a fresh sleep")
        wait_asleep(pgw, app.alias)
        got = {}
        t = threading.Thread(target=lambda: got.update(r=s.get("/hello", timeout=HOLD + 5)))
        t.start()
        wait_for(lambda: route(pgw, app.alias).get("held") == 1, 3, interval=0.02,
                 what="the request to be held")
        t.join(HOLD + 6)
        assert got["r"].status == 200 and got["r"].body == b"hello\n", got
        # Served through the tunnel its poll opened, which stays for the keepalive ...
        time.sleep(2)
        assert route(pgw, app.alias)["reach"] == "tunnel"
        # ... and then sleeps again.
        wait_asleep(pgw, app.alias, timeout=10)
        sleeps = [e for e in app.events() if e.get("event") == "sleeping"]
        assert len(sleeps) >= 2 and all(3.5 <= e["next_poll"] <= 4.5 for e in sleeps), sleeps
        assert app.proc.poll() is None
    finally:
        app.stop()
    # Closing while asleep: the agent wakes to take its route back.
    wait_for(lambda: pgw.route(app.alias) is None, 15, what="the route to go with its app")


def test_held_requests_are_bounded_and_told_when_to_come_back(topology, pgw, munged,
                                                             site_policy):
    app = run_app(pgw, munged, site_policy, "bound", policy="keepalive(1) poll(60)")
    try:
        s = pgw.login(app.alias, app.link)
        wait_asleep(pgw, app.alias)
        got = []
        threads = [threading.Thread(target=lambda: got.append(s.get("/hello", timeout=HOLD + 5)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: route(pgw, app.alias).get("held") == 2, 5, interval=0.02,
                 what="two requests to be held")
        # hold_max = 2: the third is answered at once, a program with a plain 503 ...
        t0 = time.monotonic()
        r = s.get("/hello")
        assert time.monotonic() - t0 < 2
        assert r.status == 503, r
        retry = int(r.header("retry-after"))
        assert 1 <= retry <= 60, r
        assert r.header("content-type").startswith("text/plain") and b"asleep" in r.body, r
        # ... a browser with a page that tries again by itself.
        r = s.get("/hello", headers=[("Accept", "text/html,application/xhtml+xml;q=0.9")])
        assert r.status == 503 and r.header("content-type").startswith("text/html"), r
        assert re.search(rb'http-equiv="refresh" content="\d+"', r.body), r.body
        assert b"Waking the app" in r.body
        # The held ones give up after [tunnel] hold: the agent is 60 s away.
        for t in threads:
            t.join(HOLD + 6)
        assert [x.status for x in got] == [503, 503], got
        assert route(pgw, app.alias)["held"] == 0
        assert route(pgw, app.alias)["state"] == "asleep"
    finally:
        app.stop()
    wait_for(lambda: pgw.route(app.alias) is None, 15, what="the route to go with its app")


def test_without_reconnect_a_lost_tunnel_ends_the_run(topology, pgw, munged, site_policy):
    app = run_app(pgw, munged, site_policy, "once", policy="keepalive")
    assert route(pgw, app.alias)["reach"] == "tunnel"
    topology.run("node", ["ip", "link", "set", "to-login", "down"], check=True)
    try:
        assert app.wait_exit(20) == 1
        wait_for(lambda: pgw.route(app.alias) is None, 10,
                 what="the gateway to drop the route at once, without a grace time")
    finally:
        topology.run("node", ["ip", "link", "set", "to-login", "up"], check=True)
    err = app.log_path.read_text()
    assert "the connection policy has no reconnect" in err and "stopped with its tunnel" in err, err
    assert [e for e in app.events() if e.get("event") == "lost"], app.lines


# --------------------------------------------------------------------------- callback


def test_callback_serves_while_asleep_and_a_failed_dial_waits_for_the_poll(
        topology, pgw, munged, site_policy):
    """keepalive(2) callback poll(4) in a job (its certificate from the node channel, as the
    plugin would have it): while the tunnel sleeps the gateway dials the job's own endpoint on
    node for each browser connection; when that dial fails, the request waits for the agent's
    next poll and is served through the tunnel it opens."""
    from slurm import cluster_user
    from test_direct import USER, Job
    cluster_user(USER)
    job = Job(topology, pgw, munged, 5401)
    port, extra = 21401, "10.231.2.3"
    # The job's endpoint as the gateway knows it: an address of node's that the test can
    # take away (the endpoint listens on every address of node).
    topology.run("node", ["ip", "addr", "add", f"{extra}/24", "dev", "to-login"], check=True)
    job.ready(port, host=extra)
    env = {"JOBGATE_DIR": str(job.dir), "JOBGATE_JOB_ID": str(job.id),
           "JOBGATE_GATEWAY": pgw.url("node"), "JOBGATE_MUNGE_SOCKET": munged.socket,
           "JOBGATE_SITE_POLICY": str(site_policy)}
    app = pgw.publish_http(host="node", name="cbpol", env_extra=env, extra=[
        "--ca", str(pgw.ca_path), "--policy", "keepalive(2) callback poll(4)",
        "--callback-port", str(port), "--ping-interval", "1s", "--ping-timeout", "3s"])
    try:
        assert app.ready.get("callback_port") == port, app.ready
        r = route(pgw, app.alias)
        assert r["reach"] == "tunnel" and r["job"] == job.id, r
        s = pgw.login(app.alias, app.link)
        assert s.get("/hello").body == b"hello\n"
        r = wait_asleep(pgw, app.alias)
        assert r["reach"] == "callback, poll 4s", r
        # Asleep: each new browser connection is dialled through to the job's endpoint.
        for _ in range(3):
            resp = s.get("/hello", conn=s.conn())
            assert resp.status == 200 and resp.body == b"hello\n", resp
        log = pgw.log_path.read_text()
        assert "the callback failed" not in log
        assert route(pgw, app.alias)["reach"] in ("callback, poll 4s", "tunnel")
        # The endpoint's address goes: the dial fails (no answer within 3 s), and the request
        # is served after the agent's next poll (at most 4.4 s away; it is held for 6).
        topology.run("node", ["ip", "addr", "del", f"{extra}/24", "dev", "to-login"],
                      check=True)
        wait_asleep(pgw, app.alias)
        resp = s.get("/hello", conn=s.conn(HOLD + 10))
        assert resp.status == 200 and resp.body == b"hello\n", resp
        assert "the callback failed" in pgw.log_path.read_text()
    finally:
        topology.run("node", ["ip", "addr", "del", f"{extra}/24", "dev", "to-login"])
        app.stop()
    wait_for(lambda: pgw.route(app.alias) is None, 15, what="the route to go with its app")


# --------------------------------------------------------------------------- one tunnel


def established_to(topology, host, port):
    """ESTABLISHED TCP connections to port in host's namespace, from /proc/net/tcp{,6}."""
    n = 0
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        out = topology.run(host, ["cat", f]).stdout.decode()
        for ln in out.splitlines()[1:]:
            fields = ln.split()
            if len(fields) > 3 and fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
                n += 1
    return n


def holders(gw):
    """Pids of the tunnel holders (`jobgate tunnel --hold`) for gw's gateway."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--hold" in argv and any(f":{gw.port}".encode() in a for a in argv):
            out.append(int(d))
    return out


def test_apps_of_a_user_on_a_node_share_one_tunnel(topology, pgw, munged, site_policy):
    """Two, then ten apps of one user on node: one TCP connection to the gateway, held by
    one holder process; it lives while any app does, and the last one out closes it."""
    apps = []
    try:
        for i in range(2):
            apps.append(run_app(pgw, munged, site_policy, f"share{i}"))
        assert established_to(topology, "node", pgw.port) == 1
        [holder] = holders(pgw)
        # Its command line names the tunnel by a hash only (what it hashes may hold a
        # proxy's credentials; everyone may read a command line).
        with open(f"/proc/{holder}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert re.fullmatch(rb"[0-9a-f]{16}", argv[argv.index(b"--name") + 1]), argv
        assert not [a for a in argv if b"munge" in a or b"state=" in a], argv
        for i in range(2, 10):
            apps.append(run_app(pgw, munged, site_policy, f"share{i}"))
        assert established_to(topology, "node", pgw.port) == 1
        assert len({a.alias for a in apps}) == 10
        sessions = [pgw.login(a.alias, a.link) for a in apps[:3]]
        for s in sessions:
            assert s.get("/hello").body == b"hello\n"
        # The first app (whose run started the holder) ends: the others keep the tunnel.
        apps[0].stop()
        wait_for(lambda: pgw.route(apps[0].alias) is None, 10, what="the first app's route")
        assert established_to(topology, "node", pgw.port) == 1
        assert len(holders(pgw)) == 1
        assert sessions[1].get("/hello").status == 200
        for a in apps[1:]:
            a.stop()
        wait_for(lambda: established_to(topology, "node", pgw.port) == 0, 10,
                 what="the last one out to close the tunnel")
        wait_for(lambda: holders(pgw) == [], 10, what="the holder to exit")
        assert all(pgw.route(a.alias) is None for a in apps)
    finally:
        for a in apps:
            a.stop()


def test_killing_the_holder_moves_the_tunnel_and_loses_no_app(topology, pgw, munged,
                                                              site_policy):
    apps = [run_app(pgw, munged, site_policy, f"keep{i}") for i in range(3)]
    try:
        sessions = [pgw.login(a.alias, a.link) for a in apps]
        [old] = holders(pgw)
        os.kill(old, 9)
        # Within the reconnect backoff another holder (started by one of the runs) carries
        # every app again under its alias; the browsers' cookies still work.
        wait_for(lambda: [p for p in holders(pgw) if p != old], 15, what="a new holder")
        for a in apps:
            wait_for(lambda a=a: (pgw.route(a.alias) or {}).get("reach") == "tunnel", 15,
                     what=f"{a.alias} to be carried again")
        for s in sessions:
            assert s.get("/hello").body == b"hello\n"
        assert established_to(topology, "node", pgw.port) == 1
        assert all(a.proc.poll() is None for a in apps)
        said = [e for a in apps for e in a.events() if e.get("event") == "reconnecting"]
        assert said and all(e["reason"] == "the process holding the tunnel ended"
                            for e in said), said
    finally:
        for a in apps:
            a.stop()


def test_callback_alone_and_callback_without_a_job(topology, pgw, munged, site_policy):
    """keepalive(1) callback: asleep, every browser connection is dialled to the job's
    endpoint (reach "callback"); without a job's certificate the agent says that callback
    needs one and keeps its tunnel open instead."""
    from slurm import cluster_user
    from test_direct import USER, Job
    cluster_user(USER)
    job = Job(topology, pgw, munged, 5402)
    port = 21402
    job.ready(port)
    env = {"JOBGATE_DIR": str(job.dir), "JOBGATE_JOB_ID": str(job.id),
           "JOBGATE_GATEWAY": pgw.url("node"), "JOBGATE_MUNGE_SOCKET": munged.socket,
           "JOBGATE_SITE_POLICY": str(site_policy)}
    app = pgw.publish_http(host="node", name="cbonly", env_extra=env, extra=[
        "--ca", str(pgw.ca_path), "--policy", "keepalive(1) callback",
        "--callback-port", str(port)])
    plain = run_app(pgw, munged, site_policy, "nojob", policy="keepalive(1) callback")
    try:
        s = pgw.login(app.alias, app.link)
        r = wait_asleep(pgw, app.alias)
        assert r["reach"] == "callback", r
        for _ in range(2):
            resp = s.get("/hello", conn=s.conn())
            assert resp.status == 200 and resp.body == b"hello\n", resp
        assert route(pgw, app.alias)["state"] == "asleep"
        time.sleep(2)
        assert route(pgw, plain.alias)["reach"] == "tunnel"
        assert "callback needs a Slurm job started with --jobgate" in plain.log_path.read_text()
        assert {"event": "policy", "policy": "keepalive(1)"} in plain.events(), plain.lines
    finally:
        app.stop()
        plain.stop()
