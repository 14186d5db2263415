"""Users' own certificates in the tunnel's hello (auth method cert, src/gateway/gridmap.c):
a CA the site configures ([tunnel] client_ca) vouches for a certificate, the grid-mapfile
([tunnel] gridmap) names its user, all or nothing; the real agent with --cert/--key."""
import base64
import datetime
import os
import pwd

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import HTTPAPP, PY, Gateway, wait_for
from fakeagent import FakeAgent
from slurm import cluster_user
from test_nodechan import start_job

USER = "jgnode1"


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(subject, key, issuer_name, issuer_key, ca=False):
    now = datetime.datetime.utcnow()
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return b.sign(issuer_key, hashes.SHA256())


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class SiteCA:
    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example users CA")])
        self.cert = make_cert(self.name, self.key, self.name, self.key, ca=True)

    def user(self, cn):
        key = ec.generate_private_key(ec.SECP256R1())
        return make_cert(name(cn), key, self.name, self.key), key


def cert_auth(cert, key):
    def auth(nonce):
        sig = key.sign(f"jobgate/1 hello {nonce}".encode(), ec.ECDSA(hashes.SHA256()))
        return {"method": "cert", "cert": pem(cert), "signature": base64.b64encode(sig).decode()}
    return auth


@pytest.fixture
def site(make_gateway, munged, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("maps certificates to a test user that the tests create (root)")
    cluster_user(USER)
    ca = SiteCA()
    (tmp_path / "ca.pem").write_text(pem(ca.cert))
    gridmap = tmp_path / "grid-mapfile"
    gridmap.write_text(f'# users\n"/O=Example/CN=Alice" {USER}\n'
                       f'"/O=Example/CN=Twice" {USER}\n"/O=Example/CN=Twice" root\n')
    gw = make_gateway({"tunnel": {"client_ca": str(tmp_path / "ca.pem"), "gridmap": str(gridmap),
                                  "munge_socket": munged.socket}}, name="gridmap")
    return gw, ca, gridmap


def hello_error(gw, auth):
    a = FakeAgent(port=gw.port, auth=auth)
    try:
        return a.wait_type("error")
    finally:
        a.close()


def test_a_mapped_certificate_is_its_user(site):
    gw, ca, gridmap = site
    cert, key = ca.user("Alice")
    a = FakeAgent(port=gw.port, auth=cert_auth(cert, key))
    try:
        w = a.wait_type("welcome")
        assert w["uid"] == pwd.getpwnam(USER).pw_uid and w["user"] == USER, w
        reg = a.register("nb", "nb")
        route = [r for r in gw.ls_json() if r["alias"] == reg["alias"]][0]
        assert route["uid"] == pwd.getpwnam(USER).pw_uid and "job" not in route, route
    finally:
        a.close()
    assert f"certificate /O=Example/CN=Alice is user {USER}" in gw.log_path.read_text()


def test_certificates_that_are_refused(site, munged, tmp_path):
    gw, ca, gridmap = site
    other = SiteCA()
    # A job's certificate proves a job, never a user through the file.
    job_key = ec.generate_private_key(ec.SECP256R1())
    job = start_job(gw, munged, pwd.getpwnam(USER), 4701, job_key)
    err = hello_error(gw, cert_auth(x509.load_pem_x509_certificate(job["cert"].encode()),
                                    job_key))
    assert "a job's certificate proves a job" in err["error"], err
    cases = [
        (cert_auth(*ca.user("Mallory")), "the subject /O=Example/CN=Mallory is not in the "
                                         "grid-mapfile"),
        (cert_auth(*ca.user("Twice")), "maps the subject /O=Example/CN=Twice to more than one"),
        (cert_auth(*other.user("Alice")), "certificate refused: certificate signature failure"),
        (cert_auth(ca.user("Alice")[0], ec.generate_private_key(ec.SECP256R1())),
         "the signature is not the certificate's key's"),
    ]
    for auth, want in cases:
        err = hello_error(gw, auth)
        assert err["code"] == "auth" and want in err["error"], (want, err)
    # A subject too long to read whole is refused, never cut to a shorter one that maps.
    long_key = ec.generate_private_key(ec.SECP256R1())
    long_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                           x509.NameAttribute(NameOID.COMMON_NAME, "Alice")] +
                          [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x" * 60)] * 20)
    long_cert = make_cert(long_name, long_key, ca.name, ca.key)
    err = hello_error(gw, cert_auth(long_cert, long_key))
    assert "cannot be read whole" in err["error"], err
    # The file changes: read again at the next hello; broken, every certificate is refused.
    cert, key = ca.user("Mallory")
    gridmap.write_text(gridmap.read_text() + f'"/O=Example/CN=Mallory" {USER}\n')
    a = FakeAgent(port=gw.port, auth=cert_auth(cert, key))
    try:
        assert a.wait_type("welcome")["user"] == USER
    finally:
        a.close()
    gridmap.write_text(f'"/O=Example/CN=Alice" {USER}\nnot a line\n')
    err = hello_error(gw, cert_auth(*ca.user("Alice")))
    assert "the grid-mapfile cannot be used" in err["error"] and "grid-mapfile:2:" in err["error"]
    gw.assert_alive()


def test_the_agent_proves_its_user_with_its_own_certificate(site, tmp_path):
    gw, ca, gridmap = site
    cert, key = ca.user("Alice")
    (tmp_path / "user.crt").write_text(pem(cert))
    kp = tmp_path / "user.key"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    os.chmod(kp, 0o644)
    url = f"https://localhost:{gw.port}"
    base = ["-g", url, "--ca", str(gw.state_dir / "tls.crt"), "--cert",
            str(tmp_path / "user.crt"), "--key", str(kp)]
    out = gw.cli("run", *base, "--", "true")
    assert out.returncode == 1 and b"no one else may read (chmod 600)" in out.stderr, out
    os.chmod(kp, 0o600)
    app = gw.publish([PY, HTTPAPP, "--unix", "{socket}"], name="mine", extra=base)
    route = [r for r in gw.ls_json() if r["alias"] == app.alias][0]
    assert route["uid"] == pwd.getpwnam(USER).pw_uid, route
    s = gw.login(app.alias, app.link)
    assert s.get("/hello").status == 200
    app.stop()
    out = gw.cli("run", "-g", url, "--cert", "x.crt", "--", "true")
    assert out.returncode == 2 and b"--cert and --key go together" in out.stderr, out


def test_client_ca_needs_a_gridmap(binaries, tmp_path):
    gw = Gateway({"tunnel": {"client_ca": str(tmp_path / "ca.pem")}}, name="no-gridmap")
    try:
        with pytest.raises(AssertionError, match="'client_ca' and 'gridmap' go together"):
            gw.start()
    finally:
        gw.stopped_on_purpose = True
        gw.cleanup()


def test_sighup_takes_a_new_users_ca_and_grid_mapfile(make_gateway, tmp_path):
    """[tunnel] client_ca and gridmap set, renewed and dropped on a running gateway (SIGHUP):
    the CA file is read again each time, so a site's renewed CA counts from then on."""
    if os.geteuid() != 0:
        pytest.skip("maps certificates to a test user that the tests create (root)")
    cluster_user(USER)
    old, new = SiteCA(), SiteCA()
    ca_path, gridmap = tmp_path / "ca.pem", tmp_path / "grid-mapfile"
    ca_path.write_text(pem(old.cert))
    gridmap.write_text(f'"/O=Example/CN=Alice" {USER}\n')
    gw = make_gateway({}, name="gridmap-hup")
    err = hello_error(gw, cert_auth(*old.user("Alice")))
    assert "takes no users' certificates" in err["error"], err

    gw.reconfigure({"tunnel": {"client_ca": str(ca_path), "gridmap": str(gridmap)}})
    a = FakeAgent(port=gw.port, auth=cert_auth(*old.user("Alice")))
    try:
        assert a.wait_type("welcome")["user"] == USER
    finally:
        a.close()

    assert "users' certificates" not in gw.reconfigure({}), "an unchanged CA file read again"
    ca_path.write_text(pem(new.cert))  # the site's CA renewed: the same file, read again
    lines = gw.reconfigure({})
    assert "users' certificates: CA and grid-mapfile read again" in lines, lines
    assert "configuration applied (nothing changed)" in lines, lines
    err = hello_error(gw, cert_auth(*old.user("Alice")))
    assert "certificate refused" in err["error"], err
    a = FakeAgent(port=gw.port, auth=cert_auth(*new.user("Alice")))
    try:
        assert a.wait_type("welcome")["user"] == USER
    finally:
        a.close()

    gw.reconfigure({"tunnel": {"client_ca": None, "gridmap": None}})
    err = hello_error(gw, cert_auth(*new.user("Alice")))
    assert "takes no users' certificates" in err["error"], err
