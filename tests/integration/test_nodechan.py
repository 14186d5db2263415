"""The node channel (src/gateway/nodechan.c, docs/slurm.md) and job certificates in the
tunnel's hello (method jobcert, src/gateway/tunnel_ctl.c), against a real jobgated and the
tests' munged: what the Slurm plugin sends, and what a hostile node, user or agent might.
The real plugin and a real Slurm drive the same paths in test_slurm.py."""
import base64
import datetime
import hashlib
import json
import os
import pwd
import re
import socket
import ssl
import subprocess
import time


import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import HTTPAPP, PY, Gateway, Munged, control_as, wait_for
from fakeagent import FakeAgent, munge_payload
from slurm import cluster_user

USER = "jgnode1"   # the jobs' user: the gateway must know it by name and uid


@pytest.fixture(scope="module")
def job_user():
    if os.geteuid() != 0:
        pytest.skip("the node channel trusts root's credentials: the tests run as root")
    cluster_user(USER)
    return pwd.getpwnam(USER)


@pytest.fixture
def gw(make_gateway, munged):
    if os.geteuid() != 0:
        pytest.skip("the node channel trusts root's credentials: the tests run as root")
    return make_gateway({"tunnel": {"munge_socket": munged.socket}}, name="nodes")


def node_post(gw, op, body, cred=None, munged=None, raw_body=None, headers=(), connect=None):
    """POSTs a node request the way the plugin does; (status, JSON answer). connect: a
    function that returns a connected socket to the gateway (default: 127.0.0.1)."""
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    if cred is None:
        digest = hashlib.sha256(data).hexdigest()
        cred = munged.encode(f"jobgate/1 node {op} {digest}")
    head = (f"POST /_jobgate/node/v1/{op} HTTP/1.1\r\nHost: localhost:{gw.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            + (f"Authorization: MUNGE {cred}\r\n" if cred else "")
            + "".join(f"{k}: {v}\r\n" for k, v in headers)
            + "Connection: close\r\n\r\n").encode()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = connect() if connect else socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    with raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(head)
        for i in range(0, len(data), 700):  # in pieces: the gateway waits for the whole body
            s.sendall(data[i:i + 700])
            time.sleep(0.01)
        ans = b""
        while chunk := s.recv(65536):
            ans += chunk
    status = int(ans.split(b" ", 2)[1])
    body = ans.split(b"\r\n\r\n", 1)[1]
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body  # the gateway's own error pages (413 before any reading)


def new_key():
    return ec.generate_private_key(ec.SECP256R1())


def csr_of(key):
    req = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")]))
           .sign(key, hashes.SHA256()))
    return req.public_bytes(serialization.Encoding.PEM).decode()


def start_job(gw, munged, job_user, job, key, node="cn001", time_limit=3600, connect=None):
    st, ans = node_post(gw, "job-start", {
        "job": job, "uid": job_user.pw_uid, "user": job_user.pw_name, "node": node,
        "time_limit": time_limit, "csr": csr_of(key)}, munged=munged, connect=connect)
    assert st == 200, ans
    return ans


def jobcert_auth(cert_pem, key):
    def auth(nonce):
        sig = key.sign(f"jobgate/1 hello {nonce}".encode(), ec.ECDSA(hashes.SHA256()))
        return {"method": "jobcert", "cert": cert_pem,
                "signature": base64.b64encode(sig).decode()}
    return auth


def test_a_node_gets_a_certificate_for_its_job(gw, munged, job_user):
    key = new_key()
    ans = start_job(gw, munged, job_user, 4101, key, time_limit=600)
    cert = x509.load_pem_x509_certificate(ans["cert"].encode())
    ca = x509.load_pem_x509_certificate(ans["ca"].encode())
    # The names come from the record: job and user, three times over.
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "job-4101"
    assert cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value == USER
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:jobgate:job:4101:uid:{job_user.pw_uid}"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # For the node's key, signed by the gateway's agent CA, for the time limit plus 15 min.
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                           ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.issuer == ca.subject
    life = cert.not_valid_after - datetime.datetime.utcnow()
    assert datetime.timedelta(minutes=24) < life <= datetime.timedelta(minutes=25, seconds=5)
    assert ans["ca"] == (gw.state_dir / "agent-ca.crt").read_text()
    # A second node of the job: the same record, a certificate of its own.
    again = start_job(gw, munged, job_user, 4101, new_key(), node="cn002")
    assert again["not_after"] == ans["not_after"]
    assert "job start job=4101" in gw.log_path.read_text()


def test_node_credentials_are_checked(gw, munged, job_user):
    body = {"job": 4102, "uid": job_user.pw_uid, "user": USER, "node": "cn001",
            "csr": csr_of(new_key())}
    data = json.dumps(body).encode()
    # No credential, or one that is not MUNGE's.
    st, ans = node_post(gw, "job-start", body, cred="")
    assert st == 401 and "Authorization: MUNGE" in ans["error"], ans
    st, ans = node_post(gw, "job-start", body, cred="MUNGE:bogus")
    assert st == 401 and "MUNGE credential refused" in ans["error"], ans
    # A credential over another body, or another operation.
    other = munged.encode("jobgate/1 node job-start " + hashlib.sha256(b"{}").hexdigest())
    st, ans = node_post(gw, "job-start", body, cred=other)
    assert st == 401, ans
    wrong_op = munged.encode("jobgate/1 node job-end " + hashlib.sha256(data).hexdigest())
    st, ans = node_post(gw, "job-start", body, cred=wrong_op)
    assert st == 401, ans
    # A good credential once; its replay is refused by munged.
    good = munged.encode("jobgate/1 node job-start " + hashlib.sha256(data).hexdigest())
    st, ans = node_post(gw, "job-start", body, cred=good)
    assert st == 200, ans
    st, ans = node_post(gw, "job-start", body, cred=good)
    assert st == 401 and "replay" in ans["error"].lower(), ans
    # A user who is not a node: 403, however valid the credential.
    payload = "jobgate/1 node job-start " + hashlib.sha256(data).hexdigest()
    p = subprocess.run(["setpriv", f"--reuid={job_user.pw_uid}", f"--regid={job_user.pw_gid}",
                        "--clear-groups", Munged.MUNGE, f"--socket={munged.socket}", "-s",
                        payload], check=True, capture_output=True)
    st, ans = node_post(gw, "job-start", body, cred=p.stdout.decode().strip())
    assert st == 403 and f"uid {job_user.pw_uid} may not speak for nodes" in ans["error"], ans
    assert "node_users" in ans["error"]


def test_node_requests_are_checked(gw, munged, job_user):
    base = {"job": 4103, "uid": job_user.pw_uid, "user": USER, "node": "cn001",
            "csr": csr_of(new_key())}
    cases = [
        ({**base, "job": 0}, "'job'"),
        ({**base, "job": "4103"}, "'job'"),
        ({**base, "uid": -1}, "'uid'"),
        ({**base, "user": "../x"}, "'user'"),
        ({**base, "user": "root"}, "disagree"),
        ({**base, "node": "a b"}, "'node'"),
        ({**base, "csr": "not a request"}, "cannot sign"),
        ({**base, "time_limit": "1h"}, "'time_limit'"),
    ]
    for body, want in cases:
        st, ans = node_post(gw, "job-start", body, munged=munged)
        assert st == 400 and want in ans["error"], (body, ans)
    st, ans = node_post(gw, "job-start", None, munged=munged, raw_body=b"[1, 2]")
    assert st == 400 and "one JSON object" in ans["error"], ans
    st, ans = node_post(gw, "no-such-op", base, munged=munged)
    assert st == 404, ans
    # A body over the limit is not read.
    st, ans = node_post(gw, "job-start", None, munged=munged, raw_body=b" " * 20000)
    assert st == 413 and b"at most 16384" in ans, ans
    # Nothing of the refused requests was recorded.
    assert "job=4103" not in gw.log_path.read_text()
    # Another user's job id: the first record stands.
    start_job(gw, munged, job_user, 4104, new_key())
    st, ans = node_post(gw, "job-start", {**base, "job": 4104, "uid": 0, "user": "root"},
                        munged=munged)
    assert st == 409 and "another user" in ans["error"], ans
    st, ans = node_post(gw, "job-end", {"job": 999999, "node": "cn001"}, munged=munged)
    assert st == 404, ans
    gw.assert_alive()


def test_a_job_certificate_opens_a_tunnel_for_its_job_alone(gw, munged, job_user):
    key = new_key()
    ans = start_job(gw, munged, job_user, 4201, key)
    app = gw.start_direct_app()
    a = FakeAgent(port=gw.port, auth=jobcert_auth(ans["cert"], key), targets={"web": app.sock})
    try:
        w = a.wait_type("welcome")
        assert w["uid"] == job_user.pw_uid and w["job"] == 4201, w
        reg = a.register("nb", "web")
        assert reg["type"] == "registered", reg
        route = [r for r in gw.ls_json() if r["alias"] == reg["alias"]]
        assert route and route[0]["job"] == 4201 and route[0]["uid"] == job_user.pw_uid, route
        s = gw.login(reg["alias"], reg["link"])
        assert s.get("/hello").status == 200
        st = s.get("/_jobgate/status")
        assert st.status == 200, st
        got = st.json()
        assert abs(got.pop("seen") - time.time()) < 5, st  # its agent's tunnel is up: now
        assert got == {"alias": reg["alias"], "state": "ready", "reach": "tunnel",
                       "job": 4201}, st
        # The job ends (the plugin's epilog): route, session and tunnel go within seconds.
        st, end = node_post(gw, "job-end", {"job": 4201, "node": "cn001"}, munged=munged)
        assert st == 200 and end["routes"] == 1, end
        assert not [r for r in gw.ls_json() if r["alias"] == reg["alias"]]
        assert s.get("/hello").status == 404
        a.wait_closed(5)
        assert "its job 4201 ended" in gw.log_path.read_text()
        # The audit trail names the job: its start, its route, its end.
        import sqlite3
        db = sqlite3.connect(f"file:{gw.state_dir / 'jobgate.db'}?mode=ro", uri=True)
        rows = db.execute("SELECT event, alias, detail FROM audit WHERE detail LIKE '%job=4201%'"
                          " ORDER BY id").fetchall()
        db.close()
        assert [r[0] for r in rows] == ["job.start", "route.add", "job.end"], rows
        assert rows[1][1] == reg["alias"], rows
    finally:
        a.close()
        app.stop()
    # Its certificate is worth nothing now.
    b = FakeAgent(port=gw.port, auth=jobcert_auth(ans["cert"], key))
    try:
        err = b.wait_type("error")
        assert err["code"] == "auth" and "job 4201 has ended" in err["error"], err
    finally:
        b.close()


def forged_cert(ca_key_pem, job, uid):
    """A certificate with a job's names, signed by a CA of our own."""
    ca_key = new_key()
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"job-{job}"),
                      x509.NameAttribute(NameOID.USER_ID, USER)])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name)
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobgate agent CA")]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                f"urn:jobgate:job:{job}:uid:{uid}")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key


def test_job_certificates_that_must_not_open_a_tunnel(gw, munged, job_user):
    key = new_key()
    ans = start_job(gw, munged, job_user, 4301, key)
    refusals = [
        # the job's certificate, but a signature by another key
        (jobcert_auth(ans["cert"], new_key()), "signature"),
        # the job's names, another CA
        (jobcert_auth(*forged_cert(None, 4301, job_user.pw_uid)), "job certificate refused"),
        # not a certificate
        (lambda nonce: {"method": "jobcert", "cert": "junk", "signature": "AAAA"}, "PEM"),
    ]
    for auth, want in refusals:
        a = FakeAgent(port=gw.port, auth=auth)
        try:
            err = a.wait_type("error")
            assert err["code"] == "auth" and want in err["error"], err
        finally:
            a.close()
    # A job the gateway never recorded (its record gone: a restarted gateway with a new
    # state would be the same): refused even with the right CA's certificate.
    a = FakeAgent(port=gw.port, auth=jobcert_auth(ans["cert"], key))
    try:
        assert a.wait_type("welcome")["job"] == 4301
        # One job's tunnel may not take over another job's route of the same user.
        other_key = new_key()
        other = start_job(gw, munged, job_user, 4302, other_key)
        b = FakeAgent(port=gw.port, auth=jobcert_auth(other["cert"], other_key))
        try:
            b.wait_type("welcome")
            reg = b.register("x", "x")
            assert reg["type"] == "registered"
            stolen = a.register("x", "x", alias=reg["alias"], rid="r2")
            assert stolen["type"] == "error" and stolen["code"] == "forbidden", stolen
        finally:
            b.close()
    finally:
        a.close()
    gw.assert_alive()


def test_a_node_user_that_does_not_exist_stops_the_gateway(binaries):
    gw = Gateway({"slurm": {"node_users": "root no-such-user-jg"}}, name="bad-node-users")
    try:
        with pytest.raises(AssertionError, match="node_users: no such user 'no-such-user-jg'"):
            gw.start()
    finally:
        gw.stopped_on_purpose = True
        gw.cleanup()


def test_the_reaper_ends_the_jobs_the_scheduler_says_ended(make_gateway, munged, job_user,
                                                           tmp_path):
    """[slurm] squeue: a stand-in that prints what the test wrote (the real squeue is driven
    in test_slurm.py). Jobs end only on an answer the gateway can read."""
    states = tmp_path / "states"
    script = tmp_path / "squeue"
    script.write_text("#!/bin/sh\n"
                      "[ \"$*\" = '--noheader --states=all --format=%A|%T|%U' ] || exit 3\n"
                      f"if grep -q FAIL {states}; then echo 'cannot reach slurmctld' >&2; "
                      "exit 1; fi\n"
                      f"exec cat {states}\n")
    script.chmod(0o755)
    uid = job_user.pw_uid
    states.write_text("".join(f"{j}|RUNNING|{uid}\n" for j in (4401, 4402, 4403, 4404)))
    gw = make_gateway({"tunnel": {"munge_socket": munged.socket},
                       "slurm": {"job_check": "1s", "squeue": str(script)}}, name="reaper")
    key = new_key()
    ans = start_job(gw, munged, job_user, 4401, key)
    for j in (4402, 4403, 4404):
        start_job(gw, munged, job_user, j, new_key())
    a = FakeAgent(port=gw.port, auth=jobcert_auth(ans["cert"], key))
    try:
        a.wait_type("welcome")
        reg = a.register("nb", "nb")
        assert reg["type"] == "registered", reg
        time.sleep(2.5)  # a round that lists all four: a job is missed only once it was seen

        def ended():
            text = gw.log_path.read_text()
            return {j for j in (4401, 4402, 4403, 4404) if f"job end job={j} " in text}
        # An answer it cannot read (a failing command, a malformed line) ends nothing.
        for bad in ("FAIL\n", f"4401|COMPLETED|{uid}\nnot a line\n"):
            states.write_text(bad)
            wait_for(lambda: "cannot read the scheduler's jobs" in gw.log_path.read_text(), 5,
                     what="the reaper to try")
            time.sleep(2.5)
            assert ended() == set()
        assert "squeue exited with 1: cannot reach slurmctld" in gw.log_path.read_text()
        # Finished, forgotten (listed before), another user's: ended; still running: kept.
        states.write_text(f"4401|COMPLETED|{uid}\n4403|RUNNING|{uid + 1}\n4404|RUNNING|{uid}\n")
        wait_for(lambda: ended() == {4401, 4402, 4403}, 5, what="the reaper to end 3 jobs")
        text = gw.log_path.read_text()
        assert "the scheduler says COMPLETED" in text
        assert "the scheduler no longer knows the job" in text
        assert f"the scheduler has job 4403 as uid {uid + 1}'s" in text
        assert "the scheduler answers again" in text
        assert not [r for r in gw.ls_json() if r["alias"] == reg["alias"]]
        a.wait_closed(5)
        time.sleep(1.5)
        assert ended() == {4401, 4402, 4403}
    finally:
        a.close()


def test_destinations_are_checked_and_listed(gw, munged, job_user):
    start_job(gw, munged, job_user, 4501, new_key())
    ok = {"job": 4501, "node": "cn001",
          "listen": [{"host": "10.1.2.4", "port": 8888}, {"host": "10.1.2.3", "port": 7000},
                     {"host": "2001:db8::5", "port": 6002}]}
    st, ans = node_post(gw, "job-ready", ok, munged=munged)
    assert st == 200 and ans["destinations"] == 3, ans
    bad = [
        {**ok, "listen": [{"host": "127.0.0.1", "port": 80}]},       # loopback
        {**ok, "listen": [{"host": "::1", "port": 80}]},
        {**ok, "listen": [{"host": "0.0.0.0", "port": 80}]},
        {**ok, "listen": [{"host": "169.254.169.254", "port": 80}]},  # link-local: metadata
        {**ok, "listen": [{"host": "fe80::1", "port": 80}]},
        {**ok, "listen": [{"host": "224.0.0.1", "port": 80}]},
        {**ok, "listen": [{"host": "255.255.255.255", "port": 80}]},
        {**ok, "listen": [{"host": "::ffff:10.0.0.1", "port": 80}]},
        {**ok, "listen": [{"host": "cn001.cluster", "port": 80}]},  # names are not resolved
        {**ok, "listen": [{"host": "a b", "port": 80}]},
        {**ok, "listen": [{"host": "10.0.0.1", "port": 0}]},
        {**ok, "listen": [{"host": "10.0.0.1", "port": 65536}]},
        {**ok, "listen": [{"host": "10.0.0.1", "port": p} for p in range(1, 34)]},  # 33 > 32
        {**ok, "listen": "cn001:80"},
    ]
    for body in bad:
        st, ans = node_post(gw, "job-ready", body, munged=munged)
        assert st == 400 and "'listen'" in ans["error"], (body, ans)
    # A second node of the job adds its own; the first node's second report replaces its own.
    st, _ = node_post(gw, "job-ready", {"job": 4501, "node": "cn002",
                                        "listen": [{"host": "10.1.9.9", "port": 9}]},
                      munged=munged)
    assert st == 200
    st, _ = node_post(gw, "job-ready", {**ok, "listen": ok["listen"][:1]}, munged=munged)
    assert st == 200
    job = [j for j in json.loads(gw.cli("jobs", "--json").stdout) if j["job"] == 4501][0]
    assert sorted((d["node"], d["host"], d["port"]) for d in job["destinations"]) == [
        ("cn001", "10.1.2.4", 8888), ("cn002", "10.1.9.9", 9)], job
    assert job["user"] == USER and job["state"] == "running", job
    # Another user sees none of it.
    os.chmod(gw.root, 0o711)
    other = control_as(65534, gw.control_path, [{"op": "jobs"}])[0]
    assert other["ok"] and other["jobs"] == [], other
    st, _ = node_post(gw, "job-ready", {**ok, "job": 999}, munged=munged)
    assert st == 404
    node_post(gw, "job-end", {"job": 4501, "node": "cn001"}, munged=munged)
    st, ans = node_post(gw, "job-ready", ok, munged=munged)
    assert st == 409 and "ended" in ans["error"], ans
    job = [j for j in json.loads(gw.cli("jobs", "--json").stdout) if j["job"] == 4501][0]
    assert job["state"] == "ended" and job["destinations"] == [] and job["ended"] > 0, job


def test_a_hello_that_names_a_job_is_bound_to_it_once_the_scheduler_agrees(
        make_gateway, munged, tmp_path):
    """Without the plugin (no job certificate): an agent in a Slurm job names SLURM_JOB_ID in
    its hello; the tunnel belongs to that job only when the scheduler runs it as the agent's
    uid, and the reaper then ends its routes with the job."""
    states = tmp_path / "states"
    script = tmp_path / "squeue"
    script.write_text("#!/bin/sh\n"
                      f"if grep -q FAIL {states}; then echo 'cannot reach slurmctld' >&2; "
                      "exit 1; fi\n"
                      f"exec cat {states}\n")
    script.chmod(0o755)
    me = os.getuid()
    states.write_text(f"4601|RUNNING|{me}\n4602|RUNNING|{me + 1}\n4603|COMPLETED|{me}\n")
    gw = make_gateway({"tunnel": {"munge_socket": munged.socket},
                       "slurm": {"job_check": "1s", "squeue": str(script)}}, name="claims")

    def agent(job):
        return FakeAgent(port=gw.port, hello_extra={"job": job}, auth=lambda nonce: {
            "method": "munge", "credential": munged.encode(munge_payload(nonce))})
    a = agent("4601")
    try:
        w = a.wait_type("welcome")
        assert w["job"] == 4601 and "job_refused" not in w, w
        reg = a.register("nb", "nb")
        route = [r for r in gw.ls_json() if r["alias"] == reg["alias"]][0]
        assert route["job"] == 4601, route
        job = [j for j in json.loads(gw.cli("jobs", "--json").stdout) if j["job"] == 4601][0]
        assert job["node"] == "test" and job["state"] == "running", job
        # A job its node recorded proves itself with its certificate only.
        st, _ = node_post(gw, "job-start", {"job": 4605, "uid": me, "user": pwd.getpwuid(me).pw_name,
                                            "node": "cn9", "csr": csr_of(new_key())},
                          munged=munged)
        assert st == 200
        states.write_text(f"4601|RUNNING|{me}\n4602|RUNNING|{me + 1}\n4603|COMPLETED|{me}\n"
                          f"4605|RUNNING|{me}\n4606|PENDING|{me}\n")
        for claimed, why in (("4605", "job 4605 has its own certificate"),
                             ("4606", "job 4606 is PENDING"),
                             ("4602", "job 4602 is not yours"),
                             ("4603", "job 4603 is COMPLETED"),
                             ("4604", "the scheduler does not know job 4604")):
            b = agent(claimed)
            try:
                w = b.wait_type("welcome")
                assert "job" not in w and w["job_refused"].startswith(why), w
                r = b.register("x", "x")
                assert "job" not in [x for x in gw.ls_json() if x["alias"] == r["alias"]][0]
            finally:
                b.close()
        states.write_text("FAIL\n")
        b = agent("4601")
        try:
            w = b.wait_type("welcome")
            assert "job" not in w and "cannot ask the scheduler" in w["job_refused"], w
            assert "exited with 1: cannot reach slurmctld" in w["job_refused"], w
        finally:
            b.close()
        # The real agent says so when the gateway does not bind its app to the job.
        states.write_text(f"4601|RUNNING|{me}\n")
        gw.env.update(SLURM_JOB_ID="4699", JOBGATE_MUNGE_SOCKET=munged.socket)
        app = gw.publish([PY, HTTPAPP, "--unix", "{socket}"], name="unbound", extra=[
            "-g", f"https://localhost:{gw.port}", "--ca", str(gw.state_dir / "tls.crt")])
        assert "job" not in [r for r in gw.ls_json() if r["alias"] == app.alias][0]
        assert "does not bind this app to job 4699: the scheduler does not know job 4699" in \
            app.log_path.read_text(), app.log_path.read_text()
        app.stop()
        # The job ends: the reaper ends its route and its tunnel.
        states.write_text(f"4601|COMPLETED|{me}\n")
        wait_for(lambda: not [r for r in gw.ls_json() if r["alias"] == reg["alias"]], 5,
                 what="the reaper to end the job's route")
        a.wait_closed(5)
        assert "job adopt job=4601" in gw.log_path.read_text()
    finally:
        a.close()


def test_a_scheduler_that_lists_none_of_the_jobs_ends_none(make_gateway, munged, job_user,
                                                         tmp_path):
    """A squeue that shows the gateway other jobs only (PrivateData=jobs, another cluster):
    a job it never listed is not ended by its silence."""
    script = tmp_path / "squeue"
    script.write_text("#!/bin/sh\nprintf '9999|RUNNING|0\\n9998|PENDING|0\\n9997|COMPLETED|0\\n'\n")
    script.chmod(0o755)
    gw = make_gateway({"tunnel": {"munge_socket": munged.socket},
                       "slurm": {"job_check": "1s", "squeue": str(script)}}, name="silent")
    start_job(gw, munged, job_user, 4801, new_key())
    time.sleep(3.5)
    assert "job end job=4801" not in gw.log_path.read_text()
    jobs = {j["job"]: j for j in json.loads(gw.cli("jobs", "--json").stdout)}
    assert jobs[4801]["state"] == "running", jobs
    # The scheduler's other jobs are listed too: queued, or running without jobgate; not
    # those that are over.
    assert jobs[9998]["state"] == "queued" and jobs[9998]["user"] == "root", jobs
    assert jobs[9999]["state"] == "running" and jobs[9999]["destinations"] == [], jobs
    assert 9997 not in jobs, jobs
    table = gw.cli("jobs").stdout.decode()
    assert re.search(r"^9998\s+root\s+-\s+queued\s+-$", table, re.M), table
