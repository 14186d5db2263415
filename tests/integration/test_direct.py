"""Direct routes (src/gateway/backend_direct.c, docs/slurm.md "Direct routes"): the gateway
dials a job's own TLS endpoint. In the network-namespace topology (netns.py): the gateway on
login, the job's endpoint on node at node's own address (not loopback: a destination the
gateway reaches over the network), the browser on outside. The endpoint here is the test's
own (Python's ssl, in node's namespace), so that each refusal can be shown; the real agent
(`jobgate run --callback`) is driven at the end."""
import base64
import json
import pwd
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import _finish, mkdtemp, start_gateway, wait_for
from fakeagent import FakeAgent
from netns import NsGateway
from slurm import cluster_user, slurm_ns_cluster  # noqa: F401
from test_nodechan import csr_of, new_key, node_post

USER = "jgnode1"
GATEWAY_URI = "urn:jobgate:gateway"


@pytest.fixture(scope="module")
def dgw(topology, munged, binaries):
    cluster_user(USER)
    gw = start_gateway(NsGateway(topology, config={"tunnel": {"munge_socket": munged.socket}},
                                 name="direct"))
    yield gw
    _finish(gw)


class Job:
    """A job recorded at the gateway (the node channel, from node), its key and certificate."""

    def __init__(self, topo, gw, munged, job):
        self.topo, self.gw, self.munged, self.id = topo, gw, munged, job
        self.key = new_key()
        self.pw = pwd.getpwnam(USER)
        st, ans = self.post("job-start", {"job": job, "uid": self.pw.pw_uid, "user": USER,
                                          "node": "node", "time_limit": 3600,
                                          "csr": csr_of(self.key)})
        assert st == 200, ans
        self.cert_pem, self.ca_pem = ans["cert"], ans["ca"]
        self.dir = mkdtemp("jgjob-")
        (self.dir / "job.crt").write_text(self.cert_pem)
        (self.dir / "ca.crt").write_text(self.ca_pem)
        kp = self.dir / "job.key"
        kp.write_bytes(self.key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        kp.chmod(0o600)

    def post(self, op, body):
        return node_post(self.gw, op, body, munged=self.munged, connect=lambda: (
            self.topo.create_connection("node", self.gw.address("node"), self.gw.port)))

    def ready(self, *ports, host=None):
        host = host or self.topo.addr("node")
        st, ans = self.post("job-ready", {"job": self.id, "node": "node",
                                          "listen": [{"host": host, "port": p} for p in ports]})
        assert st == 200, ans

    def agent(self):
        """A FakeAgent on node, proving the job with its certificate."""
        raw = self.topo.create_connection("node", self.gw.address("node"), self.gw.port)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["jobgate/1"])
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        key = self.key

        def auth(nonce):
            sig = key.sign(f"jobgate/1 hello {nonce}".encode(), ec.ECDSA(hashes.SHA256()))
            return {"method": "jobcert", "cert": self.cert_pem,
                    "signature": base64.b64encode(sig).decode()}
        return FakeAgent(sock=tls, auth=auth)


class Endpoint:
    """A TLS server in node's namespace that presents cert/key, requires a client
    certificate of ca, and answers HTTP requests with 'direct <job>'."""

    def __init__(self, topo, job, cert_pem=None, key=None):
        self.seen_client = []
        d = mkdtemp("jgep-")
        (d / "crt.pem").write_text(cert_pem or job.cert_pem)
        (d / "key.pem").write_bytes((key or job.key).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (d / "ca.pem").write_text(job.ca_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(d / "crt.pem", d / "key.pem")
        self.ctx.load_verify_locations(d / "ca.pem")
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = topo.socket("node")
        self.sock.bind((topo.addr("node"), 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.body = f"direct {job.id}\n".encode()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        try:
            with self.ctx.wrap_socket(c, server_side=True) as t:
                der = t.getpeercert(binary_form=True)
                cert = x509.load_der_x509_certificate(der)
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                self.seen_client.append(san.value.get_values_for_type(
                    x509.UniformResourceIdentifier))
                t.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = t.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.body)
                          + self.body)
        except (OSError, ssl.SSLError, ValueError):
            pass

    def close(self):
        self.sock.close()


def test_a_direct_route_reaches_the_jobs_endpoint(topology, dgw, munged):
    job = Job(topology, dgw, munged, 5101)
    ep = Endpoint(topology, job)
    a = job.agent()
    try:
        assert a.wait_type("welcome")["job"] == 5101
        # Not a destination yet: refused, with the way out.
        a.send_ctl({"type": "register", "id": "d1", "name": "nb", "local": "nb",
                    "direct": {"port": ep.port}})
        err = a.wait_msg(lambda m: m.get("id") == "d1")
        assert err["type"] == "error" and err["code"] == "not_destination", err
        job.ready(ep.port)
        a.send_ctl({"type": "register", "id": "d2", "name": "nb", "local": "nb",
                    "direct": {"port": ep.port}})
        reg = a.wait_msg(lambda m: m.get("id") == "d2")
        assert reg["type"] == "registered" and reg["kind"] == "direct", reg
        route = [r for r in dgw.ls_json() if r["alias"] == reg["alias"]][0]
        assert route["backend"] == f"direct:{topology.addr('node')}:{ep.port}", route
        assert route["job"] == 5101 and route["uid"] == job.pw.pw_uid, route
        s = dgw.login(reg["alias"], reg["link"])
        r = s.get("/")
        assert r.status == 200 and r.body == b"direct 5101\n", r
        assert ep.seen_client and ep.seen_client[-1] == [GATEWAY_URI], ep.seen_client
        # The job says it no longer listens there: the next connection is refused (I3 on
        # every connection, not only at registration).
        job.ready()
        r = s.get("/", conn=s.conn())
        assert r.status == 502, r
        job.ready(ep.port)
        assert s.get("/", conn=s.conn()).status == 200
        # The agent ends it (any agent of the job may).
        a.send_ctl({"type": "unregister", "id": "u1", "alias": reg["alias"]})
        assert a.wait_msg(lambda m: m.get("id") == "u1")["type"] == "unregistered"
        assert not [r for r in dgw.ls_json() if r["alias"] == reg["alias"]]
    finally:
        a.close()
        ep.close()


def test_a_direct_endpoint_must_be_the_jobs_own(topology, dgw, munged):
    job = Job(topology, dgw, munged, 5201)
    other = Job(topology, dgw, munged, 5202)
    # Job 5201's destination answered with job 5202's certificate: refused.
    ep = Endpoint(topology, job, cert_pem=other.cert_pem, key=other.key)
    job.ready(ep.port)
    a = job.agent()
    try:
        a.wait_type("welcome")
        a.send_ctl({"type": "register", "id": "d", "name": "x", "local": "x",
                    "direct": {"port": ep.port}})
        reg = a.wait_msg(lambda m: m.get("id") == "d")
        s = dgw.login(reg["alias"], reg["link"])
        assert s.get("/").status == 502
        assert "the endpoint is job 5202's" in dgw.log_path.read_text()
        # A tunnel without a job may not make a direct route at all.
        # The job ends: its direct route goes.
        st, _ = job.post("job-end", {"job": 5201, "node": "node"})
        assert st == 200
        assert not [r for r in dgw.ls_json() if r["alias"] == reg["alias"]]
    finally:
        a.close()
        ep.close()


def test_jobgate_run_callback_holds_no_tunnel(topology, dgw, munged):
    """The real agent on node: `jobgate run --callback` in a job's environment serves its app
    through its own mTLS endpoint; the gateway dials it; no tunnel stays open; the route goes
    when the app ends."""
    job = Job(topology, dgw, munged, 5301)
    port = 20000 + (job.id % 10000)
    job.ready(port)  # what the plugin would report once the endpoint listens
    env = {"JOBGATE_DIR": str(job.dir), "JOBGATE_JOB_ID": str(job.id),
           "JOBGATE_GATEWAY": dgw.url("node"), "JOBGATE_MUNGE_SOCKET": munged.socket}
    # The job's key answers its own gateway only: named otherwise (by name, not by the
    # address the plugin gave), the agent proves its user, not the job, and gets no direct
    # route.
    other = dgw.publish_http(host="node", name="cb", wait=False, extra=[
        "-g", dgw.url("node", by_name=True), "--ca", str(dgw.ca_path), "--callback",
        "--callback-port", str(port)], env_extra=env)
    assert other.wait_exit(30) == 1
    assert "a direct route belongs to a job" in other.log_path.read_text(), \
        other.log_path.read_text()
    app = dgw.publish_http(host="node", name="cb", extra=[
        "--ca", str(dgw.ca_path), "--callback", "--callback-port", str(port)], env_extra=env)
    try:
        route = [r for r in dgw.ls_json() if r["alias"] == app.alias][0]
        assert route["backend"] == f"direct:{topology.addr('node')}:{port}", route
        assert route["job"] == 5301, route
        assert app.ready.get("callback_port") == port, app.ready
        s = dgw.login(app.alias, app.link)
        for _ in range(3):  # a new connection each time: the gateway dials each one
            r = s.get("/hello", conn=s.conn())
            assert r.status == 200 and r.body == b"hello\n", r
        # The registration's tunnel is gone: no connection from node to the gateway stays.
        def to_gateway():
            out = topology.run("node", ["ss", "-Htn", "state", "established", "dport",
                                        f"= :{dgw.port}"]).stdout.decode()
            return [ln for ln in out.splitlines() if ln.strip()]
        wait_for(lambda: to_gateway() == [], 10, what="the registration's tunnel to close")
        # Someone on node without the gateway's certificate gets nothing of the app.
        raw = topology.create_connection("node", topology.addr("node"), port)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with ctx.wrap_socket(raw, server_hostname="x") as t:
                t.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                assert t.recv(100) == b""
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass  # refused in the handshake: no client certificate
    finally:
        app.stop()
    wait_for(lambda: not [r for r in dgw.ls_json() if r["alias"] == app.alias], 10,
             what="the direct route to go with the app")


def test_a_slurm_job_serves_its_app_through_a_direct_route(slurm_ns_cluster, topology):
    """sbatch --jobgate with `jobgate run --callback`: the plugin gives the job its
    certificate and reports its endpoint (JOBGATE_READY_FD, at node's own address), the
    gateway on login dials it for the browser on outside, and scancel ends it all."""
    from slurm import SCANCEL, cluster_user
    from test_slurm import USER, wait_ready_in
    from conftest import HTTPAPP, JOBGATE, PY
    c = slurm_ns_cluster
    gw = c.gateway
    uid, _ = cluster_user(USER)
    job = c.sbatch(USER, "--jobgate", "--wrap",
                   f"exec {JOBGATE} run --json --callback -- {PY} {HTTPAPP} --unix {{socket}}")
    ev = wait_ready_in(c, job)
    route = [r for r in gw.ls_json() if r["alias"] == ev["alias"]]
    assert route and route[0]["job"] == job and route[0]["uid"] == uid, route
    assert route[0]["backend"] == f"direct:{topology.addr('node')}:{ev['callback_port']}", route
    s = gw.login(ev["alias"], ev["link"])
    for _ in range(2):
        r = s.get("/hello", conn=s.conn())
        assert r.status == 200 and r.body == b"hello\n", r
    dests = [j for j in json.loads(gw.cli("jobs", "--json").stdout) if j["job"] == job][0]
    assert {"node": "jgnode", "host": topology.addr("node"), "port": ev["callback_port"]} in \
        dests["destinations"], dests
    c.run(SCANCEL, job)
    wait_for(lambda: not [r for r in gw.ls_json() if r["alias"] == ev["alias"]], 10,
             what="the direct route to go with the job")
