"""The tunnel across hosts, as on a cluster (issue 3): network namespaces made here
(netns.py) with an "outside" host (the browser), a "login" host (the gateway) and a "node"
host (agent and app) that outside cannot route to. Identities are real: a private munged for
MUNGE, a real sshd for `jobgate run --via ssh:HOST`. Skips with the reason where namespaces
cannot be made."""
import os
import time

import pytest

from conftest import _finish, start_gateway, wait_for
from netns import NsGateway


@pytest.fixture(scope="module")
def cluster(topology, munged):
    """A site's gateway on login: shared mode, MUNGE for agents, short PINGs so that a dead
    network is noticed within seconds."""
    gw = start_gateway(NsGateway(topology, config={"tunnel": {
        "munge_socket": munged.socket, "ping_interval": "1s", "ping_timeout": "3s",
        "reconnect_wait": "5s"}}))
    yield gw
    _finish(gw)


def node_env(gw, munged):
    return {"JOBGATE_CA": str(gw.ca_path), "JOBGATE_MUNGE_SOCKET": munged.socket}


def test_node_is_unreachable_from_outside(topology, cluster):
    node = topology.addr("node", "login")
    assert topology.connect_error("outside", node, 22, 1.0) is not None
    assert topology.connect_error("outside", cluster.address(), cluster.port, 1.0) is None


def test_munge_agent_on_the_node(topology, cluster, munged):
    app = cluster.publish_http(host="node", name="nb",
                               extra=["-g", cluster.url("node", by_name=True)],
                               env_extra=node_env(cluster, munged))
    r = cluster.route(app.alias)
    assert r["uid"] == os.getuid() and r["backend"].startswith("tunnel:")
    s = cluster.login(app.alias, app.link)  # the browser, on outside
    assert s.get("/hello").body == b"hello\n"
    app.stop()
    wait_for(lambda: cluster.route(app.alias) is None, 10, what="the route to go with its app")


def test_without_munge_the_agent_says_why(topology, cluster):
    env = {"JOBGATE_CA": str(cluster.ca_path), "JOBGATE_MUNGE_SOCKET": "/nonexistent/munge"}
    r = cluster.cli("run", "-g", cluster.url("node", by_name=True), "--", "true", host="node",
                    env_extra=env, timeout=30)
    assert r.returncode == 1
    assert b"munge" in r.stderr.lower(), r.stderr


def test_network_blip_the_agent_reconnects_and_the_browser_carries_on(topology, cluster,
                                                                       munged):
    app = cluster.publish_http(host="node", name="blip",
                               extra=["-g", cluster.url("node", by_name=True),
                                      "--ping-interval", "1s", "--ping-timeout", "3s"],
                               env_extra=node_env(cluster, munged))
    s = cluster.login(app.alias, app.link)
    assert s.get("/hello").status == 200
    topology.run("node", ["ip", "link", "set", "to-login", "down"], check=True)
    try:
        wait_for(lambda: cluster.route(app.alias)["state"] == "reconnecting", 15,
                 what="the gateway to notice the dead tunnel")
    finally:
        topology.run("node", ["ip", "link", "set", "to-login", "up"], check=True)
    wait_for(lambda: cluster.route(app.alias)["state"] == "ready", 40, interval=0.2,
             what="the agent to reconnect")
    assert s.get("/hello").status == 200  # same URL, same cookie
    app.stop()


def test_ssh_transport(topology, cluster, login_sshd):
    login_sshd.for_gateway(cluster)
    app = cluster.publish_http(host="node", name="viassh", extra=["--via", "ssh:testhost"],
                               env_extra=login_sshd.agent_env())
    r = cluster.route(app.alias)
    assert r["uid"] == os.getuid() and r["backend"].startswith("tunnel:")
    s = cluster.login(app.alias, app.link)
    assert s.get("/hello").body == b"hello\n"
    t0 = time.monotonic()
    app.stop()
    wait_for(lambda: cluster.route(app.alias) is None, 10, what="the route to go")
    assert time.monotonic() - t0 < 10
