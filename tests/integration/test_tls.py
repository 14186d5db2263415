"""TLS front: protocol versions, ALPN, the personal certificate, and several workers."""
import socket
import ssl

import pytest


def handshake(port, sni, minv=None, maxv=None, alpn=("http/1.1",)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if minv:
        ctx.minimum_version = minv
    if maxv:
        ctx.maximum_version = maxv
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname=sni)
    try:
        return s.version(), s.selected_alpn_protocol(), s.getpeercert(binary_form=True)
    finally:
        s.close()


@pytest.mark.parametrize("version,name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                                          (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_tls_versions_and_alpn(gateway, version, name):
    got, alpn, _ = handshake(gateway.port, "x.localhost", version, version)
    assert got == name
    assert alpn == "http/1.1"


def test_h2_only_client_gets_no_alpn(gateway):
    # A client offering only h2 is not told "h2": the gateway speaks HTTP/1.1 only.
    _, alpn, _ = handshake(gateway.port, "x.localhost", alpn=("h2",))
    assert alpn is None


def test_personal_certificate_names_localhost(gateway):
    _, _, der = handshake(gateway.port, "x.localhost")
    pem = ssl.DER_cert_to_PEM_cert(der)
    on_disk = (gateway.state_dir / "tls.crt").read_text()
    assert pem.strip() in on_disk.strip() or on_disk.strip() in pem.strip()
    key = gateway.state_dir / "tls.key"
    assert key.stat().st_mode & 0o077 == 0, "the private key must be readable by its owner only"


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_all_serve(make_gateway, workers):
    # Every worker listens on the same port; many connections spread across them and
    # each must route, check sessions and proxy alike.
    gw = make_gateway({"gateway": {"workers": workers}}, name=f"workers{workers}")
    log = gw.log_path.read_text()
    assert f"with {workers} worker" in log
    app = gw.publish_http()
    try:
        s = gw.login(app.alias, app.link)
        for _ in range(24):
            r = s.get("/hello")
            assert r.status == 200 and r.body == b"hello\n"
        r = s.get("/hello", cookie=False)
        assert r.status == 403
    finally:
        app.stop()
