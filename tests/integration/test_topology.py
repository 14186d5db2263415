"""The multi-host test infrastructure itself (netns.py, sshd.py), with today's binaries:
three network namespaces (outside, login, node) where outside reaches the gateway on login
but nothing on node, and a real sshd whose sessions reach a gateway's control socket."""
import json
import os
import random
import re
import shlex
import ssl
import subprocess

import pytest

from conftest import JOBGATE, PY, TAG, kill_group, spawn, tagged_pids, wait_for
from netns import DOMAIN, ETC_NETNS, HOSTS, NETNS_DIR, Topology, cleanup_stale
from sshd import STD_PATH, make_sshd

# Listens on 0.0.0.0 (any port), prints the port, answers every connection with "node\n".
LISTENER = """
import socket, sys
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"node\\n")
    c.close()
"""
# What a connection attempt that never reached its host looks like.
UNREACHED = {"timeout", "EHOSTUNREACH", "ENETUNREACH"}


@pytest.fixture(scope="module")
def node_listener(topology):
    """A TCP listener process on node, on every address; its port."""
    p = topology.popen("node", [PY, "-c", LISTENER], stdout=subprocess.PIPE)
    port = int(p.stdout.readline())
    yield port
    kill_group(p)


def gone(pid):
    """pid has exited (a zombie that its parent, maybe init, has not reaped yet counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def read_banner(topo, host, addr, port):
    with topo.create_connection(host, addr, port, timeout=5) as s:
        return s.recv(100)


# --------------------------------------------------------------------------- namespaces


def test_three_namespaces_with_links(topology):
    names = set(os.listdir(NETNS_DIR))
    for h in HOSTS:
        ns = topology.ns[h]
        assert ns in names
        assert f"-{os.getpid()}." in ns and TAG[:8] in ns, ns
        out = topology.run(h, ["ip", "-o", "-4", "addr", "show", "up"], check=True).stdout.decode()
        have = set(re.findall(r"inet (\S+)/", out))
        assert have == {"127.0.0.1", *topology.addrs(h).values()}, out
    assert len({topology.netns_inode(h) for h in HOSTS}) == 3
    assert topology.addrs("login") == {"outside": "10.231.1.1", "node": "10.231.2.1"}
    assert topology.addr("outside") == "10.231.1.2" and topology.addr("node") == "10.231.2.2"
    # Processes land where they are asked to, and names resolve to login on each link.
    p = topology.popen("node", ["sleep", "60"])
    try:
        # (ip netns exec enters the namespace a moment after Popen returns)
        wait_for(lambda: topology.host_of_pid(p.pid) == "node", 5, what="sleep to be in node")
    finally:
        kill_group(p)
    for h in ("outside", "node"):
        r = topology.run(h, ["getent", "hosts", DOMAIN], check=True)
        assert r.stdout.split()[0].decode() == topology.addr("login", h)


def test_login_does_not_forward(topology):
    assert not topology.forwarding("login")
    # outside and node route to each other through login, so only that setting isolates.
    routes = topology.run("outside", ["ip", "route"], check=True).stdout.decode()
    assert f"10.231.2.0/24 via {topology.addr('login', 'outside')}" in routes
    routes = topology.run("node", ["ip", "route"], check=True).stdout.decode()
    assert f"default via {topology.addr('login', 'node')}" in routes


def test_outside_cannot_reach_node(topology, node_listener):
    node = topology.addr("node")
    assert read_banner(topology, "login", node, node_listener) == b"node\n"
    assert read_banner(topology, "node", "127.0.0.1", node_listener) == b"node\n"
    err = topology.connect_error("outside", node, node_listener)
    assert err in UNREACHED, f"outside connecting to node's listener: {err or 'connected'}"
    # No packet from outside reaches node at all: a closed port on node refuses login's
    # connection (node answers with a RST) but outside's attempt meets only silence.
    closed = 1
    assert topology.connect_error("login", node, closed) == "ECONNREFUSED"
    err = topology.connect_error("outside", node, closed)
    assert err in UNREACHED, f"outside connecting to a closed port on node: {err or 'connected'}"


def test_isolation_rests_on_forwarding(topology, node_listener):
    """The positive control of the test above: with forwarding on, outside does reach node."""
    node = topology.addr("node")
    topology.set_forwarding("login", True)
    try:
        wait_for(lambda: topology.connectable("outside", node, node_listener), 5,
                 what="outside to reach node with forwarding on")
        assert read_banner(topology, "outside", node, node_listener) == b"node\n"
    finally:
        topology.set_forwarding("login", False)
    assert topology.connect_error("outside", node, node_listener) in UNREACHED


def test_node_reaches_login_only(topology):
    login_lis, port = topology.listen("login")
    outside_lis, oport = topology.listen("outside")
    with login_lis, outside_lis:
        assert topology.connectable("node", topology.addr("login", "node"), port)
        assert topology.connectable("outside", topology.addr("login", "outside"), port)
        assert topology.connect_error("node", topology.addr("outside"), oport) in UNREACHED
        assert topology.connectable("login", topology.addr("outside"), oport)


def test_stale_namespaces_are_removed(topology):
    # One left by a dead test process, one by a pid now running something else (this one,
    # started at another time); each with a process inside and its /etc/netns files.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [f"jgt-{dead.pid}.1-deadbeef-1-node", f"jgt-{os.getpid()}.1-deadbeef-1-node"]
    procs = []
    try:
        for n in stale:
            subprocess.run(["ip", "netns", "add", n], check=True)
            (ETC_NETNS / n).mkdir(parents=True)
            (ETC_NETNS / n / "hosts").write_text("127.0.0.1 localhost\n")
            procs.append(spawn(["ip", "netns", "exec", n, "sleep", "300"]))
        wait_for(lambda: all(subprocess.run(["ip", "netns", "pids", n], capture_output=True)
                             .stdout.strip() for n in stale), 5, what="sleep in the namespaces")
        removed = cleanup_stale()
        assert set(stale) <= set(removed), removed
        for n in stale:
            assert not (NETNS_DIR / n).exists() and not (ETC_NETNS / n).exists()
        for p in procs:
            assert p.wait(5) == -9
        # The live topology of this run is left alone.
        assert all((NETNS_DIR / topology.ns[h]).exists() for h in HOSTS)
    finally:
        for n in stale:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        for p in procs:
            kill_group(p)


def test_destroy_removes_everything(topology):
    t = Topology.create()
    p = t.popen("node", ["sleep", "300"])
    orphan = t.run("login", ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"],
                   check=True)
    orphan_pid = int(orphan.stdout)
    s, _ = t.listen("outside")  # an in-process socket keeps its namespace alive, not named
    t.destroy()
    s.close()
    assert p.wait(5) < 0
    assert gone(orphan_pid)  # not started by popen: found by `ip netns pids`
    for h in HOSTS:
        assert not (NETNS_DIR / t.ns[h]).exists() and not (ETC_NETNS / t.ns[h]).exists()
    assert not t.dir.exists()
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not re.search(r"^\d+: to-", root_links, re.M), root_links
    t.destroy()  # idempotent


# --------------------------------------------------------------------------- the gateway


def test_gateway_listens_on_both_links(topology, login_gateway):
    gw = login_gateway
    assert topology.host_of_pid(gw.proc.pid) == "login"
    for peer in ("outside", "node"):
        addr = gw.address(peer)
        for server_hostname in (addr, DOMAIN, f"some-alias.{DOMAIN}"):
            # What an agent on node does with `-g https://ADDRESS:PORT` and --ca ca_path.
            ctx = ssl.create_default_context(cafile=str(gw.ca_path))
            with topology.create_connection(peer, addr, gw.port) as raw, \
                    ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                assert tls.version() in ("TLSv1.3", "TLSv1.2")
    assert gw.url("node") == f"https://10.231.2.1:{gw.port}"
    assert gw.url("node", by_name=True) == f"https://{DOMAIN}:{gw.port}"


def test_outside_reaches_app_on_login(topology, login_gateway):
    gw = login_gateway
    app = gw.publish_http(name="topo-hello")
    assert topology.host_of_pid(app.proc.pid) == "login"
    assert app.url == f"https://{app.alias}.{DOMAIN}:{gw.port}/"
    s = gw.login(app.alias, app.link)  # the link redeemed from outside
    r = s.get("/hello")
    assert r.status == 200 and r.body == b"hello\n", r
    # The app sees the browser's address on the outside link: the request came from there.
    r = s.get("/headers")
    fwd = [v for k, v in r.json() if k.lower() == "x-forwarded-for"]
    assert fwd == [topology.addr("outside")], r.json()
    # curl on outside, certificate verified, the name resolved with --resolve.
    c = gw.curl(app.alias, "/hello", "-w", "\n%{http_code}", cookie=s.cookie)
    assert c.returncode == 0 and c.stdout == b"hello\n\n200", c
    c = gw.curl(app.alias, "/hello", "-w", "%{http_code}", "-o", "/dev/null")
    assert c.stdout == b"403", c  # and nothing without the session


def test_node_processes_cannot_use_the_control_socket(topology, login_gateway):
    gw = login_gateway
    sock = str(gw.control_path)
    assert topology.run("login", ["test", "-S", sock]).returncode == 0
    # The filesystem is shared: without hiding, node would see the socket...
    assert topology.run("node", ["test", "-S", sock]).returncode == 0
    # ...so a gateway's processes on other hosts get its directories hidden.
    assert topology.run("node", ["test", "-S", sock], hide=gw.host_hide("node")).returncode == 1
    gw.ls_json(host="login")  # exit status 0 and a JSON list
    bad = gw.cli("ls", "--json", host="node")
    assert bad.returncode != 0 and b"gateway" in bad.stderr.lower(), bad


# --------------------------------------------------------------------------- sshd


def test_ssh_runs_commands(sshd_server):
    r = sshd_server.ssh("echo ok", check=True)
    assert r.stdout == b"ok\n"
    assert r.stderr == b""


def test_ssh_remote_environment(sshd_server, make_gateway):
    gw = make_gateway({})
    sshd_server.for_gateway(gw)
    r = sshd_server.ssh("env; command -v jobgate", check=True)
    lines = r.stdout.decode().splitlines()
    env = dict(ln.split("=", 1) for ln in lines[:-1] if "=" in ln)
    assert env["JOBGATE_CONTROL"] == str(gw.control_path)
    assert env["JOBGATE_TEST_TAG"] == TAG
    assert env["PATH"] == f"{sshd_server.bin}:{STD_PATH}"
    assert os.path.realpath(lines[-1]) == os.path.realpath(JOBGATE)
    assert sshd_server.agent_env() == {"JOBGATE_SSH": sshd_server.jobgate_ssh,
                                       "JOBGATE_REMOTE_JOBGATE": JOBGATE}


def test_ssh_remote_jobgate_reaches_gateway(sshd_server, make_gateway):
    gw = make_gateway({})
    app = gw.publish_http(name="over-ssh")
    sshd_server.for_gateway(gw)
    r = sshd_server.ssh(JOBGATE, "ls", "--json", check=True)
    assert [a["alias"] for a in json.loads(r.stdout)] == [app.alias], r
    # The control socket comes from the session's environment, nothing else.
    sshd_server.set_env(JOBGATE_CONTROL=None)
    try:
        r = sshd_server.ssh(JOBGATE, "ls", "--json")
        assert r.returncode != 0, r
    finally:
        sshd_server.for_gateway(gw)


def test_ssh_stdio_is_binary_clean(sshd_server):
    """What `jobgate tunnel --stdio` will need: every byte through, both ways, with the
    command line an agent builds from JOBGATE_SSH."""
    data = random.Random(7).randbytes(1 << 20)
    argv = [*shlex.split(sshd_server.jobgate_ssh), sshd_server.alias, "cat"]
    r = subprocess.run(argv, input=data, capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == data, (r.returncode, len(r.stdout), r.stderr)


def test_sshd_sessions_are_ended(binaries):
    s = make_sshd()
    try:
        p = spawn(s.ssh_argv("sleep 300"), stdin=subprocess.DEVNULL)
        wait_for(lambda: any(b"sleep" in open(f"/proc/{q}/cmdline", "rb").read()
                             for q in s.session_pids() if os.path.exists(f"/proc/{q}")),
                 10, what="the remote sleep")
        remote = s.session_pids()
        assert set(remote) <= set(tagged_pids())  # the end-of-session sweep would find them
    finally:
        s.cleanup()
    assert [q for q in remote if not gone(q)] == []
    assert p.wait(10) != 0


def test_ssh_from_node_to_login(topology, login_gateway, login_sshd):
    gw, sshd = login_gateway, login_sshd
    app = gw.publish_http(name="via-login-sshd")
    sshd.for_gateway(gw)
    hide = gw.host_hide("node")  # the ssh client on node cannot see the socket itself
    r = sshd.ssh("echo ok; echo $SSH_CONNECTION; readlink /proc/self/ns/net", hide=hide,
                 check=True)
    ok, conn, ns = r.stdout.decode().split("\n")[:3]
    assert ok == "ok"
    client_addr, _, server_addr, server_port = conn.split()
    assert (client_addr, server_addr) == (topology.addr("node"), topology.addr("login", "node"))
    assert int(server_port) == sshd.port
    assert ns == f"net:[{topology.netns_inode('login')}]"  # the session runs on login
    r = sshd.ssh(JOBGATE, "ls", "--json", hide=hide, check=True)
    assert app.alias in [a["alias"] for a in json.loads(r.stdout)], r
    # outside can log in too (testhost.outside), and nothing listens for ssh on node.
    r = sshd.ssh("echo ok", client="outside", host="testhost.outside", check=True)
    assert r.stdout == b"ok\n"
    assert topology.connect_error("login", topology.addr("node"), sshd.port) == "ECONNREFUSED"
